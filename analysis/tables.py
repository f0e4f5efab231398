"""Tables from the collected CSV, grouped by (model, dataset, method) and never averaged across models:

    python -m analysis.tables results/runs.csv -o results/     # table1 / matched_k / matched_sparsity / matched_macs

Each table is written three ways: ``.md`` (readable), ``.tex`` (booktabs, numbers right-aligned) and ``.csv``
(numbers only: a mean and a std column per quantity, one row per group).

table1            the kept (collapsed) round of every seed, over seeds: dense and final top-1, k/N, sparsity,
                  weight layers / MACs dense → collapsed, batch-1 latency kept / BN folded / collapsed
                  (median over seeds of each run's median), the collapsed model's top-1 (run precision and fp32),
                  the kept round of each seed, and the published number where experiments/reference has one.
matched_k         top-1 at each number k of zero-entropy units: per seed, the round at that k with the best
                  validation top-1 (test top-1 reported: choosing on test would flatter every method alike).
matched_sparsity  top-1 at least as sparse as each target: per seed, the best-validation round with sparsity ≥ it.
matched_macs      the kept models after collapse against MAC budgets (fractions of the dense MACs): the top-1 of
                  the seeds whose collapsed model fits, and how many did.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd

from nepenthe.pruning.registry import METHODS

from .rows import TIMED, base_method, read_runs, variant_of

REFERENCE = Path(__file__).resolve().parent.parent / "experiments" / "reference"
DATASET_LABELS = {"cifar10": "CIFAR-10", "tiny_imagenet": "Tiny-ImageNet-200", "pacs": "PACS", "vlcs": "VLCS",
                  "flowers102": "Flowers-102", "dtd": "DTD", "fgvc_aircraft": "Aircraft",
                  "fashion_mnist": "Fashion-MNIST", "synthetic": "synthetic"}
MODEL_LABELS = {"resnet18_cifar": "ResNet-18", "resnet18_imagenet": "ResNet-18", "mobilenetv2_cifar": "MobileNetV2",
                "mobilenetv2_imagenet": "MobileNetV2", "swin_t": "Swin-T", "vgg16_bn": "VGG-16-bn",
                "compact_cnn": "compact CNN"}
GROUP = ["model", "dataset", "method"]
SPARSITY_TARGETS = (0.25, 0.5, 0.75, 0.9)
MAC_BUDGETS = (1.0, 0.9, 0.75, 0.5)


def label(kind: str, name: str) -> str:
    if kind == "method":  # the method's registry entry names it; a qualified one ("lacoot[λ=1]") its setting too
        base, variant = base_method(name), variant_of(name)
        text = METHODS[base].label if base in METHODS else base
        return f"{text} ({variant})" if variant else text
    return {"model": MODEL_LABELS, "dataset": DATASET_LABELS}[kind].get(name, name)


def method_order(methods) -> list[str]:
    """Methods in the papers' order (NEPENTHE, EGP, EASIER, LaCoOT, IMP, ...), unknown ones after, alphabetically;
    a method's settings together, in their own order."""
    known = list(METHODS)  # the registry's rank order

    def rank(m: str):
        base = base_method(m)
        return (known.index(base) if base in known else len(known), base, _variant_key(variant_of(m)))

    return sorted(set(methods), key=rank)


def _variant_key(variant: str) -> tuple:
    """Settings in numeric order where their values are numbers (λ=0.5 before λ=2)."""
    values = []
    for part in variant.split(", ") if variant else []:
        value = part.split("=", 1)[-1]
        try:
            values.append((0, float(value), ""))
        except ValueError:
            values.append((1, 0.0, value))
    return tuple(values)


def pair_label(model: str, dataset: str) -> str:
    return f"{label('model', model)} on {label('dataset', dataset)}"


def _stats(values) -> tuple[float, float]:
    """Mean and sample std (NaN std for one value; both NaN for none)."""
    values = pd.Series(values, dtype=float).dropna()
    if values.empty:
        return np.nan, np.nan
    return float(values.mean()), float(values.std(ddof=1)) if len(values) > 1 else np.nan


def _pm(mean: float, std: float, digits: int = 2) -> str:
    if np.isnan(mean):
        return "—"
    return f"{mean:.{digits}f}" if np.isnan(std) else f"{mean:.{digits}f} ± {std:.{digits}f}"


def _num(value: float, digits: int) -> str:
    return "—" if value is None or np.isnan(value) else f"{value:.{digits}f}"


def published(model: str, dataset: str, method: str, k: float) -> tuple[float, str]:
    """The reference top-1 for this pair and method and where it comes from, or (NaN, "")."""
    m, d, method = label("model", model), label("dataset", dataset), base_method(method)
    table = pd.read_csv(REFERENCE / "table1_reference.csv")
    hit = table[(table.dataset == d) & (table.model == m) & (table.method == method)]
    if not hit.empty:
        return float(hit.top1.iloc[0]), "LaCoOT table"
    if method == "easier" and not np.isnan(k):
        appendix = pd.read_csv(REFERENCE / "easier_appendix_removed_vs_top1.csv")
        at_k = appendix[(appendix.dataset == d) & (appendix.model == m) & (appendix.removed_k == round(k))]
        if not at_k.empty:
            return float(at_k.top1.iloc[0]), f"EASIER, k={round(k)}"
    return np.nan, ""


def plain_dense(frame: pd.DataFrame) -> pd.DataFrame:
    """The round-0 rows of plain dense training (all round-0 rows when every run regularised its dense round, or
    when the CSV predates the column)."""
    dense = frame[frame["round"] == 0]
    if "regularised_dense" not in dense.columns:
        return dense
    plain = dense[~dense["regularised_dense"].fillna(False).astype(bool)]
    return plain if len(plain) else dense


def kept_rows(frame: pd.DataFrame) -> pd.DataFrame:
    """The kept round of every finished run, with its dense top-1 beside it."""
    dense = frame[frame["round"] == 0].set_index("run_id")["test_acc"]
    kept = frame[frame["is_kept"].astype(bool)].copy()
    kept["dense_acc"] = kept["run_id"].map(dense)
    return kept


OTHER_RUNTIMES = {"compile": "compile", "onnxruntime": "ONNX Runtime"}
TIMED_HEADER = "kept/BN-fold./coll."  # the latency columns' models (rows.TIMED), in that order


def has_values(frame: pd.DataFrame, column: str) -> bool:
    """The column exists (a runs.csv written before it was added lacks it) and holds a number somewhere."""
    return column in frame.columns and frame[column].notna().any()


def present_runtimes(frame: pd.DataFrame) -> list[str]:
    return [r for r in OTHER_RUNTIMES if has_values(frame, f"latency_ms_b1_collapsed_{r}")]


def table1(frame: pd.DataFrame) -> pd.DataFrame:
    """One numeric row per (model, dataset, method) over the seeds' kept rounds."""
    rows = []
    for (model, dataset, method), g in kept_rows(frame).groupby(GROUP, sort=True):
        g = g.sort_values("seed")
        row = {"model": model, "dataset": dataset, "method": method, "seeds": int(g["seed"].nunique()),
               "kept_rounds": seed_rounds(g),
               "precision": ",".join(sorted(set(g["precision"].astype(str))))}
        for name, column, scale in (("dense_top1", "dense_acc", 1), ("top1", "test_acc", 1), ("k", "k", 1),
                                    ("sparsity", "sparsity", 100), ("collapsed_top1", "collapsed_test_acc", 1),
                                    ("top1_fp32", "test_acc_fp32", 1),
                                    ("collapsed_top1_fp32", "collapsed_test_acc_fp32", 1),
                                    ("weight_layers_collapsed", "weight_layers_collapsed", 1),
                                    ("macs_collapsed_m", "macs_collapsed", 1e-6)):
            row[f"{name}_mean"], row[f"{name}_std"] = _stats(g[column] * scale)
        row["regularised_dense"] = bool(has_values(g, "regularised_dense")
                                        and g["regularised_dense"].astype(bool).any())
        row["N"] = int(g["N"].iloc[0])
        row["weight_layers_dense"] = float(g["weight_layers_dense"].median())
        row["macs_dense_m"] = float(g["macs_dense"].median() * 1e-6)
        for model_name in TIMED:  # each run's median, then over seeds
            row[f"latency_b1_{model_name}_ms"] = float(g[f"latency_ms_b1_{model_name}"].median())
            row[f"latency_b1_{model_name}_iqr_ms"] = float(g[f"latency_iqr_ms_b1_{model_name}"].median())
        row["collapse_speedup_over_bn_folded"] = row["latency_b1_bn_folded_ms"] / row["latency_b1_collapsed_ms"]
        for runtime in present_runtimes(g):  # compile and ONNX Runtime, where the runs measured them
            for model_name in TIMED:
                row[f"latency_b1_{model_name}_{runtime}_ms"] = float(g[f"latency_ms_b1_{model_name}_{runtime}"].median())
        if has_values(g, "weight_layers_approximate"):  # the approximate opt-in: its own depth and accuracy
            for name, column in (("weight_layers_approximate", "weight_layers_approximate"),
                                 ("approximate_top1", "approximate_test_acc"), ("finetuned_top1", "finetuned_test_acc")):
                row[f"{name}_mean"], row[f"{name}_std"] = _stats(g[column])
        row["latency_device"] = ",".join(sorted(set(g["latency_device"].dropna().astype(str))))
        threads = g["latency_threads"].dropna()
        row["latency_threads"] = int(threads.iloc[0]) if len(threads) else np.nan
        row["published_top1"], row["published_source"] = published(model, dataset, method, row["k_mean"])
        rows.append(row)
    table = pd.DataFrame(rows)
    if table.empty:
        return table
    rank = {m: i for i, m in enumerate(method_order(table["method"]))}
    return table.sort_values(["model", "dataset", "method"], key=lambda c: c.map(rank) if c.name == "method" else c,
                             kind="stable").reset_index(drop=True)


def table1_display(table: pd.DataFrame) -> pd.DataFrame:
    """Table 1 for reading: readable names, mean ± std, dense → collapsed."""
    rows = []
    for _, r in table.iterrows():
        k = f"{r.k_mean:.0f}" if np.isnan(r.k_std) or r.k_std == 0 else f"{r.k_mean:.1f}"
        latency = "/".join(_num(r[f"latency_b1_{m}_ms"], 3) for m in TIMED)
        row = {
            "Model": label("model", r.model), "Dataset": label("dataset", r.dataset),
            "Method": label("method", r.method), "Seeds": str(r.seeds), "Kept (seed:round)": r.kept_rounds,
            "Dense top-1 (%)": _pm(r.dense_top1_mean, r.dense_top1_std) + (
                " (its own, trained with its regulariser)" if r.get("regularised_dense", False) else ""),
            "Top-1 (%)": _pm(r.top1_mean, r.top1_std),
            "k/N": f"{k}/{r.N}", "Sparsity (%)": _pm(r.sparsity_mean, r.sparsity_std, 1),
            "Layers": f"{_num(r.weight_layers_dense, 0)} → {_num(r.weight_layers_collapsed_mean, 0)}",
            "MACs (M)": f"{_num(r.macs_dense_m, 2)} → {_num(r.macs_collapsed_m_mean, 2)}",
            f"Latency b1 (ms) {TIMED_HEADER}": latency,
            "Collapsed top-1 (%)": _pm(r.collapsed_top1_mean, r.collapsed_top1_std) + (
                "" if r.precision == "fp32" else  # reduced precision: the fp32 pair that verification speaks for
                f" (fp32: {_num(r.collapsed_top1_fp32_mean, 2)} vs {_num(r.top1_fp32_mean, 2)} kept)"),
            "Precision": r.precision,
            "Published top-1 (%)": "—" if np.isnan(r.published_top1)
            else f"{r.published_top1:.2f} ({r.published_source})",
        }
        for runtime, name in OTHER_RUNTIMES.items():
            if f"latency_b1_collapsed_{runtime}_ms" in table.columns:
                row[f"{name} b1 (ms) {TIMED_HEADER}"] = "/".join(
                    _num(r.get(f"latency_b1_{m}_{runtime}_ms", np.nan), 3) for m in TIMED)
        if "weight_layers_approximate_mean" in table.columns:
            tuned = "" if np.isnan(r.get("finetuned_top1_mean", np.nan)) else \
                f", fine-tuned {_pm(r.finetuned_top1_mean, r.finetuned_top1_std)}"
            row["Approximate merges: layers, top-1 (%)"] = (
                "—" if np.isnan(r.get("weight_layers_approximate_mean", np.nan)) else
                f"{_num(r.weight_layers_approximate_mean, 0)}, {_pm(r.approximate_top1_mean, r.approximate_top1_std)}"
                f"{tuned}")
        rows.append(row)
    return pd.DataFrame(rows)


def by_validation(rounds: pd.DataFrame) -> pd.DataFrame:
    """Rounds best validation top-1 first (the earlier round on ties): how every "best round" here is chosen."""
    return rounds.sort_values(["val_acc", "round"], ascending=[False, True])


def seed_rounds(rows: pd.DataFrame) -> str:
    """``"seed:round seed:round"`` for the rows a number was taken from."""
    if rows.empty:
        return ""
    return " ".join(f"{int(s)}:{int(r)}" for s, r in zip(rows["seed"], rows["round"]))


def _matched(frame: pd.DataFrame, levels: dict, pick, level_name: str) -> pd.DataFrame:
    """Per (model, dataset, level, method): each seed's pick among its rounds, then mean/std over the seeds that
    have one. ``levels`` maps (model, dataset) to the levels; ``pick(rounds, level)`` returns the eligible rounds."""
    rows = []
    for (model, dataset), pair in frame.groupby(["model", "dataset"], sort=True):
        for level in levels[(model, dataset)]:
            for method, g in pair.groupby("method", sort=True):
                chosen = []
                for _, run in g.groupby("run_id", sort=True):
                    eligible = pick(run, level)
                    if not eligible.empty:
                        chosen.append(by_validation(eligible).iloc[0])
                chosen = pd.DataFrame(chosen)
                mean, std = _stats(chosen["test_acc"]) if len(chosen) else (np.nan, np.nan)
                rows.append({"model": model, "dataset": dataset, level_name: level, "method": method,
                             "seeds_reaching": len(chosen), "seeds": int(g["seed"].nunique()),
                             "top1_mean": mean, "top1_std": std,
                             "sparsity_mean": _stats(chosen["sparsity"] * 100)[0] if len(chosen) else np.nan,
                             "rounds": seed_rounds(chosen)})
    return pd.DataFrame(rows)


def matched_k(frame: pd.DataFrame) -> pd.DataFrame:
    levels = {pair: sorted(int(k) for k in g["k"].dropna().unique())
              for pair, g in frame.groupby(["model", "dataset"], sort=True)}
    return _matched(frame, levels, lambda run, k: run[run["k"] == k], "k")


def matched_sparsity(frame: pd.DataFrame, targets=SPARSITY_TARGETS) -> pd.DataFrame:
    levels = {pair: list(targets) for pair, _ in frame.groupby(["model", "dataset"], sort=True)}
    return _matched(frame, levels, lambda run, s: run[run["sparsity"] >= s - 1e-9], "sparsity_target")


def matched_macs(frame: pd.DataFrame, budgets=MAC_BUDGETS) -> pd.DataFrame:
    """Kept models after collapse against budgets: fraction of the dense MACs each collapsed model may use."""
    rows = []
    kept = kept_rows(frame)
    for (model, dataset, method), g in kept.groupby(GROUP, sort=True):
        fraction = g["macs_collapsed"] / g["macs_dense"]
        for budget in budgets:
            fits = g[fraction <= budget + 1e-9]
            mean, std = _stats(fits["collapsed_test_acc"])
            rows.append({"model": model, "dataset": dataset, "macs_budget": budget, "method": method,
                         "seeds_reaching": len(fits), "seeds": int(g["seed"].nunique()), "top1_mean": mean,
                         "top1_std": std, "macs_m_mean": _stats(fits["macs_collapsed"] * 1e-6)[0],
                         "rounds": seed_rounds(fits)})
    return pd.DataFrame(rows).sort_values(["model", "dataset", "macs_budget", "method"],
                                          ascending=[True, True, False, True], kind="stable").reset_index(drop=True)


def matched_display(table: pd.DataFrame, level: str, heading: str, fmt) -> pd.DataFrame:
    """Methods side by side: one row per (model, dataset, level), each cell "mean ± std (n/m) [seed:round …]"."""
    rows = []
    for (model, dataset, value), g in table.groupby(["model", "dataset", level], sort=False):
        row = {"Model": label("model", model), "Dataset": label("dataset", dataset), heading: fmt(value)}
        for _, r in g.iterrows():
            cell = "—" if r.seeds_reaching == 0 else \
                f"{_pm(r.top1_mean, r.top1_std)} ({r.seeds_reaching}/{r.seeds}) [{r.rounds}]"
            row[label("method", r.method)] = cell
        rows.append(row)
    shown = pd.DataFrame(rows).fillna("—")
    methods = [label("method", m) for m in method_order(table["method"])]
    return shown[[c for c in shown.columns if c not in methods] + methods]


def _latex(display: pd.DataFrame, numeric_columns: list[str]) -> str:
    """booktabs: text columns left, number columns right; ± and → as math."""
    def escape(text: str) -> str:
        return (str(text).replace("\\", r"\textbackslash{}").replace("%", r"\%").replace("_", r"\_")
                .replace("&", r"\&").replace("#", r"\#").replace("±", r"$\pm$").replace("→", r"$\to$")
                .replace("—", "--"))

    align = "".join("r" if c in numeric_columns else "l" for c in display.columns)
    lines = [rf"\begin{{tabular}}{{{align}}}", r"\toprule", " & ".join(escape(c) for c in display.columns) + r" \\",
             r"\midrule"]
    previous = None
    for _, row in display.iterrows():
        pair = tuple(row.iloc[:2])
        if previous is not None and pair != previous:
            lines.append(r"\addlinespace")  # a gap between (model, dataset) blocks
        previous = pair
        lines.append(" & ".join(escape(v) for v in row) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}", ""]
    return "\n".join(lines)


def write_table(numeric: pd.DataFrame, display: pd.DataFrame, stem: str | Path,
                numeric_columns: list[str]) -> list[Path]:
    """``stem``.md and .tex from the display table, .csv from the numeric one."""
    stem = Path(stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    paths = [stem.with_suffix(".md"), stem.with_suffix(".tex"), stem.with_suffix(".csv")]
    paths[0].write_text(display.to_markdown(index=False, disable_numparse=True,
                                            colalign=["right" if c in numeric_columns else "left"
                                                      for c in display.columns]) + "\n")
    paths[1].write_text(_latex(display, numeric_columns))
    numeric.to_csv(paths[2], index=False)
    return paths


TABLE1_NUMERIC = ["Seeds", "Dense top-1 (%)", "Top-1 (%)", "k/N", "Sparsity (%)", "Layers", "MACs (M)",
                  f"Latency b1 (ms) {TIMED_HEADER}", "Collapsed top-1 (%)", "Published top-1 (%)",
                  *(f"{name} b1 (ms) {TIMED_HEADER}" for name in OTHER_RUNTIMES.values()),
                  "Approximate merges: layers, top-1 (%)"]


def write_all(frame: pd.DataFrame, out: str | Path) -> dict[str, pd.DataFrame]:
    """Every table into ``out``; returns the display tables by name."""
    out = Path(out)
    t1 = table1(frame)
    shown = {"table1": table1_display(t1)}
    write_table(t1, shown["table1"], out / "table1", [c for c in TABLE1_NUMERIC if c in shown["table1"].columns])
    methods = [label("method", m) for m in method_order(frame["method"])]
    for name, numeric, level, heading, fmt in (
            ("matched_k", matched_k(frame), "k", "k", lambda v: f"{int(v)}"),
            ("matched_sparsity", matched_sparsity(frame), "sparsity_target", "Sparsity ≥ (%)",
             lambda v: f"{100 * v:.0f}"),
            ("matched_macs", matched_macs(frame), "macs_budget", "MACs ≤ (% of dense)", lambda v: f"{100 * v:.0f}")):
        shown[name] = matched_display(numeric, level, heading, fmt)
        write_table(numeric, shown[name], out / name, [heading, *methods])
    return shown


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("csv", help="the long-form CSV of analysis.collect")
    parser.add_argument("-o", "--output", default="results", help="folder for the .md, .tex and .csv files")
    args = parser.parse_args(argv)
    shown = write_all(read_runs(args.csv), args.output)
    for name, table in shown.items():
        print(f"\n{name} ({Path(args.output) / name}.md/.tex/.csv)")
        print(table.to_markdown(index=False, disable_numparse=True))


if __name__ == "__main__":
    main()
