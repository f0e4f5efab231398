"""Writes conf/experiment/<model>_<dataset>.yaml (the published protocol) and <model>_<dataset>_smoke.yaml for
every model/dataset pair of the EASIER appendix (experiments/reference/). Run from the repository root:

    python experiments/generate_presets.py
"""

from pathlib import Path

OUT = Path("conf/experiment")
MODELS = {  # short name -> (label, model group for 32x32 inputs, model group otherwise, units N)
    "resnet18": ("ResNet-18", "resnet18_cifar", "resnet18_imagenet", 17),
    "mobilenetv2": ("MobileNetV2", "mobilenetv2_cifar", "mobilenetv2_imagenet", 35),
    "swin_t": ("Swin-T", "swin_t", "swin_t", 12),
    "vgg16_bn": ("VGG-16-bn", "vgg16_bn", "vgg16_bn", 15),
}
PRETRAINED = {"swin_t", "vgg16_bn"}  # "Swin-T and VGG-16-bn start from ImageNet weights"
DATASETS = {  # group -> (label, small images?, protocol)
    "cifar10": ("CIFAR-10", True, "cifar"),
    "tiny_imagenet": ("Tiny-ImageNet-200", False, "cifar"),
    "pacs": ("PACS", False, "domains"),
    "vlcs": ("VLCS", False, "domains"),
    "flowers102": ("Flowers-102", False, "transfer"),
    "dtd": ("DTD", False, "transfer"),
    "fgvc_aircraft": ("FGVC-Aircraft", False, "transfer"),
}
SOURCE = "EGP/NEPENTHE and EASIER reference codes as summarised in experiments/reference/README.md"


def train_block(model, protocol):
    if protocol == "cifar":
        lr = 1e-3 if model == "swin_t" else 0.01 if model == "vgg16_bn" else 0.1
        return dict(epochs=160, batch_size=128, lr=lr, momentum=0.9, weight_decay=1e-4, optimizer="sgd",
                    schedule="multistep", milestones=[80, 120], gamma=0.1)
    if protocol == "domains":
        return dict(epochs=30, batch_size=16, lr=1e-3, momentum=0.9, weight_decay=5e-4, optimizer="sgd",
                    schedule="multistep", milestones=[24], gamma=0.1)
    # Adam, lr 1e-4, 50 epochs, batch 16; no schedule or weight decay is published: constant lr, no decay
    return dict(epochs=50, batch_size=16, lr=1e-4, momentum=0.9, weight_decay=0.0, optimizer="adam",
                schedule="constant", milestones=[], gamma=0.1)


def yaml_value(v):
    if isinstance(v, list):
        return "[" + ", ".join(str(x) for x in v) + "]"
    if v is None:
        return "null"
    return str(v)


def block(name, values, indent="  "):
    return f"{name}:\n" + "".join(f"{indent}{k}: {yaml_value(v)}\n" for k, v in values.items())


for short, (mlabel, small_group, big_group, n_units) in MODELS.items():
    for dgroup, (dlabel, small, protocol) in DATASETS.items():
        group = small_group if small else big_group
        name = f"{short}_{dgroup}"
        weights = f"weights/{group}_imagenet.pth" if short in PRETRAINED else None
        t = train_block(short, protocol)
        lines = [
            "# @package _global_",
            f"# {mlabel} on {dlabel} ({n_units} rectifier units): the published protocol, from the",
            f"# {SOURCE}.",
            f"#   python train.py experiment={name} pruning=nepenthe   (or egp, easier, imp, ...)",
            "# Seed 43 as in the reference code. Rounds: ratio 0.5 of the remaining prunable weights, 9 rounds, the full",
            "# schedule rewound after every round; every round is recorded (max_drop 100: analysis picks the point).",
        ]
        if weights:
            lines.append(f"# Starts from ImageNet weights: save torchvision's into {weights} (see README, no download here).")
        if short == "resnet18" and dgroup == "tiny_imagenet":
            lines.append("# ResNet-18 on Tiny-ImageNet: the 7x7 stem, from scratch, as in the EASIER code.")
        lines += [
            "defaults:",
            f"  - override /model: {group}",
            f"  - override /dataset: {dgroup}",
            "",
            f"name: {name}",
            "seed: 43",
        ]
        text = "\n".join(lines) + "\n"
        text += "model:\n  kwargs:\n    weights: " + yaml_value(weights) + "\n"
        text += block("train", t)
        text += block("finetune", dict(epochs=None, lr=None, milestones=None))
        text += block("pruning", dict(ratio=0.5))
        text += block("stop", dict(max_rounds=9, max_drop=100))
        (OUT / f"{name}.yaml").write_text(text)

        # smoke: the same pipeline, on CPU, in minutes; needs the same data on disk
        smoke = [
            "# @package _global_",
            f"# Smoke run of experiment={name}: the same model, data and pipeline on CPU in minutes",
            "# (a small subset, small images, 1 epoch per round, 2 rounds, from scratch). It needs the dataset on disk.",
            "defaults:",
            f"  - {name}",
            "  - override /hardware: cpu",
            "  - _self_",
            "",
            f"name: {name}_smoke",
            "model:\n  kwargs:\n    weights: null",
        ]
        data_kwargs = {"cifar": {"train_subset": 2000, "val_size": 500},
                       "domains": {"image_size": 64}, "transfer": {"image_size": 64}}[protocol]
        if dgroup == "tiny_imagenet":
            data_kwargs = {"train_subset": 2000, "val_size": 500, "image_size": 32}
        text = "\n".join(smoke) + "\n"
        text += "dataset:\n  kwargs:\n" + "".join(f"    {k}: {v}\n" for k, v in data_kwargs.items())
        text += block("train", dict(epochs=1, batch_size=64 if protocol == "cifar" else 16, milestones=[]))
        text += block("stop", dict(max_rounds=2))
        text += "eval_batch_size: 256\n"
        text += block("collapse", dict(verify_batch=64, latency_batches=[1, 16], latency_min_run_time=0.1,
                                       latency_rounds=1))
        (OUT / f"{name}_smoke.yaml").write_text(text)
print(len(list(OUT.glob("*.yaml"))))
