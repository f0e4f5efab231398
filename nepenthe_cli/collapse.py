"""Collapse a saved run's checkpoint into a shallower model, verify it and measure it.

    python -m nepenthe_cli.collapse runs/quickstart/experiment=quickstart            # the run's kept round
    python -m nepenthe_cli.collapse RUN_DIR --round 2 --merge depth --out /tmp/c     # another round, other options
    python -m nepenthe_cli.collapse RUN_DIR --onnx --runtimes eager onnxruntime      # ship ONNX, time it in ORT

Rebuilds the run from its ``config.yaml`` (data are read from the config's ``dataset.root`` unless ``--data-root``
says otherwise), loads the checkpoint, probes the entropy again, collapses, verifies on the first test images,
times the kept, BN-folded and collapsed models side by side in each runtime, and writes ``collapsed.pt2``
(``collapsed.onnx`` with ``--onnx``; the approximate and fine-tuned networks when asked) and ``collapse.json``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from nepenthe.atomic import atomic_write_text
from nepenthe.choices import MERGES, RUNTIMES
from nepenthe.deploy import collapse_kept, measure_collapsed
from nepenthe.errors import NepentheError
from nepenthe.experiment import restore_run
from nepenthe.report import format_collapse
from nepenthe.rundir import RunDir


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m nepenthe_cli.collapse", description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dir", type=Path, help="a run directory written by train.py")
    parser.add_argument("--round", type=int, default=None, help="checkpoint round (default: the summary's kept "
                        "round, else the latest checkpoint)")
    parser.add_argument("--merge", choices=MERGES, default=None, help="default: the run's collapse.merge")
    parser.add_argument("--tolerance", type=float, default=None, help="relative bound for the exact steps "
                        "(default: the run's collapse.tolerance)")
    parser.add_argument("--approximate-activations", action="store_true", default=None,
                        help="replace always-ON ReLU6/GELU units by the identity and report the measured error")
    parser.add_argument("--approximate-merges", action="store_true", default=None,
                        help="also build the network with border-ring merges and measure it on its own")
    parser.add_argument("--finetune-epochs", type=int, default=None,
                        help="fine-tune the collapsed (approximate) network this many epochs")
    parser.add_argument("--finetune-lr", type=float, default=None, help="its learning rate (default: the run's "
                        "collapse.finetune.lr, else finetune.lr, else train.lr)")
    parser.add_argument("--finetune-batchnorm", action=argparse.BooleanOptionalAction, default=None,
                        help="a batch norm after every conv while it trains, folded back afterwards (default: the "
                        "run's collapse.finetune.batchnorm)")
    parser.add_argument("--distill-weight", type=float, default=None, help="distil it from the run's dense model "
                        "with this weight (default: the run's collapse.finetune.distill.weight; 0: off)")
    parser.add_argument("--distill-temperature", type=float, default=None, help="the distillation temperature")
    parser.add_argument("--onnx", action=argparse.BooleanOptionalAction, default=None,
                        help="export collapsed.onnx, verified in ONNX Runtime (default: the run's collapse.onnx)")
    parser.add_argument("--runtimes", nargs="+", default=None, choices=RUNTIMES,
                        help="where latency is measured (default: the run's collapse.runtimes)")
    parser.add_argument("--verify-batch", type=int, default=None, help="test images to verify on")
    parser.add_argument("--device", default=None, help="auto | cpu | cuda (default: the run's hardware.device)")
    parser.add_argument("--data-root", default=None, help="where the dataset lives (default: the run's dataset.root)")
    parser.add_argument("--out", type=Path, default=None, help="output folder (default: the run directory)")
    return parser.parse_args(argv)


def run(args: argparse.Namespace):
    exp, record = restore_run(args.run_dir, args.round, device=args.device, data_root=args.data_root,
                              merge=args.merge, tolerance=args.tolerance, verify_batch=args.verify_batch,
                              approximate_activations=args.approximate_activations, onnx=args.onnx,
                              runtimes=args.runtimes, approximate_merges=args.approximate_merges,
                              finetune_epochs=args.finetune_epochs, finetune_lr=args.finetune_lr,
                              finetune_batchnorm=args.finetune_batchnorm, distill_weight=args.distill_weight,
                              distill_temperature=args.distill_temperature)
    out = args.out or args.run_dir
    out.mkdir(parents=True, exist_ok=True)
    deployment = exp.deployment()
    small, report = collapse_kept(deployment, exp.probe())
    result = measure_collapsed(deployment, small, report, out, warn=lambda message: print(f"warning: {message}",
                                                                                   file=sys.stderr))
    result.run_dir, result.round, result.kept_test_acc = str(args.run_dir), record.round, record.test_acc
    result.k, result.N = record.k, record.N
    atomic_write_text(RunDir(out).collapse_report, json.dumps(result.to_dict(), indent=2) + "\n")
    print(f"round {record.round} of {args.run_dir}: zero-entropy units {record.k}/{record.N}, "
          f"sparsity {100 * record.sparsity:.1f}%")
    for line in format_collapse(result, record.test_acc):
        print(line)
    print(f"report: {RunDir(out).collapse_report}")
    return result


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        run(args)
    except NepentheError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
