"""Uncollapsed vs collapsed model: MACs ratio and latency ratio measured side by side in one process.

    python bench/collapse_speed.py --run runs/quickstart/experiment=quickstart    # a real run's kept round
    python bench/collapse_speed.py --model resnet18_cifar --prune-conv1 layers.3.1 layers.2.1,layers.3.1

``--run`` rebuilds a run from its directory (its kept checkpoint, a fresh probe) exactly as
``python -m nepenthe.collapse`` does. ``--model`` builds the registered model with the ``conv1`` of the named
blocks pruned to 100 % — what NEPENTHE's budget cap does to a low-entropy unit — and random BatchNorm statistics;
latency depends only on the structure, so no training is needed for the timing (accuracy is not measured there).
Each ``--prune-conv1`` argument is one scenario (comma-separated blocks). Latency is the best of ``--rounds``
interleaved ``torch.utils.benchmark`` medians per model, with ``--threads`` CPU threads.
"""

from __future__ import annotations

import argparse

import torch
from torch import nn
from torch.nn.utils import prune

from nepenthe.collapse import collapse
from nepenthe.collapse.pipeline import detached_copy
from nepenthe.metrics import latency_ms
from nepenthe.models import create_model
from nepenthe.pruning.masks import make_permanent

INPUTS = {"compact_cnn": (1, 28, 28), "resnet18_cifar": (3, 32, 32)}
DEPTH = "weight_layers_on_longest_path"


def run_scenario(args):
    from nepenthe.experiment import restore_run

    exp, record = restore_run(args.run, device="cpu", verify_batch=args.verify_batch)
    small, report = collapse(exp.model, exp.probe(), exp.verify_batch(), args.merge)
    label = f"{args.run} round {record['round']} (k/N {record['k']}/{record['N']})"
    return [(label, make_permanent(detached_copy(exp.model)).eval(), small, report, exp.verify_batch()[:1])]


def pruned_model_scenarios(args):
    scenarios = []
    for spec in args.prune_conv1:
        torch.manual_seed(0)
        model = create_model(args.model, 10, INPUTS[args.model][0]).eval()
        for m in model.modules():  # trained-looking BN statistics; the shift decides the constant's sign
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5), m.running_var.uniform_(0.5, 2.0), m.bias.data.uniform_(-0.5, 0.5)
        blocks = [b for b in spec.split(",") if b]
        for block in blocks:
            prune.identity(model.get_submodule(f"{block}.conv1"), "weight")
            model.get_submodule(f"{block}.conv1").weight_mask.zero_()
        batch = torch.randn(args.verify_batch, *INPUTS[args.model])
        small, report = collapse(model, {}, batch, args.merge)
        label = f"{args.model}, conv1 pruned to 100 % in {', '.join(blocks) or 'no block'}"
        scenarios.append((label, make_permanent(detached_copy(model)).eval(), small, report, batch[:1]))
    return scenarios


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", default=None, help="a run directory written by train.py")
    parser.add_argument("--model", default="resnet18_cifar", choices=sorted(INPUTS))
    parser.add_argument("--prune-conv1", nargs="*", default=[], help="scenarios: comma-separated block paths")
    parser.add_argument("--merge", default="cost")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 64])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--min-run-time", type=float, default=1.0)
    parser.add_argument("--verify-batch", type=int, default=64)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    scenarios = (run_scenario(args) if args.run else []) + pruned_model_scenarios(args)
    if not scenarios:
        parser.error("give --run RUN_DIR and/or --prune-conv1 BLOCKS")
    cols = " | ".join(f"batch {b}: ms before → after (speed-up)" for b in args.batches)
    print(f"threads {args.threads}, torch {torch.__version__}\n")
    print(f"| model | weight layers on longest path | MACs before → after (ratio) | {cols} | max abs diff |")
    print("|---" * (4 + len(args.batches)) + "|")
    for label, before, after, report, sample in scenarios:
        times = latency_ms({"before": before, "after": after}, sample, args.batches, min_run_time=args.min_run_time,
                           rounds=args.rounds, threads=args.threads)
        macs_b, macs_a = report.before["macs"], report.after["macs"]
        lat = " | ".join(f"{times['before'][f'batch_{b}']:.3f} → {times['after'][f'batch_{b}']:.3f} "
                         f"({times['before'][f'batch_{b}'] / times['after'][f'batch_{b}']:.2f}×)" for b in args.batches)
        print(f"| {label} | {report.before[DEPTH]} → {report.after[DEPTH]} | {macs_b / 1e6:.2f} M → {macs_a / 1e6:.2f} M "
              f"({macs_a / macs_b:.3f}) | {lat} | {report.max_abs_diff:.2g} |")


if __name__ == "__main__":
    main()
