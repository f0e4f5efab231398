"""Execute analysis/notebooks/figures.ipynb into an output folder: what ``make figures`` calls.

    python -m analysis.notebook --csv experiments/results/smoke/runs.csv --out results/notebook

The executed notebook (every table and figure shown inline) is saved as ``OUT/figures.ipynb`` beside the tables
and figures it wrote. A folder under experiments/results (the committed results) is refused unless ``--force``:
regenerating committed results is a deliberate act, not a side effect of looking at them.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOK = ROOT / "analysis" / "notebooks" / "figures.ipynb"
COMMITTED = ROOT / "experiments" / "results"


def execute(csv: str | Path, out: str | Path, force: bool = False, timeout: int = 600) -> Path:
    import nbclient  # dev extra (jupyter): imported only here
    import nbformat

    csv, out = Path(csv).resolve(), Path(out).resolve()
    if not csv.is_file():
        raise SystemExit(f"error: CSV={csv} does not exist; make one with python -m analysis.collect")
    if out.is_relative_to(COMMITTED) and not force:
        raise SystemExit(f"error: OUT={out} is inside the committed results ({COMMITTED}); pick another folder, or "
                         "pass FORCE=1 (--force) to regenerate them on purpose")
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    env = {"NEPENTHE_RUNS_CSV": str(csv), "NEPENTHE_OUT": str(out)}
    saved = {key: os.environ.get(key) for key in env}
    os.environ.update(env)  # the kernel inherits them
    try:
        nbclient.NotebookClient(notebook, timeout=timeout, kernel_name="python3",
                                resources={"metadata": {"path": str(NOTEBOOK.parent)}}).execute()
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
    out.mkdir(parents=True, exist_ok=True)
    executed = out / NOTEBOOK.name
    nbformat.write(notebook, executed)
    return executed


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--csv", default=str(COMMITTED / "smoke" / "runs.csv"))
    parser.add_argument("--out", default="results/notebook")
    parser.add_argument("--force", action="store_true", help="allow writing into experiments/results")
    args = parser.parse_args(argv)
    print(f"wrote {execute(args.csv, args.out, args.force)} (tables and figures beside it)")


if __name__ == "__main__":
    main()
