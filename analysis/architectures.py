"""One Table 1 across architectures, from the runs.csv of several committed studies:

    python -m analysis.architectures --readme README.md    # the committed studies (STUDIES), into the README's block
    python -m analysis.architectures results/a results/b   # any study folders with a runs.csv, printed

One row per (model, dataset, method), means over seeds of the kept (collapsed) model of every run: the drop is against
the *plain* dense network of the same seed (LaCoOT's own dense round is regularised, so its drop includes what the
regulariser cost), the weight layers and MACs are dense → collapsed, and the speed-up is each run's BN-folded kept
model over its collapsed one in ONNX Runtime at batch 1 (timed side by side in the run), averaged over seeds. Each
study's own README and table1.md hold the per-seed numbers, the other runtimes and the spreads.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd

from . import tables
from .rows import read_runs

STUDIES = ("fashion_mnist_resnet18", "fashion_mnist_swin_t", "fashion_mnist_mobilenetv2")  # the front page's rows
RESULTS = Path(__file__).resolve().parent.parent / "experiments" / "results"
BEGIN, END = "<!-- table1-architectures: python -m analysis.architectures -->", "<!-- end table1-architectures -->"


def kept_with_plain_dense(frame: pd.DataFrame) -> pd.DataFrame:
    """The kept round of every run with the plain dense top-1 of its (model, dataset, seed) beside it."""
    dense = tables.plain_dense(frame).groupby(["model", "dataset", "seed"])["test_acc"].first()
    kept = frame[frame["is_kept"].astype(bool)].copy()
    kept["plain_dense_acc"] = [dense.get((m, d, s), np.nan) for m, d, s in zip(kept.model, kept.dataset, kept.seed)]
    return kept


def _mean(values) -> float:
    return tables._stats(values)[0]


def across(frames: list[pd.DataFrame]) -> pd.DataFrame:
    """Numbers per (model, dataset, method), studies in the order given and methods in the papers' order."""
    out = []
    for frame in frames:
        kept = kept_with_plain_dense(frame)
        for (model, dataset), pair in kept.groupby(["model", "dataset"], sort=False):
            for method in tables.method_order(pair.method):
                runs = pair[pair.method == method]
                drop, drop_std = tables._stats(runs.test_acc - runs.plain_dense_acc)
                ort = "latency_ms_b1_{}_onnxruntime"
                speedups = runs[ort.format("bn_folded")] / runs[ort.format("collapsed")] \
                    if tables.has_values(runs, ort.format("collapsed")) else pd.Series(dtype=float)
                out.append({
                    "model": model, "dataset": dataset, "method": method, "seeds": len(runs), "N": int(runs.N.iloc[0]),
                    "dense_top1": _mean(runs.plain_dense_acc), "top1": _mean(runs.test_acc),
                    "drop": drop, "drop_std": drop_std,
                    "k": _mean(runs.k), "layers_dense": _mean(runs.weight_layers_dense),
                    "layers_collapsed": _mean(runs.weight_layers_collapsed),
                    "macs_dense_m": _mean(runs.macs_dense) / 1e6, "macs_collapsed_m": _mean(runs.macs_collapsed) / 1e6,
                    "ort_b1_speedup": _mean(speedups)})
    return pd.DataFrame(out)


def _count(value: float) -> str:
    return "—" if np.isnan(value) else (f"{value:.0f}" if value == round(value) else f"{value:.1f}")


def display(numbers: pd.DataFrame) -> pd.DataFrame:
    rows = []
    for r in numbers.itertuples():
        drop = f"{r.drop:+.2f}" + ("" if np.isnan(r.drop_std) else f" ± {r.drop_std:.2f}")
        rows.append({
            "architecture": f"{tables.pair_label(r.model, r.dataset)}",
            "method": tables.label("method", r.method), "seeds": r.seeds,
            "top-1 dense → kept (drop)": f"{r.dense_top1:.2f} → {r.top1:.2f} ({drop})",
            "k/N": f"{_count(r.k)}/{r.N}",
            "weight layers dense → collapsed": f"{_count(r.layers_dense)} → {_count(r.layers_collapsed)}",
            "MACs (M) dense → collapsed": f"{r.macs_dense_m:.2f} → {r.macs_collapsed_m:.2f} "
                                          f"({100 * r.macs_collapsed_m / r.macs_dense_m:.0f} %)",
            "ONNX Runtime b1 over BN folding": "—" if np.isnan(r.ort_b1_speedup) else f"{r.ort_b1_speedup:.2f}×"})
    return pd.DataFrame(rows)


def committed_studies() -> list[Path]:
    """The STUDIES committed so far, in that order."""
    return [RESULTS / name for name in STUDIES if (RESULTS / name / "runs.csv").is_file()]


def markdown(folders: list[Path]) -> str:
    frames = [read_runs(Path(f) / "runs.csv") for f in folders]
    return display(across(frames)).to_markdown(index=False, disable_numparse=True)


def replace_block(text: str, table: str, where: str = "README") -> str:
    """``text`` with the table between its BEGIN and END markers (both must be there, once)."""
    if text.count(BEGIN) != 1 or text.count(END) != 1 or text.index(BEGIN) > text.index(END):
        raise SystemExit(f"error: {where} needs the lines {BEGIN!r} and {END!r}, once each, in that order")
    head, rest = text.split(BEGIN)
    return f"{head}{BEGIN}\n{table}\n{END}{rest.split(END, 1)[1]}"


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folders", nargs="*", type=Path, help="study folders, each with a runs.csv (default: the "
                        f"committed ones of {', '.join(STUDIES)})")
    parser.add_argument("--readme", type=Path, default=None, help="rewrite this file's block between the markers")
    args = parser.parse_args(argv)
    args.folders = args.folders or committed_studies()
    missing = [str(f) for f in args.folders if not (f / "runs.csv").is_file()]
    if missing:
        raise SystemExit(f"error: no runs.csv in {', '.join(missing)} (render a study with `make reproduce` first)")
    table = markdown(args.folders)
    if args.readme is not None:
        args.readme.write_text(replace_block(args.readme.read_text(), table, str(args.readme)))
    print(table)


if __name__ == "__main__":
    main()
