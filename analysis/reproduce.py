"""Run a Table 1 sweep, then collect, tabulate and plot it: what ``make reproduce-table1`` calls.

    python -m analysis.reproduce --scale smoke                       # python train.py -m experiment=table1_smoke
    python -m analysis.reproduce --scale published                   # experiment=table1 (GPUs, CIFAR-10)
    python -m analysis.reproduce --experiment study_fashion_mnist_resnet18    # any sweep preset in conf/experiment
    python -m analysis.reproduce --scale smoke --only pruning=nepenthe seed=0 --extra train.epochs=1
    python -m analysis.reproduce --scale published --launcher slurm --extra hydra.launcher.partition=gpu

A sweep is a Hydra preset (conf/experiment/<name>.yaml with ``hydra.sweeper.params``): ``--only KEY=V1,V2`` replaces a
swept key's values, ``--extra`` adds overrides, ``--launcher`` picks conf/hydra/launcher (``slurm``: its
resources follow each job's ``hardware.device``; ``local``; default: one job after another here). Before launching anything, every job of the sweep is composed and
what it needs is checked (a GPU where it asks for CUDA, its dataset on disk, its initial weights): a missing piece is
one line naming the fix. Outputs go to ``RESULTS/<scale or experiment>/`` (``--out-name`` names another folder):
runs.csv, {table1,matched_k,matched_sparsity,matched_macs,frontier,frontier_best}.{md,tex,csv}, figures/*.png|pdf
(analysis/frontier.py reads a latency.csv of bench/frontier_latency.py already in that folder). ``--no-sweep``
renders the run directories already there without running anything. A failed sweep still renders what finished, then exits 1.
"""

from __future__ import annotations

import argparse
import itertools
import subprocess
import sys
from pathlib import Path


from . import collect, frontier, plots, tables
from .rows import read_runs

ROOT = Path(__file__).resolve().parent.parent
SCALES = {"smoke": "table1_smoke", "published": "table1"}  # make reproduce-table1 SCALE=... -> conf/experiment
LAUNCHERS = ("basic", "local", "slurm")


def _compose(overrides: list[str], hydra_config: bool = False):
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    sys.path.insert(0, str(ROOT))
    import nepenthe_cli.hydra_config  # noqa: F401  (the schema and resolvers the config uses)

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return compose(config_name="config", overrides=overrides, return_hydra_config=hydra_config)


def sweep_jobs(experiment: str, overrides: list[str]) -> tuple[str, list[list[str]]]:
    """The sweep's name (its folder under RUNS) and every job's overrides, as Hydra's basic sweeper expands them:
    the preset's ``hydra.sweeper.params`` with command-line values replacing swept ones. An override Hydra refuses
    is one line naming it."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    try:
        base = _compose([f"experiment={experiment}", *[o for o in overrides if "," not in o]], hydra_config=True)
    except HydraException as exc:
        raise SystemExit(f"error: {str(exc).splitlines()[0]}") from None
    params = dict(base.hydra.sweeper.params or {})
    parsed = OverridesParser.create().parse_overrides([*(f"{k}={v}" for k, v in params.items()), *overrides])
    choices: dict[str, list[str]] = {}
    for override in parsed:  # later ones (the command line) replace earlier ones (the preset)
        key = override.get_key_element()
        values = list(override.sweep_string_iterator()) if override.is_sweep_override() else \
            [override.get_value_element_as_str()]
        choices[key] = [f"{key}={v}" for v in values]
    jobs = [list(combo) for combo in itertools.product(*choices.values())]
    return str(base.name), [[f"experiment={experiment}", *job] for job in jobs]


def requirements(jobs: list[list[str]]) -> list[str]:
    """What the jobs need and this machine lacks, one line each naming the fix (empty: ready)."""
    import torch

    from nepenthe.config import load_run_config
    from nepenthe.data import create_data
    from nepenthe.errors import NepentheError

    problems, data_checked = [], set()
    for job in jobs:
        try:
            cfg = load_run_config(_compose(job))
        except NepentheError as exc:
            problems.append(f"job {' '.join(job)}: {exc}")
            continue
        if cfg.hardware.device == "cuda" and not torch.cuda.is_available():
            problems.append(f"{job[0]} asks for CUDA (hardware.device=cuda) and this machine has none; run "
                            f"SCALE=smoke for the CPU version, or submit it to GPUs with LAUNCHER=slurm")
        weights = cfg.model.kwargs.get("weights")
        if weights and not (ROOT / weights).is_file() and not Path(weights).is_file():
            problems.append(f"{cfg.model.name} starts from {weights}, which does not exist; create it as docs/running.md "
                            f"shows (ImageNet weights saved from torchvision where the network allows)")
        key = (cfg.dataset.name, cfg.dataset.root, repr(sorted(cfg.dataset.kwargs.items())))
        if key not in data_checked:
            data_checked.add(key)
            try:
                create_data(cfg.dataset.name, cfg.dataset.root, progress=False, **cfg.dataset.kwargs)
            except NepentheError as exc:
                problems.append(f"dataset {cfg.dataset.name}: {exc}")
    return list(dict.fromkeys(problems))


def sweep_command(experiment: str, runs_root: str, only=(), extra=(), launcher: str = "basic") -> list[str]:
    """The ``train.py -m`` command that runs the sweep (``basic``: Hydra's own launcher, one job after another)."""
    if launcher not in LAUNCHERS:
        raise SystemExit(f"error: LAUNCHER={launcher!r} is not valid; choose one of {', '.join(LAUNCHERS)}")
    chosen = [] if launcher == "basic" else [f"hydra/launcher={launcher}"]
    return [sys.executable, str(ROOT / "train.py"), "-m", f"experiment={experiment}", *chosen,
            f"output_root={runs_root}", *only, *extra]


def reproduce(experiment: str, out_name: str, runs_root: str = "runs", results: str = "results", only=(),
              extra=(), launcher: str = "basic", sweep: bool = True) -> Path:
    command = sweep_command(experiment, runs_root, only, extra, launcher)  # an unknown launcher stops here
    if not (ROOT / "conf" / "experiment" / f"{experiment}.yaml").is_file():
        known = sorted(p.stem for p in (ROOT / "conf" / "experiment").glob("*.yaml"))
        raise SystemExit(f"error: no sweep preset conf/experiment/{experiment}.yaml; known: {', '.join(known)}")
    _, preset_jobs = sweep_jobs(experiment, [])
    swept = {o.split("=", 1)[0] for job in preset_jobs for o in job[1:]}
    for item in only:
        if item.split("=", 1)[0] not in swept:
            raise SystemExit(f"error: --only {item!r} names no key of the sweep; its keys: {', '.join(sorted(swept))}")
    name, jobs = sweep_jobs(experiment, [*only, *extra, f"output_root={runs_root}"])
    runs = Path(runs_root) / name
    if sweep:
        missing = requirements(jobs) if launcher in ("basic", "local") else \
            [p for p in requirements(jobs) if "CUDA" not in p]  # a cluster's nodes have the GPUs, not this one
        if missing:
            raise SystemExit("error: " + "\nerror: ".join(missing))
        print(f"+ {' '.join(command)}   ({len(jobs)} jobs)", flush=True)
        code = subprocess.run(command, cwd=ROOT).returncode
        if code != 0:
            if runs.is_dir() and collect.local_runs([runs]):
                render(runs, Path(results) / out_name)
            raise SystemExit(f"error: the sweep ended with exit code {code} (its summary is above); the tables hold "
                             f"the runs that finished; re-run the same command to retry the failed jobs")
    return render(runs, Path(results) / out_name)


def render(runs: Path, out: Path) -> Path:
    """collect → tables → figures for the run directories under ``runs``, into ``out``."""
    if not runs.is_dir():
        raise SystemExit(f"error: {runs} does not exist: nothing to render (run the sweep first, without SWEEP=0)")
    collect.warn_incomplete(collect.incomplete_runs([runs]))
    rows = collect.local_runs([runs])
    if not rows:
        raise SystemExit(f"error: no run directories under {runs}")
    out.mkdir(parents=True, exist_ok=True)
    collect.to_frame(rows).to_csv(out / "runs.csv", index=False)
    frame = read_runs(out / "runs.csv")  # render from the file, exactly as a later `analysis.tables` call would
    shown = tables.write_all(frame, out)
    plots.all_figures(frame, out / "figures")
    # the depth-accuracy frontier, with the careful latency of bench/frontier_latency.py when it was measured
    frontier.write_frontier(frame, out, frontier.read_latency(out / "latency.csv"))
    print(shown["table1"].to_markdown(index=False, disable_numparse=True))
    print(f"results in {out}/ (runs.csv, {', '.join(shown)} as .md/.tex/.csv, figures/)")
    return out


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scale", default=None, help=f"one of {', '.join(SCALES)} (Table 1's sweep presets)")
    parser.add_argument("--experiment", default=None, help="any sweep preset in conf/experiment (instead of --scale)")
    parser.add_argument("--runs-root", default="runs")
    parser.add_argument("--results", default="results")
    parser.add_argument("--only", nargs="*", default=[], help="KEY=V1,V2 replacing a swept key's values")
    parser.add_argument("--extra", nargs="*", default=[], help="extra overrides")
    parser.add_argument("--launcher", default="basic", help=f"one of {', '.join(LAUNCHERS)} (conf/hydra/launcher)")
    parser.add_argument("--no-sweep", action="store_true", help="render the run directories already there")
    parser.add_argument("--out-name", default=None, help="the folder under --results (default: the scale, or the "
                        "experiment's name)")
    args = parser.parse_args(argv)
    if args.experiment is None:
        scale = args.scale or "published"
        if scale not in SCALES:
            raise SystemExit(f"error: SCALE={scale!r} is not valid; choose one of {', '.join(SCALES)}")
        experiment, out_name = SCALES[scale], scale
    else:
        experiment, out_name = args.experiment, args.experiment
    reproduce(experiment, args.out_name or out_name, args.runs_root, args.results, args.only, args.extra, args.launcher,
              sweep=not args.no_sweep)


if __name__ == "__main__":
    main()
