"""Is the collapsed network faster where it is deployed? The kept, BN-folded and collapsed models of each
scenario timed side by side in eager PyTorch, torch.compile and ONNX Runtime (CPU execution provider) at batch 1 and
64, with the layers and MACs the collapse removed (bench/RESULTS.md).

    python bench/deployed_latency.py --run runs/quickstart/experiment=quickstart          # a run's kept round
    python bench/deployed_latency.py --run RUN_DIR_OF_A_LACOOT_RUN                      # ResNet-18, blocks removed
    python bench/deployed_latency.py --model mobilenetv2_cifar \\
        --linearize features.2.conv.1.2,features.4.conv.1.2,features.5.conv.1.2 --merge cost depth
    python bench/deployed_latency.py --model resnet18_cifar --prune-conv1 layers.3.1 layers.2.1,layers.3.1

``--run`` rebuilds a run from its directory (its kept checkpoint, a fresh probe) as ``python -m nepenthe_cli.collapse``
does and collapses it with each ``--merge`` mode. ``--linearize`` builds the registered ``--model`` with the named
activations replaced by ``nn.Identity`` (what EASIER does to a unit it linearizes; comma-separated paths, one
scenario per argument), ``--prune-conv1`` with the named blocks' ``conv1`` pruned to 100 % (what NEPENTHE's budget
cap does to a low-entropy unit), both with random batch-norm statistics: latency depends on the structure only, so nothing is
trained there and no accuracy is measured. The kept model is timed as deployed (pruning masks folded into
plain weights once); "BN-folded" is the same model with only its batch norms folded, so that what the collapse adds
is not credited with BN folding's gain; for a run, its dense round 0 is timed beside them (a LaCoOT run's kept
model has its blocks swapped for identities already: only the dense network shows what the method removed). Every
model of a scenario is timed in turn, ``--rounds`` times each (torch.utils.benchmark blocks pooled into a median),
with ``--threads`` threads in every runtime.
"""

from __future__ import annotations

import argparse
import tempfile

import torch
from torch import nn

from nepenthe.collapse import collapse, fold_batchnorm_only
from nepenthe.collapse.measure import latency_by_runtime
from nepenthe.collapse.pipeline import detached_copy
from nepenthe.models import create_model
from nepenthe.pruning.masks import make_permanent
from nepenthe.choices import RUNTIMES
from nepenthe.units import replace_by_identity

INPUTS = {"compact_cnn": (1, 28, 28), "resnet18_cifar": (3, 32, 32), "mobilenetv2_cifar": (3, 32, 32)}


def run_scenarios(run_dir: str, merges: list[str]):
    from nepenthe.deploy import collapse_kept
    from nepenthe.experiment import restore_run

    scenarios, dense = [], None
    for merge in merges:
        exp, record = restore_run(run_dir, device="cpu", merge=merge)
        small, report = collapse_kept(exp.deployment(), exp.probe())
        removed = f", {len(record.replaced_by_identity)} replaced by identity" if record.replaced_by_identity else ""
        label = f"{record.method} run, round {record.round} (k/N {record.k}/{record.N}{removed}), merge={merge}"
        batch = exp.verify_batch()
        if dense is None and record.round != 0:  # the dense network the run started from, timed beside what it became
            dense = make_permanent(detached_copy(restore_run(run_dir, 0, device="cpu")[0].model)).eval()
        networks = {} if dense is None else {"dense": dense}
        networks.update(kept=make_permanent(detached_copy(exp.model)).eval(),
                        bn_folded=fold_batchnorm_only(exp.model, batch), collapsed=small)
        scenarios.append((label, networks, report, batch[:1]))
    return scenarios


def _untrained(model_name: str) -> nn.Module:
    """The registered model with trained-looking batch-norm statistics (the shift decides a constant's sign)."""
    torch.manual_seed(0)
    model = create_model(model_name, 10, INPUTS[model_name][0]).eval()
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5), m.running_var.uniform_(0.5, 2.0), m.bias.data.uniform_(-0.5, 0.5)
    return model


def _built_scenarios(model_name: str, specs: list[str], merges: list[str], verify_batch: int, change, describe):
    """For each comma-separated spec and merge mode: the untrained model, ``change(model, items)`` applied, collapsed
    on a random batch, labelled ``describe(items)``."""
    scenarios = []
    for spec in specs:
        items = [p for p in spec.split(",") if p]
        for merge in merges:
            model = _untrained(model_name)
            change(model, items)
            batch = torch.randn(verify_batch, *INPUTS[model_name])
            small, report = collapse(model, {}, batch, merge)
            networks = {"kept": make_permanent(detached_copy(model)).eval(),
                        "bn_folded": fold_batchnorm_only(model, batch), "collapsed": small}
            scenarios.append((f"{model_name}, {describe(items)}, merge={merge}", networks, report, batch[:1]))
    return scenarios


def linearized_scenarios(model_name: str, specs: list[str], merges: list[str], verify_batch: int):
    """The named activations replaced by ``nn.Identity``: what EASIER does to a unit it linearizes."""
    return _built_scenarios(model_name, specs, merges, verify_batch, replace_by_identity,
                            lambda paths: f"{len(paths)} activations linearized ({', '.join(paths) or 'none'})")


def pruned_conv1_scenarios(model_name: str, specs: list[str], merges: list[str], verify_batch: int):
    """Each named block's ``conv1`` pruned to 100 %: what NEPENTHE's budget cap does to a low-entropy unit."""
    from torch.nn.utils import prune

    def prune_conv1(model, blocks):
        for block in blocks:
            prune.identity(model.get_submodule(f"{block}.conv1"), "weight")
            model.get_submodule(f"{block}.conv1").weight_mask.zero_()

    return _built_scenarios(model_name, specs, merges, verify_batch, prune_conv1,
                            lambda blocks: f"conv1 pruned to 100 % in {', '.join(blocks) or 'no block'}")


NAMES = {"dense": "dense (round 0)", "kept": "kept", "bn_folded": "BN-folded", "collapsed": "collapsed"}


def table(label, report, stats, notes, batches) -> list[str]:
    before, after = report.before, report.after
    lines = [f"### {label}", "",
             f"weight layers on the longest path {before.weight_layers_on_longest_path} → "
             f"{after.weight_layers_on_longest_path}; MACs {before.macs / 1e6:.2f} M → {after.macs / 1e6:.2f} M "
             f"({after.macs / before.macs:.3f}×); collapse max abs diff {report.max_abs_diff:.2g}", ""]
    timed = next(iter(stats.values()), {})
    names = [n for n in NAMES if n in timed]
    against = [n for n in ("bn_folded", "dense") if n in names]  # what the collapsed network's speed-up is over
    head = " | ".join(f"batch {b}: {' / '.join(NAMES[n] for n in names)} ms (collapsed speed-up over "
                      f"{', '.join(NAMES[n] for n in against)})" for b in batches)
    lines += [f"| runtime | {head} |", "|---" * (1 + len(batches)) + "|"]
    for runtime, note in notes.items():
        if note != "ok":
            lines.append(f"| {runtime} | {note} |")
            continue
        cells = []
        for b in batches:
            ms = {n: stats[runtime][n][f"batch_{b}"]["median"] for n in names}
            speedups = ", ".join(f"{ms[n] / ms['collapsed']:.2f}×" for n in against)
            cells.append(f"{' / '.join(f'{ms[n]:.3f}' for n in names)} ({speedups})")
        lines.append(f"| {runtime} | {' | '.join(cells)} |")
    return lines + [""]


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", nargs="*", default=[], help="run directories written by train.py")
    parser.add_argument("--model", default="mobilenetv2_cifar", choices=sorted(INPUTS))
    parser.add_argument("--linearize", nargs="*", default=[], help="scenarios: comma-separated activation paths")
    parser.add_argument("--prune-conv1", nargs="*", default=[], help="scenarios: comma-separated block paths")
    parser.add_argument("--merge", nargs="+", default=["cost"], help="collapse.merge modes, each its own scenario")
    parser.add_argument("--runtimes", nargs="+", default=list(RUNTIMES), choices=list(RUNTIMES))
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 64])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--min-run-time", type=float, default=0.5)
    parser.add_argument("--verify-batch", type=int, default=64)
    args = parser.parse_args()
    if not (args.run or args.linearize or args.prune_conv1):
        parser.error("give --run RUN_DIR, --linearize PATHS and/or --prune-conv1 BLOCKS")
    torch.set_num_threads(args.threads)
    print(f"threads {args.threads}, torch {torch.__version__}; medians of {args.rounds} interleaved rounds\n")
    scenarios = [s for run in args.run for s in run_scenarios(run, args.merge)]
    scenarios += linearized_scenarios(args.model, args.linearize, args.merge, args.verify_batch)
    scenarios += pruned_conv1_scenarios(args.model, args.prune_conv1, args.merge, args.verify_batch)
    for label, networks, report, sample in scenarios:
        with tempfile.TemporaryDirectory(prefix="nepenthe-bench-onnx-") as onnx_dir:
            stats, notes = latency_by_runtime(networks, sample, args.batches, args.runtimes, onnx_dir=onnx_dir,
                                              min_run_time=args.min_run_time, rounds=args.rounds,
                                              threads=args.threads)
        print("\n".join(table(label, report, stats, notes, args.batches)), flush=True)


if __name__ == "__main__":
    main()
