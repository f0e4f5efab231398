"""Figures from the collected CSV, each written as PNG and PDF:

    python -m analysis.plots results/runs.csv -o results/figures

  depth_vs_accuracy   (a) zero-entropy units k/N vs test top-1 across rounds, one line per method, band = seed
                      min–max; (b) weight layers on the longest path vs top-1: dense and collapsed kept model
  entropy_heatmap     per-unit entropy across rounds, one panel per method (first seed)
  cost_vs_accuracy    MACs and batch-1 latency of the collapsed kept model vs its top-1, dense for reference
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; no display needed
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402


def _save(fig, out: Path, name: str) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / f"{name}.png", out / f"{name}.pdf"]
    for path in paths:
        fig.savefig(path, dpi=150, bbox_inches="tight")
    plt.close(fig)
    return paths


def _title(frame: pd.DataFrame) -> str:
    pairs = sorted({f"{m} on {d}" for m, d in zip(frame["model"], frame["dataset"])})
    return "; ".join(pairs)


def depth_vs_accuracy(frame: pd.DataFrame, out: Path) -> list[Path]:
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    for method, g in frame.groupby("method", sort=True):
        per_round = g.groupby("round").agg(k=("k", "mean"), N=("N", "first"), acc=("test_acc", "mean"),
                                           lo=("test_acc", "min"), hi=("test_acc", "max"))
        x = per_round["k"] / per_round["N"]
        (line,) = left.plot(x, per_round["acc"], marker="o", label=method)
        left.fill_between(x, per_round["lo"], per_round["hi"], color=line.get_color(), alpha=0.2)
        final = g[g["is_final"].astype(bool)]
        if final["weight_layers_collapsed"].notna().any():
            right.errorbar(final["weight_layers_collapsed"].mean(), final["test_acc"].mean(),
                           yerr=final["test_acc"].std(ddof=1) if len(final) > 1 else None, fmt="o", capsize=4,
                           color=line.get_color(), label=f"{method} (collapsed)")
    dense = frame[frame["round"] == 0]
    finals = frame[frame["is_final"].astype(bool)]
    if finals["weight_layers_dense"].notna().any():
        right.errorbar(finals["weight_layers_dense"].mean(), dense["test_acc"].mean(),
                       yerr=dense["test_acc"].std(ddof=1) if len(dense) > 1 else None, fmt="s", color="black",
                       capsize=4, label="dense")
    left.set(xlabel="zero-entropy units k/N (paper depth metric)", ylabel="test top-1 (%)",
             title="rounds: mean over seeds, band = min–max")
    right.set(xlabel="weight layers on the longest path", ylabel="test top-1 (%)",
              title="kept model after collapse (mean ± std)")
    left.legend(), right.legend()
    fig.suptitle(_title(frame))
    return _save(fig, out, "depth_vs_accuracy")


def entropy_heatmap(frame: pd.DataFrame, out: Path) -> list[Path]:
    methods = sorted(frame["method"].unique())
    fig, axes = plt.subplots(1, len(methods), figsize=(3.2 * len(methods) + 1, 3.8), squeeze=False)
    image = None
    for ax, method in zip(axes[0], methods):
        g = frame[frame["method"] == method]
        g = g[g["seed"] == g["seed"].min()].sort_values("round")
        entropies = [json.loads(e) for e in g["entropy"]]
        units = list(entropies[0])
        matrix = np.array([[e[u] for u in units] for e in entropies]).T
        image = ax.imshow(matrix, aspect="auto", cmap="viridis", vmin=0.0, vmax=1.0)
        ax.set(title=method, xlabel="round", xticks=range(len(g)), xticklabels=g["round"].tolist())
        ax.set_yticks(range(len(units)), units if ax is axes[0][0] else [""] * len(units), fontsize=7)
    fig.colorbar(image, ax=axes[0].tolist(), label="entropy (bits)")
    fig.suptitle(f"per-unit entropy across rounds — {_title(frame)}")
    return _save(fig, out, "entropy_heatmap")


def cost_vs_accuracy(frame: pd.DataFrame, out: Path) -> list[Path]:
    final = frame[frame["is_final"].astype(bool)]
    dense = frame[frame["round"] == 0]
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    for method, g in final.groupby("method", sort=True):
        left.scatter(g["macs_collapsed"] / 1e6, g["collapsed_test_acc"], label=method)
        right.scatter(g["latency_ms_b1_collapsed"], g["collapsed_test_acc"], label=method)
    left.scatter(final["macs_dense"] / 1e6, dense.set_index("run_id").loc[final["run_id"], "test_acc"],
                 marker="s", color="black", label="dense")
    right.scatter(final["latency_ms_b1_uncollapsed"], final["test_acc"], marker="x", color="gray",
                  label="uncollapsed kept model")
    left.set(xlabel="MACs per input (M)", ylabel="test top-1 (%)", title="collapsed kept model vs dense")
    right.set(xlabel="latency at batch 1 (ms)", ylabel="test top-1 (%)", title="measured side by side")
    left.legend(), right.legend()
    fig.suptitle(_title(frame))
    return _save(fig, out, "cost_vs_accuracy")


def all_figures(frame: pd.DataFrame, out: str | Path) -> list[Path]:
    out = Path(out)
    return depth_vs_accuracy(frame, out) + entropy_heatmap(frame, out) + cost_vs_accuracy(frame, out)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("csv")
    parser.add_argument("-o", "--output", default="results/figures")
    args = parser.parse_args(argv)
    for path in all_figures(pd.read_csv(args.csv), args.output):
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
