"""Run a Table 1 sweep, then collect, tabulate and plot it: what ``make reproduce-table1`` calls.

    python -m analysis.reproduce --scale smoke                          # experiments/table1.yaml's smoke sweep
    python -m analysis.reproduce --scale published                      # the published protocol (GPUs)
    python -m analysis.reproduce --scale smoke --only pruning=nepenthe seed=0 --extra train.epochs=1
    python -m analysis.reproduce --scale published --launcher slurm --extra hydra.launcher.partition=gpu

``--only KEY=V1,V2`` replaces that key's swept values; ``--extra`` adds fixed overrides; ``--launcher`` picks a
``conf/hydra/launcher`` option (``slurm``: one SLURM array task per run; ``local``: parallel processes here; default:
one job after another in this process). Outputs go to
``RESULTS/<scale>/``: runs.csv, {table1,matched_k,matched_sparsity,matched_macs}.{md,tex,csv}, figures/*.png|pdf.
``--no-sweep`` renders the run directories already there without running anything.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import pandas as pd
import yaml

from . import collect, plots, tables

ROOT = Path(__file__).resolve().parent.parent
SWEEPS = ROOT / "experiments" / "table1.yaml"


LAUNCHERS = ("basic", "local", "slurm")


def sweep_command(spec: dict, runs_root: str, only: list[str], extra: list[str], launcher: str = "basic") -> list[str]:
    sweep = {key: ",".join(str(v) for v in values) for key, values in spec["sweep"].items()}
    for item in only:
        key, _, values = item.partition("=")
        if key not in sweep:
            raise SystemExit(f"error: --only {item!r}: {key!r} is not swept; swept keys: {', '.join(sweep)}")
        sweep[key] = values
    if launcher not in LAUNCHERS:
        raise SystemExit(f"error: LAUNCHER={launcher!r} is not valid; choose one of {', '.join(LAUNCHERS)}")
    chosen = [] if launcher == "basic" else [f"hydra/launcher={launcher}"]
    return [sys.executable, str(ROOT / "train.py"), "-m", *chosen, f"name={spec['name']}", f"output_root={runs_root}",
            *spec["overrides"], *extra, *(f"{k}={v}" for k, v in sweep.items())]


def reproduce(scale: str, runs_root: str = "runs", results: str = "results", only=(), extra=(),
              launcher: str = "basic", sweep: bool = True) -> Path:
    specs = yaml.safe_load(SWEEPS.read_text())
    if scale not in specs:
        raise SystemExit(f"error: SCALE={scale!r} is not in {SWEEPS.name}; choose one of {', '.join(specs)}")
    spec = specs[scale]
    command = sweep_command(spec, runs_root, list(only), list(extra), launcher)
    if sweep:
        print("+ " + " ".join(command), flush=True)
        subprocess.run(command, check=True, cwd=ROOT)
    return render(Path(runs_root) / spec["name"], Path(results) / scale)


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
    frame = pd.read_csv(out / "runs.csv")  # render from the file, exactly as a later `analysis.tables` call would
    shown = tables.write_all(frame, out)
    plots.all_figures(frame, out / "figures")
    print(shown["table1"].to_markdown(index=False, disable_numparse=True))
    print(f"results in {out}/ (runs.csv, {', '.join(shown)} as .md/.tex/.csv, figures/)")
    return out


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scale", default="published")
    parser.add_argument("--runs-root", default="runs")
    parser.add_argument("--results", default="results")
    parser.add_argument("--only", nargs="*", default=[], help="KEY=V1,V2 replacing a swept key's values")
    parser.add_argument("--extra", nargs="*", default=[], help="extra fixed overrides")
    parser.add_argument("--launcher", default="basic", help=f"one of {', '.join(LAUNCHERS)} (conf/hydra/launcher)")
    parser.add_argument("--no-sweep", action="store_true", help="render the run directories already there")
    args = parser.parse_args(argv)
    reproduce(args.scale, args.runs_root, args.results, args.only, args.extra, args.launcher, sweep=not args.no_sweep)


if __name__ == "__main__":
    main()
