"""Figures from the collected CSV, one row of panels per (model, dataset), each written as PNG and PDF:

    python -m analysis.plots results/runs.csv -o results/figures

  depth_vs_accuracy    (a) test top-1 against zero-entropy units k, one thin line per seed through its rounds in
                       order, rounds past the stop rule faded, the mean (thick) at every k all seeds reached, the
                       dense top-1 as a dashed line; (b) top-1 against weight layers on the longest path: dense and
                       each seed's kept model after collapse
  accuracy_vs_sparsity test top-1 against sparsity per round, k written at each point, the same conventions
  entropy_heatmap      per-unit entropy across rounds, one panel per method (first seed)
  cost                 MACs dense → collapsed, and batch-1 latency kept / BN folded / collapsed (median,
                       bars p25–p75 where measured) per method, the collapsed top-1 written above
  latency_vs_depth     per runtime (eager, torch.compile, ONNX Runtime, where measured): the collapsed model's speed-up
                       over BN folding alone against the weight layers collapse removed, per kept run and batch size

Legends sit outside the axes. Methods keep one colour in every figure.
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
from matplotlib.lines import Line2D  # noqa: E402

from nepenthe.pruning.registry import METHODS  # noqa: E402

from .rows import TIMED, base_method, read_runs  # noqa: E402
from .tables import by_validation, label, method_order, pair_label, plain_dense  # noqa: E402

FADED = 0.25  # alpha of rounds past the stop rule


def _save(fig, out: Path, name: str) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / f"{name}.png", out / f"{name}.pdf"]
    for path in paths:
        fig.savefig(path, dpi=150, bbox_inches="tight")
    plt.close(fig)
    return paths


def _pairs(frame: pd.DataFrame) -> list[tuple[str, str]]:
    return sorted(frame.groupby(["model", "dataset"]).groups)


def _colours(frame: pd.DataFrame) -> dict[str, str]:
    """Each method's colour of its registry entry (unknown ones gray), in the papers' order; the settings of one
    method (qualified methods) in shades of its colour, darkest first."""
    methods = method_order(frame["method"])
    colours = {}
    for m in methods:
        base = base_method(m)
        colour = METHODS[base].colour if base in METHODS else "tab:gray"
        siblings = [s for s in methods if base_method(s) == base]
        if len(siblings) > 1:
            colour = _shade(colour, siblings.index(m) / (len(siblings) - 1))
        colours[m] = colour
    return colours


def _shade(colour: str, lightness: float):
    """``colour`` darkened (lightness 0) to lightened (1): settings of one method told apart, still its hue."""
    rgb = np.asarray(matplotlib.colors.to_rgb(colour))
    dark, light = rgb * 0.6, rgb + (1 - rgb) * 0.55
    return tuple(float(v) for v in dark * (1 - lightness) + light * lightness)


def _runs(g: pd.DataFrame):
    """(method, seed, rounds in order, kept round or None) for every run of a (model, dataset) pair."""
    for run_id, run in g.groupby("run_id", sort=True):
        run = run.sort_values("round")
        kept = run["kept_round"].dropna()
        yield run["method"].iloc[0], run["seed"].iloc[0], run, int(kept.iloc[0]) if len(kept) else None


def _trajectory(ax, x, y, colour, kept):
    """One seed: solid up to its kept round, faded after it (past the stop rule), the kept round ringed."""
    stop = len(x) - 1 if kept is None else min(kept, len(x) - 1)
    ax.plot(x[: stop + 1], y[: stop + 1], color=colour, lw=0.9, alpha=0.8, marker=".", ms=4)
    if stop < len(x) - 1:
        ax.plot(x[stop:], y[stop:], color=colour, lw=0.9, alpha=FADED, ls="--", marker=".", ms=4)
    if kept is not None:
        ax.plot(x[stop], y[stop], marker="o", ms=7, mfc="none", color=colour, lw=0)


def _mean_at_common_k(ax, method_runs, colour):
    """Mean top-1 at each k every seed reached (each seed: its best-validation round at that k, as matched_k)."""
    per_seed = [by_validation(run).groupby("k")["test_acc"].first() for run in method_runs]
    common = sorted(set.intersection(*(set(s.index) for s in per_seed))) if per_seed else []
    if common and len(per_seed) > 1:
        ax.plot(common, [np.mean([s[k] for s in per_seed]) for k in common], color=colour, lw=2.6, alpha=0.9)


def _dense_line(ax, g):
    dense = plain_dense(g)["test_acc"].mean()  # LaCoOT's regularised round 0 is not the dense network
    ax.axhline(dense, color="black", ls=":", lw=1.2)
    return dense


def _legend(fig, colours, extra=()):
    handles = [Line2D([], [], color=c, lw=2, label=label("method", m)) for m, c in colours.items()]
    fig.legend(handles=handles + list(extra), loc="center left", bbox_to_anchor=(1.0, 0.5), frameon=False)


TRAJECTORY_KEYS = [
    Line2D([], [], color="gray", lw=0.9, marker=".", label="one seed, rounds in order"),
    Line2D([], [], color="gray", lw=0.9, ls="--", alpha=FADED, label="past the stop rule"),
    Line2D([], [], color="gray", lw=0, marker="o", mfc="none", ms=7, label="kept round"),
    Line2D([], [], color="gray", lw=2.6, label="mean where all seeds reached k"),
    Line2D([], [], color="black", ls=":", lw=1.2, label="dense top-1 (mean)"),
]


def depth_vs_accuracy(frame: pd.DataFrame):
    pairs, colours = _pairs(frame), _colours(frame)
    fig, axes = plt.subplots(len(pairs), 2, figsize=(10, 3.6 * len(pairs)), squeeze=False)
    for (left, right), (model, dataset) in zip(axes, pairs):
        g = frame[(frame["model"] == model) & (frame["dataset"] == dataset)]
        n_units = int(g["N"].max())
        by_method: dict[str, list] = {}
        for method, _, run, kept in _runs(g):
            _trajectory(left, run["k"].to_numpy(), run["test_acc"].to_numpy(), colours[method], kept)
            last = kept if kept is not None else run["round"].max()  # the mean is over rounds up to the stop
            by_method.setdefault(method, []).append(run[run["round"] <= last])
        for method, runs in by_method.items():
            _mean_at_common_k(left, runs, colours[method])
        _dense_line(left, g)
        left.set(xlabel=f"zero-entropy units k (of N = {n_units})", ylabel="test top-1 (%)",
                 title=f"{pair_label(model, dataset)}: rounds")
        left.xaxis.get_major_locator().set_params(integer=True)

        kept = g[g["is_kept"].astype(bool)]
        dense_layers = kept["weight_layers_dense"].dropna()
        if len(dense_layers):
            right.plot(dense_layers.iloc[0], plain_dense(g)["test_acc"].mean(), marker="s", color="black",
                       ms=7, lw=0)
        methods = sorted(kept["method"].unique())
        offsets = dict(zip(methods, np.linspace(-0.15, 0.15, len(methods)) if len(methods) > 1 else [0.0]))
        for method, m in kept.groupby("method", sort=True):
            x = m["weight_layers_collapsed"] + offsets[method]  # methods side by side at equal depth
            right.plot(x, m["collapsed_test_acc"], marker="o", ls="", color=colours[method], alpha=0.8)
        right.set(xlabel="weight layers on the longest path", ylabel="test top-1 (%)",
                  title="kept model after collapse (one point per seed)")
        depths = pd.concat([kept["weight_layers_collapsed"], dense_layers]).dropna()
        if len(depths):  # whole layers only, however narrow the range (methods are offset by < 0.5 around them)
            low, high = int(depths.min()), int(depths.max())
            right.set_xlim(low - 0.5, high + 0.5)
            right.set_xticks(range(low, high + 1))
    dense_marker = Line2D([], [], color="black", marker="s", lw=0, label="dense model")
    _legend(fig, colours, TRAJECTORY_KEYS + [dense_marker])
    fig.tight_layout()
    return fig


def accuracy_vs_sparsity(frame: pd.DataFrame):
    pairs, colours = _pairs(frame), _colours(frame)
    fig, axes = plt.subplots(len(pairs), 1, figsize=(7.5, 3.6 * len(pairs)), squeeze=False)
    for (ax,), (model, dataset) in zip(axes, pairs):
        g = frame[(frame["model"] == model) & (frame["dataset"] == dataset)]
        for method, _, run, kept in _runs(g):
            x, y = 100 * run["sparsity"].to_numpy(), run["test_acc"].to_numpy()
            _trajectory(ax, x, y, colours[method], kept)
            for xi, yi, k, r in zip(x, y, run["k"], run["round"]):
                past = kept is not None and r > kept
                ax.annotate(str(int(k)), (xi, yi), textcoords="offset points", xytext=(3, 3), fontsize=6,
                            color=colours[method], alpha=FADED if past else 1.0)
        _dense_line(ax, g)
        ax.set(xlabel="sparsity (% of conv/linear weights pruned)", ylabel="test top-1 (%)",
               title=f"{pair_label(model, dataset)}: rounds (numbers: zero-entropy units k)")
    _legend(fig, colours, [k for k in TRAJECTORY_KEYS if not k.get_label().startswith("mean where")])
    fig.tight_layout()
    return fig


def entropy_heatmap(frame: pd.DataFrame):
    pairs, methods = _pairs(frame), method_order(frame["method"])
    fig, axes = plt.subplots(len(pairs), len(methods), figsize=(2.9 * len(methods) + 1.5, 3.6 * len(pairs)),
                             squeeze=False, layout="constrained")
    image = None
    for row, (model, dataset) in zip(axes, pairs):
        for ax, method in zip(row, methods):
            g = frame[(frame["model"] == model) & (frame["dataset"] == dataset) & (frame["method"] == method)]
            g = g[g["seed"] == g["seed"].min()].sort_values("round")
            g = g[g["entropy"].fillna("").astype(str).str.len() > 0]  # rounds whose entropy the source kept
            ax.set_title(f"{label('method', method)}\n{pair_label(model, dataset)}", fontsize=8)
            if g.empty:
                ax.set_axis_off()
                ax.text(0.5, 0.5, "no per-round entropy\nin this source", ha="center", va="center",
                        transform=ax.transAxes, fontsize=8)
                continue
            entropies = [json.loads(e) for e in g["entropy"]]
            units = list(entropies[0])
            matrix = np.array([[e.get(u, np.nan) for u in units] for e in entropies]).T
            image = ax.imshow(matrix, aspect="auto", cmap="viridis", vmin=0.0, vmax=1.0, interpolation="nearest")
            ax.set(xlabel="round", xticks=range(len(g)), xticklabels=g["round"].astype(int).tolist())
            ax.set_yticks(range(len(units)), units if ax is row[0] else [""] * len(units), fontsize=6)
    if image is not None:
        fig.colorbar(image, ax=axes.ravel().tolist(), label="entropy (bits)", shrink=0.6)
    fig.suptitle("per-unit entropy across rounds (first seed)")
    return fig


def cost(frame: pd.DataFrame):
    pairs, methods = _pairs(frame), method_order(frame["method"])
    kept = frame[frame["is_kept"].astype(bool)]
    fig, axes = plt.subplots(len(pairs), 2, figsize=(12, 3.8 * len(pairs)), squeeze=False)
    shades = dict(zip(TIMED, (0.35, 0.65, 1.0)))
    colours = _colours(frame)
    for (left, right), (model, dataset) in zip(axes, pairs):
        g = kept[(kept["model"] == model) & (kept["dataset"] == dataset)]
        x = np.arange(len(methods))
        for i, method in enumerate(methods):
            m = g[g["method"] == method]
            if m.empty:
                continue
            dense, small = m["macs_dense"].median() / 1e6, m["macs_collapsed"].median() / 1e6
            left.bar(i - 0.2, dense, 0.4, color="lightgray", edgecolor="black", lw=0.5)
            left.bar(i + 0.2, small, 0.4, color=colours[method], edgecolor="black", lw=0.5)
            left.annotate(f"{m['collapsed_test_acc'].mean():.1f}%", (i + 0.2, small), textcoords="offset points",
                          xytext=(0, 2), ha="center", fontsize=7)
            for j, timed in enumerate(TIMED):
                ms = m[f"latency_ms_b1_{timed}"].median()
                iqr = m[f"latency_iqr_ms_b1_{timed}"].median()
                right.bar(i + (j - 1) * 0.27, ms, 0.27, color=colours[method], alpha=shades[timed],
                          edgecolor="black", lw=0.5, yerr=None if np.isnan(iqr) else iqr / 2, capsize=2)
        device = ",".join(sorted(set(g["latency_device"].dropna().astype(str)))) or "?"
        threads = g["latency_threads"].dropna()
        for ax in (left, right):
            ax.set_xticks(x, [label("method", m) for m in methods])
        left.set(ylabel="MACs per input (M)", title=f"{pair_label(model, dataset)}: MACs\n"
                                                   "dense → collapsed (label: collapsed top-1)")
        right.set(ylabel="latency at batch 1 (ms)",
                  title=f"{pair_label(model, dataset)}: latency, median ± IQR/2\n"
                        f"{device}, {int(threads.iloc[0]) if len(threads) else '?'} threads")
    shade_keys = [plt.Rectangle((0, 0), 1, 1, color="gray", alpha=a, label=f"{name.replace('_', ' ')} (latency)")
                  for name, a in shades.items()]
    dense_key = plt.Rectangle((0, 0), 1, 1, color="lightgray", ec="black", label="dense MACs")
    _legend(fig, colours, [dense_key, *shade_keys])
    fig.tight_layout()
    return fig


RUNTIME_LABELS = {"": "eager PyTorch", "_compile": "torch.compile", "_onnxruntime": "ONNX Runtime"}


def latency_vs_depth(frame: pd.DataFrame):
    """Does the shallower network run faster where it is deployed? Per runtime (columns) and (model, dataset) (rows):
    the collapsed model's speed-up over the same model with only its batch norms folded (timed side by side), against
    the weight layers collapse removed; one point per kept run and batch size."""
    kept = frame[frame["is_kept"].astype(bool)]
    runtimes = [r for r in RUNTIME_LABELS if f"latency_ms_b1_collapsed{r}" in kept.columns
                and kept[f"latency_ms_b1_collapsed{r}"].notna().any()]
    pairs, colours = _pairs(frame), _colours(frame)
    fig, axes = plt.subplots(len(pairs), len(runtimes), figsize=(4.2 * len(runtimes), 3.6 * len(pairs)),
                             squeeze=False, sharey="row")
    for row, (model, dataset) in zip(axes, pairs):
        g = kept[(kept["model"] == model) & (kept["dataset"] == dataset)]
        # what the collapse removed from the model it was given (LaCoOT's blocks went before it, by the method;
        # a runs.csv from before the kept column counts from dense)
        before = g["weight_layers_kept"].fillna(g["weight_layers_dense"]) if "weight_layers_kept" in g.columns \
            else g["weight_layers_dense"]
        removed = before - g["weight_layers_collapsed"]
        methods = method_order(g["method"])
        offsets = dict(zip(methods, np.linspace(-0.15, 0.15, len(methods)) if len(methods) > 1 else [0.0]))
        for ax, runtime in zip(row, runtimes):
            for size, marker in (("b1", "o"), ("bn", "^")):
                speedup = g[f"latency_ms_{size}_bn_folded{runtime}"] / g[f"latency_ms_{size}_collapsed{runtime}"]
                for method, m in g.groupby("method"):  # methods side by side at equal depth
                    ax.plot(removed[m.index] + offsets[method], speedup[m.index], marker=marker, ls="", ms=6,
                            color=colours[method], alpha=0.85, mfc=colours[method] if size == "b1" else "none")
            ax.axhline(1.0, color="black", ls=":", lw=1.0)
            ax.set(xlabel="weight layers removed by the exact collapse",
                   ylabel="speed-up over BN folding alone" if ax is row[0] else "",
                   title=f"{pair_label(model, dataset)}\n{RUNTIME_LABELS[runtime]}")
            if removed.notna().any():  # whole layers only
                low, high = int(removed.min()), int(removed.max())
                ax.set_xlim(low - 0.5, high + 0.5)
                ax.set_xticks(range(low, high + 1))
    batch = int(kept["latency_batch"].dropna().max()) if kept["latency_batch"].notna().any() else "n"
    keys = [Line2D([], [], color="gray", marker="o", ls="", label="batch 1"),
            Line2D([], [], color="gray", marker="^", mfc="none", ls="", label=f"batch {batch}"),
            Line2D([], [], color="black", ls=":", lw=1.0, label="no gain over BN folding")]
    _legend(fig, colours, keys)
    fig.tight_layout()
    return fig


FIGURES = {"depth_vs_accuracy": depth_vs_accuracy, "accuracy_vs_sparsity": accuracy_vs_sparsity,
           "entropy_heatmap": entropy_heatmap, "cost": cost, "latency_vs_depth": latency_vs_depth}


def all_figures(frame: pd.DataFrame, out: str | Path) -> list[Path]:
    """Every figure of :data:`FIGURES` into ``out`` as PNG and PDF."""
    paths = []
    for name, draw in FIGURES.items():
        paths += _save(draw(frame), Path(out), name)
    return paths


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("csv")
    parser.add_argument("-o", "--output", default="results/figures")
    args = parser.parse_args(argv)
    for path in all_figures(read_runs(args.csv), args.output):
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
