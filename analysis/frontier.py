"""The depth–accuracy frontier of any set of runs: how many weight layers each method really removes, at what
accuracy, MACs and deployed latency, across its settings (a sweep over its knobs) and seeds.

    python -m analysis.frontier results/runs.csv -o results/ [--latency results/latency.csv]

Every finished run gives two points at its kept round's depth: the exact collapse (its accuracy is the kept model's)
and, where the run fine-tuned it (``collapse.finetune``), the collapsed network fine-tuned. Accuracy is the test top-1
drop against the **plain** dense network of the same seed (LaCoOT's own dense round trains with its regulariser, so
it is measured against the others' round 0), layers are weight layers on the longest path removed against dense.
Seeds are averaged per setting (error bars: their standard deviation). Per method, its Pareto front across its
settings and both networks: the points no other point of that method beats on layers removed and drop together.

Latency: ``latency.csv`` from ``bench/frontier_latency.py`` (every collapsed network and the dense one timed side by
side in ONNX Runtime at batch 1, in interleaved rounds; the spread between rounds drawn) when given; without it, the
runs' own in-run ONNX Runtime timing of the collapsed model, which at sub-millisecond times is too short to compare
networks by (the figure says which it shows).

Writes ``frontier.{md,tex,csv}`` (every setting), ``frontier_best.{md,tex,csv}`` (per method, the most layers removed
within 1 point on average, and the point that comes closest when none is) and ``figures/frontier.{png,pdf}``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402

from .plots import _colours, _save  # noqa: E402
from .rows import base_method, read_runs, variant_of  # noqa: E402
from .tables import _num, _pm, label, method_order, pair_label, plain_dense, write_table  # noqa: E402

WITHIN = 1.0  # points of test top-1 below the plain dense network a "free" depth reduction may lose
NETWORKS = {"exact": "exact collapse", "finetuned": "collapsed, fine-tuned"}


def read_latency(path: str | Path | None) -> pd.DataFrame | None:
    """bench/frontier_latency.py's CSV (one row per timed network), or None without one."""
    if path is None or not Path(path).is_file():
        return None
    return pd.read_csv(path)


def run_points(frame: pd.DataFrame, latency: pd.DataFrame | None = None) -> pd.DataFrame:
    """One row per finished run and network (exact, fine-tuned): layers removed, MACs fraction, drop against the
    plain dense network of its seed, and its batch-1 ONNX Runtime latency (careful or in-run, ``latency_source``)."""
    dense = plain_dense(frame).groupby(["model", "dataset", "seed"])["test_acc"].mean()
    kept = frame[frame["is_kept"].astype(bool)]
    timed = {}
    dense_ms = {}
    if latency is not None:
        for _, r in latency.iterrows():
            if r["network"] == "dense":
                dense_ms[(r["model"], r["dataset"])] = (r["median_ms"], r["low_ms"], r["high_ms"])
            else:
                timed[str(r["run"])] = (r["median_ms"], r["low_ms"], r["high_ms"])
    rows = []
    for _, r in kept.iterrows():
        reference = dense.get((r["model"], r["dataset"], r["seed"]), np.nan)
        run = Path(str(r["run_id"])).name
        if run in timed:
            (ms, low, high), source = timed[run], "careful"
        else:
            ms = r.get("latency_ms_b1_collapsed_onnxruntime", np.nan)
            low = high = np.nan
            source = "in-run" if not pd.isna(ms) else ""
        d_ms, d_low, d_high = dense_ms.get((r["model"], r["dataset"]), (np.nan, np.nan, np.nan))
        for network, column in (("exact", "collapsed_test_acc"), ("finetuned", "finetuned_test_acc")):
            accuracy = r.get(column, np.nan)
            if pd.isna(accuracy):
                continue
            rows.append({"model": r["model"], "dataset": r["dataset"], "method": r["method"], "seed": r["seed"],
                         "network": network, "run": run,
                         "layers_dense": r["weight_layers_dense"],
                         "layers_removed": r["weight_layers_dense"] - r["weight_layers_collapsed"],
                         "macs_fraction": r["macs_collapsed"] / r["macs_dense"], "test_acc": accuracy,
                         "dense_acc": reference, "drop": accuracy - reference, "latency_ms": ms,
                         "latency_low_ms": low, "latency_high_ms": high, "latency_source": source,
                         "dense_latency_ms": d_ms, "dense_latency_low_ms": d_low, "dense_latency_high_ms": d_high})
    return pd.DataFrame(rows)


def pareto(points: pd.DataFrame) -> pd.Series:
    """True where no other point has at least as many layers removed and at least as small a drop, one strictly."""
    removed, drop = points["layers_removed_mean"].to_numpy(), points["drop_mean"].to_numpy()
    front = []
    for i in range(len(points)):
        beaten = ((removed >= removed[i]) & (drop >= drop[i]) & ((removed > removed[i]) | (drop > drop[i])))
        front.append(not beaten.any())
    return pd.Series(front, index=points.index)


def frontier(points: pd.DataFrame) -> pd.DataFrame:
    """Per (model, dataset, method setting, network): the seeds' mean and std of each quantity, and whether the
    point is on its method's Pareto front (across the method's settings and both networks)."""
    if points.empty:
        return pd.DataFrame()
    rows = []
    for (model, dataset, method, network), g in points.groupby(["model", "dataset", "method", "network"]):
        row = {"model": model, "dataset": dataset, "base_method": base_method(method), "method": method,
               "setting": variant_of(method), "network": network, "seeds": int(g["seed"].nunique()),
               "layers_dense": float(g["layers_dense"].median()),
               "latency_source": ",".join(sorted(set(g["latency_source"]) - {""}))}
        for name in ("layers_removed", "macs_fraction", "drop", "test_acc", "dense_acc", "latency_ms"):
            values = g[name].dropna()
            row[f"{name}_mean"] = float(values.mean()) if len(values) else np.nan
            row[f"{name}_std"] = float(values.std(ddof=1)) if len(values) > 1 else np.nan
        row["latency_low_ms"] = float(g["latency_low_ms"].min())
        row["latency_high_ms"] = float(g["latency_high_ms"].max())
        row["dense_latency_ms"] = float(g["dense_latency_ms"].median())
        row["speedup"] = row["dense_latency_ms"] / row["latency_ms_mean"]
        rows.append(row)
    table = pd.DataFrame(rows)
    table["on_front"] = False
    for _, g in table.groupby(["model", "dataset", "base_method"]):
        table.loc[g.index, "on_front"] = pareto(g)
    rank = {m: i for i, m in enumerate(method_order(table["method"]))}
    return table.sort_values(["model", "dataset", "method", "network"],
                             key=lambda c: c.map(rank) if c.name == "method" else c, kind="stable")\
        .reset_index(drop=True)


def best(table: pd.DataFrame, within: float = WITHIN) -> pd.DataFrame:
    """Per (model, dataset, method): the point with the most layers removed at a mean drop of at most ``within``
    points (ties: the smaller drop); where none is, the point closest to it (the smallest drop among those that
    removed anything), marked ``within=False``."""
    rows = []
    for _, g in table.groupby(["model", "dataset", "base_method"]):
        ok = g[g["drop_mean"] >= -within]
        if len(ok):
            pick, inside = ok.sort_values(["layers_removed_mean", "drop_mean"], ascending=[False, False]).iloc[0], True
        else:
            some = g[g["layers_removed_mean"] > 0]
            pick, inside = (some if len(some) else g).sort_values("drop_mean", ascending=False).iloc[0], False
        rows.append({**pick.to_dict(), "within": inside})
    out = pd.DataFrame(rows)
    if out.empty:
        return out
    rank = {m: i for i, m in enumerate(method_order(out["base_method"]))}
    return out.sort_values(["model", "dataset", "base_method"],
                           key=lambda c: c.map(rank) if c.name == "base_method" else c).reset_index(drop=True)


def _latency_text(r) -> str:
    if np.isnan(r["latency_ms_mean"]):
        return "—"
    text = f"{r['latency_ms_mean']:.3f}"
    if not np.isnan(r["speedup"]):
        text += f" ({r['speedup']:.2f}×)"
    return text + (" in-run" if r["latency_source"] == "in-run" else "")


def display(table: pd.DataFrame) -> pd.DataFrame:
    rows = []
    for _, r in table.iterrows():
        rows.append({
            "Model": label("model", r["model"]), "Dataset": label("dataset", r["dataset"]),
            "Method": label("method", r["base_method"]), "Setting": r["setting"] or "—",
            "Network": NETWORKS[r["network"]], "Seeds": str(r["seeds"]),
            "Layers removed": f"{_pm(r['layers_removed_mean'], r['layers_removed_std'], 1)} of "
                              f"{_num(r['layers_dense'], 0)}",
            "MACs (% of dense)": _pm(100 * r["macs_fraction_mean"], 100 * r["macs_fraction_std"], 0),
            "ONNX Runtime b1 (ms, speed-up)": _latency_text(r),
            "Top-1 (%)": _pm(r["test_acc_mean"], r["test_acc_std"]),
            "Drop (pts)": _pm(r["drop_mean"], r["drop_std"]),
            "Front": "✓" if r["on_front"] else "",
        })
    return pd.DataFrame(rows)


def best_display(table: pd.DataFrame) -> pd.DataFrame:
    shown = display(table).drop(columns=["Front"])
    shown.insert(3, f"Within {WITHIN:g} pt", ["yes" if w else "no: the closest" for w in table["within"]])
    return shown


NUMERIC = ["Seeds", "Layers removed", "MACs (% of dense)", "ONNX Runtime b1 (ms, speed-up)", "Top-1 (%)",
           "Drop (pts)"]


def figure(table: pd.DataFrame):
    """Per (model, dataset) a row of two panels: drop against layers removed, and against batch-1 ONNX Runtime
    latency; one colour per method setting, filled circles the exact collapse, open triangles fine-tuned, error
    bars the seeds' std (drop, layers) and the rounds' spread (latency), each method's front a line."""
    pairs = sorted(table.groupby(["model", "dataset"]).groups)
    fig, axes = plt.subplots(len(pairs), 2, figsize=(13, 4.6 * len(pairs)), squeeze=False)
    colours = _colours(table)
    base_colours = _colours(table.assign(method=table["base_method"]))
    markers = {"exact": ("o", True), "finetuned": ("^", False)}
    sources = set()
    for (left, right), (model, dataset) in zip(axes, pairs, strict=True):
        g = table[(table["model"] == model) & (table["dataset"] == dataset)]
        for _, r in g.iterrows():
            marker, filled = markers[r["network"]]
            colour = colours[r["method"]]
            style = dict(marker=marker, ms=7, mfc=colour if filled else "white", mec=colour, color=colour,
                         ls="", capsize=2, elinewidth=0.8)
            left.errorbar(r["layers_removed_mean"], r["drop_mean"], xerr=_err(r["layers_removed_std"]),
                          yerr=_err(r["drop_std"]), **style)
            if not np.isnan(r["latency_ms_mean"]):
                spread = None if np.isnan(r["latency_low_ms"]) else \
                    [[r["latency_ms_mean"] - r["latency_low_ms"]], [r["latency_high_ms"] - r["latency_ms_mean"]]]
                right.errorbar(r["latency_ms_mean"], r["drop_mean"], xerr=spread, yerr=_err(r["drop_std"]),
                               **style)
                sources.add(r["latency_source"])
        for method, m in g[g["on_front"]].groupby("base_method"):
            m = m.sort_values("layers_removed_mean")
            left.step(m["layers_removed_mean"], m["drop_mean"], where="post", color=base_colours[method], lw=1.2,
                      alpha=0.7)
            timed = m.dropna(subset=["latency_ms_mean"]).sort_values("latency_ms_mean")
            right.plot(timed["latency_ms_mean"], timed["drop_mean"], color=base_colours[method], lw=1.2, alpha=0.7)
        dense_ms = g["dense_latency_ms"].dropna()
        for ax in (left, right):
            ax.axhline(0.0, color="black", ls=":", lw=1.0)
            ax.axhline(-WITHIN, color="black", ls="--", lw=0.9)
        left.plot([0], [0], marker="*", ms=12, color="black", ls="")
        if len(dense_ms):
            right.plot([dense_ms.iloc[0]], [0], marker="*", ms=12, color="black", ls="")
        layers = int(g["layers_dense"].max())
        left.set(xlabel=f"weight layers removed (of {layers} on the longest path)",
                 ylabel="test top-1 drop vs the plain dense network (points)",
                 title=f"{pair_label(model, dataset)}: depth")
        left.set_xlim(-0.5, layers + 0.5 if g["layers_removed_mean"].max() > layers / 2
                      else g["layers_removed_mean"].max() + 1.5)
        which = "bench/frontier_latency.py" if sources == {"careful"} else "in-run timing (short)" \
            if sources == {"in-run"} else "careful where timed, else in-run"
        right.set(xlabel="ONNX Runtime latency at batch 1 (ms)", ylabel="",
                  title=f"{pair_label(model, dataset)}: latency, {which}")
    keys = [Line2D([], [], color=c, lw=0, marker="s", ms=8, label=label("method", m)) for m, c in colours.items()]
    keys += [Line2D([], [], color="gray", marker="o", ls="", label=NETWORKS["exact"]),
             Line2D([], [], color="gray", marker="^", mfc="white", ls="", label=NETWORKS["finetuned"]),
             Line2D([], [], color="gray", lw=1.2, label="a method's front (its settings)"),
             Line2D([], [], color="black", marker="*", ms=10, ls="", label="dense"),
             Line2D([], [], color="black", ls="--", lw=0.9, label=f"{WITHIN:g} point below dense")]
    fig.legend(handles=keys, loc="center left", bbox_to_anchor=(1.0, 0.5), frameon=False)
    fig.tight_layout()
    return fig


def _err(std: float):
    return None if np.isnan(std) else std


def write_frontier(frame: pd.DataFrame, out: str | Path, latency: pd.DataFrame | None = None) -> pd.DataFrame:
    """frontier and frontier_best tables and figures/frontier into ``out``; returns the frontier table."""
    out = Path(out)
    points = run_points(frame, latency)
    table = frontier(points)
    if table.empty:
        return table
    write_table(table, display(table), out / "frontier", NUMERIC)
    chosen = best(table)
    write_table(chosen, best_display(chosen), out / "frontier_best", NUMERIC)
    _save(figure(table), out / "figures", "frontier")
    return table


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("csv", help="the long-form CSV of analysis.collect")
    parser.add_argument("-o", "--output", default="results")
    parser.add_argument("--latency", default=None, help="bench/frontier_latency.py's CSV (default: "
                        "<output>/latency.csv when it exists)")
    args = parser.parse_args(argv)
    latency = read_latency(args.latency or Path(args.output) / "latency.csv")
    table = write_frontier(read_runs(args.csv), args.output, latency)
    if table.empty:
        raise SystemExit("error: no finished run in the CSV: nothing on a frontier")
    print(best_display(best(table)).to_markdown(index=False, disable_numparse=True))


if __name__ == "__main__":
    main()
