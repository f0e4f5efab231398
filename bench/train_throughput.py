"""Fine-tuning throughput: the nepenthe engine against a loop written the way the published EGP code trains.

    python bench/train_throughput.py                                   # resnet18_cifar and compact_cnn, CPU
    python bench/train_throughput.py --models resnet18_cifar --images 2560 --repeats 5
    python bench/train_throughput.py --device cuda --precision bf16 --channels-last --compile   # a GPU

Both loops fine-tune the same pruned model (50 % of every conv/linear weight pruned through torch.nn.utils.prune, so
both carry its forward pre-hooks) on the same images (random uint8, CIFAR-10's or Fashion-MNIST's shape), with SGD
and the same augmentation (random crop with 4-pixel padding, horizontal flip), on the same device, interleaved in
one process. The reference follows the EGP training script (ZhuLIAO001/Unstructured_Relu_Pruning_Reduce_Depth,
src/Prun_cifar10_ResNet18_EGP.py): a torchvision DataLoader over PIL images with per-image transforms and
``--ref-workers`` worker processes (8 there), fp32, forward hooks on every ReLU that keep their stacked input during
training, and ``loss.item()`` plus an accuracy ``.item()`` every step. The engine: batches cut from an in-memory
uint8 tensor, cropped, flipped and normalised as whole batches on the training device (nepenthe.data.ArrayLoader),
no host sync per step (nepenthe.engine.train_one_epoch). ``--mask-after-step`` also times the exact alternative to
the prune hooks (plain weights, re-masked after every optimizer step).

Prints images/s per loop (median of ``--repeats`` timed epochs after one warm-up epoch each), and last the ratio of
every engine variant (``--channels-last``, ``--compile``, ``--mask-after-step`` add variants to the plain engine) to
the reference, per model.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time

import numpy as np
import torch
from PIL import Image
from torch import nn
from torch.nn.utils import prune
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms

from nepenthe.data.loader import ArrayLoader, ImageSplit
from nepenthe.config import TrainConfig
from nepenthe.engine import TrainingPlan, make_optimizer, train_one_epoch
from nepenthe.models import create_model
from nepenthe.units import WEIGHT_LAYERS

SHAPES = {"resnet18_cifar": (3, 32, 32), "compact_cnn": (1, 28, 28)}
MEAN, STD = (0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)


def pruned_model(name: str, device, channels_last: bool, hooks: bool = True) -> nn.Module:
    torch.manual_seed(0)
    model = create_model(name, 10, SHAPES[name][0]).to(device)
    for module in model.modules():
        if isinstance(module, WEIGHT_LAYERS):
            prune.l1_unstructured(module, "weight", amount=0.5)
            if not hooks:  # the exact alternative: plain weights with zeros, re-masked after each step
                mask = module.weight_mask.clone()
                prune.remove(module, "weight")
                module.register_buffer("step_mask", mask)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model


class MaskAfterStep:
    """Wraps an optimizer: after each step, pruned weights are set back to zero (exactly what the hooks compute)."""

    def __init__(self, optimizer, model):
        self.optimizer, self.param_groups = optimizer, optimizer.param_groups
        self.pairs = [(m.weight, m.step_mask) for m in model.modules() if hasattr(m, "step_mask")]

    def zero_grad(self, set_to_none=True):
        self.optimizer.zero_grad(set_to_none=set_to_none)

    @torch.no_grad()
    def step(self):
        self.optimizer.step()
        torch._foreach_mul_([w for w, _ in self.pairs], [m for _, m in self.pairs])


class PilImages(Dataset):
    """What torchvision.datasets.CIFAR10 hands its transforms: one PIL image per index."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, transform):
        self.images, self.labels, self.transform = images, labels, transform

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        image = self.images[i]
        image = Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image)
        return self.transform(image), int(self.labels[i])


def reference_epoch(model, loader, optimizer, device) -> int:
    """One epoch as the EGP script trains (hooks stay registered on every ReLU, two host syncs per step)."""
    model.train()
    loss_fn = nn.CrossEntropyLoss()
    running_loss, correct, total = 0.0, 0, 0
    for inputs, labels in loader:
        inputs, labels = inputs.to(device), labels.to(device)
        outputs = model(inputs)
        loss = loss_fn(outputs, labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        running_loss += loss.item()
        correct += outputs.max(1)[1].eq(labels).sum().item()
        total += labels.size(0)
    return total


def relu_hooks(model):
    kept = {}

    def keep(name):
        def hook(module, inputs, output):
            kept[name] = torch.mean(torch.stack(list(inputs), dim=0), dim=0)
        return hook

    return [m.register_forward_hook(keep(n)) for n, m in model.named_modules() if isinstance(m, nn.ReLU)]


def timed(run) -> float:
    start = time.perf_counter()
    images = run()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return images / (time.perf_counter() - start)


def bench_model(name: str, args) -> dict[str, float]:
    device = torch.device(args.device)
    c, h, w = SHAPES[name]
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (args.images, h, w, c), dtype=np.uint8)
    labels = rng.integers(0, 10, args.images)
    mean, std = MEAN[:c], STD[:c]
    amp = torch.bfloat16 if args.precision == "bf16" else None

    # the engine: uint8 images resident on the training device, whole-batch augmentation
    split = ImageSplit(torch.from_numpy(images).permute(0, 3, 1, 2).contiguous(), torch.from_numpy(labels))
    engine_loader = ArrayLoader(split, args.batch, mean, std, shuffle=True, augment=("crop", "flip"), device=device)
    variants = {}
    options = [("engine", False, False, True)]  # (label, channels_last, compile, prune hooks)
    if args.channels_last:
        options.append(("engine, channels_last", True, False, True))
    if args.compile:
        options.append(("engine, channels_last + compile" if args.channels_last else "engine, compile",
                        args.channels_last, True, True))
    if args.mask_after_step:
        options.append(("engine, mask after step", False, False, False))
    for label, channels_last, compiled, hooks in options:
        model = pruned_model(name, device, channels_last, hooks)
        optimizer = make_optimizer(model, 0.05, 0.9, 5e-4, device=device)
        if not hooks:
            optimizer = MaskAfterStep(optimizer, model)
        step_model = torch.compile(model) if compiled else model

        def run(model=step_model, optimizer=optimizer, channels_last=channels_last):
            plan = TrainingPlan(TrainConfig(epochs=1), device=device, amp_dtype=amp, channels_last=channels_last)
            train_one_epoch(model, engine_loader, optimizer, plan)
            return len(split)

        variants[label] = run

    # the reference: per-image PIL transforms in DataLoader workers, fp32
    transform = transforms.Compose([transforms.RandomHorizontalFlip(), transforms.RandomCrop(h, 4),
                                    transforms.ToTensor(), transforms.Normalize(mean, std)])
    ref_loader = DataLoader(PilImages(images, labels, transform), batch_size=args.batch, shuffle=True,
                            num_workers=args.ref_workers)
    ref_model = pruned_model(name, device, channels_last=False)
    relu_hooks(ref_model)
    ref_optimizer = torch.optim.SGD(ref_model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    variants["reference (EGP-style)"] = lambda: reference_epoch(ref_model, ref_loader, ref_optimizer, device)

    for run in variants.values():  # warm-up: worker start, allocator, oneDNN primitive caches, compilation
        run()
    samples = {label: [] for label in variants}
    for _ in range(args.repeats):  # interleaved, so drifts in machine load hit every loop alike
        for label, run in variants.items():
            samples[label].append(timed(run))
    return {label: statistics.median(values) for label, values in samples.items()}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=["resnet18_cifar", "compact_cnn"], choices=sorted(SHAPES))
    parser.add_argument("--images", type=int, default=2560, help="images per timed epoch")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precision", choices=("fp32", "bf16"), default="fp32", help="the engine's (reference: fp32)")
    parser.add_argument("--channels-last", action="store_true", help="also time the engine with channels_last")
    parser.add_argument("--compile", action="store_true", help="also time the engine through torch.compile")
    parser.add_argument("--mask-after-step", action="store_true", help="also time the hook-free exact alternative")
    parser.add_argument("--ref-workers", type=int, default=8, help="the reference DataLoader's workers (EGP: 8)")
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"device {args.device} ({platform.processor() or platform.machine()}), {torch.get_num_threads()} threads, "
          f"torch {torch.__version__}, batch {args.batch}, {args.images} images per epoch, median of {args.repeats}")
    ratios = []
    for name in args.models:
        result = bench_model(name, args)
        reference = result.pop("reference (EGP-style)")
        for label, rate in result.items():
            print(f"{name:15s} {label:32s} {rate:10.1f} images/s")
            ratios.append(f"ratio {label} / reference, {name}: {rate / reference:.2f}x")
        print(f"{name:15s} {'reference (EGP-style)':32s} {reference:10.1f} images/s")
    print("\n".join(ratios))


if __name__ == "__main__":
    main()
