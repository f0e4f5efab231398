"""Table 1 of the paper family from the collected CSV: per model, dataset and method, over seeds.

    python -m analysis.tables results/runs.csv -o results/table1     # writes table1.md, table1.tex, table1.csv

Rows use each run's kept (collapsed) round. Columns: seeds, dense and final top-1 (mean ± sample std over seeds),
zero-entropy units k/N (mean k), sparsity, weight layers on the longest path / MACs / batch-1 latency before → after
collapse, the collapsed model's top-1, and the published numbers beside ours where experiments/reference has them
(the LaCoOT table for ResNet-18 on CIFAR-10; the EASIER appendix at the same k for every EASIER pair).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd

REFERENCE = Path(__file__).resolve().parent.parent / "experiments" / "reference"
DATASET_LABELS = {"cifar10": "CIFAR-10", "tiny_imagenet": "Tiny-ImageNet-200", "pacs": "PACS", "vlcs": "VLCS",
                  "flowers102": "Flowers-102", "dtd": "DTD", "fgvc_aircraft": "Aircraft",
                  "fashion_mnist": "Fashion-MNIST"}
MODEL_LABELS = {"resnet18_cifar": "ResNet-18", "resnet18_imagenet": "ResNet-18", "mobilenetv2_cifar": "MobileNetV2",
                "mobilenetv2_imagenet": "MobileNetV2", "swin_t": "Swin-T", "vgg16_bn": "VGG-16-bn",
                "compact_cnn": "compact CNN"}


def mean_std(values: pd.Series) -> str:
    values = values.dropna()
    if values.empty:
        return "—"
    if len(values) == 1:
        return f"{values.iloc[0]:.2f}"
    return f"{values.mean():.2f} ± {values.std(ddof=1):.2f}"


def arrow(before: pd.Series, after: pd.Series, scale: float = 1.0, digits: int = 2) -> str:
    if before.dropna().empty or after.dropna().empty:
        return "—"
    return f"{before.mean() / scale:.{digits}f} → {after.mean() / scale:.{digits}f}"


def published(model: str, dataset: str, method: str, k: float) -> str:
    """The reference top-1 for this pair and method, or "—"."""
    m, d = MODEL_LABELS.get(model, model), DATASET_LABELS.get(dataset, dataset)
    table = pd.read_csv(REFERENCE / "table1_reference.csv")
    hit = table[(table.dataset == d) & (table.model == m) & (table.method == method)]
    if not hit.empty:
        return f"{hit.top1.iloc[0]:.2f} (LaCoOT table)"
    if method == "easier":
        appendix = pd.read_csv(REFERENCE / "easier_appendix_removed_vs_top1.csv")
        at_k = appendix[(appendix.dataset == d) & (appendix.model == m) & (appendix.removed_k == round(k))]
        if not at_k.empty:
            return f"{at_k.top1.iloc[0]:.2f} (EASIER, k={round(k)})"
    return "—"


def table1(frame: pd.DataFrame) -> pd.DataFrame:
    """One row per (model, dataset, method) aggregated over seeds."""
    dense = frame[frame["round"] == 0].set_index("run_id")["test_acc"]
    final = frame[frame["is_final"].astype(bool)].copy()
    final["dense_acc"] = final["run_id"].map(dense)
    rows = []
    for (model, dataset, method), g in final.groupby(["model", "dataset", "method"], sort=True):
        k = g["k"].mean()
        rows.append({
            "model": model, "dataset": dataset, "method": method, "seeds": g["seed"].nunique(),
            "dense top-1 (%)": mean_std(g["dense_acc"]), "top-1 (%)": mean_std(g["test_acc"]),
            "k/N": f"{k:.1f}/{int(g['N'].iloc[0])}" if g["k"].nunique() > 1 else f"{int(k)}/{int(g['N'].iloc[0])}",
            "sparsity (%)": f"{100 * g['sparsity'].mean():.1f}",
            "weight layers": arrow(g["weight_layers_dense"], g["weight_layers_collapsed"], digits=0),
            "MACs (M)": arrow(g["macs_dense"], g["macs_collapsed"], scale=1e6),
            "latency b1 (ms)": arrow(g["latency_ms_b1_uncollapsed"], g["latency_ms_b1_collapsed"], digits=3),
            "collapsed top-1 (%)": mean_std(g["collapsed_test_acc"]),
            "published top-1 (%)": published(model, dataset, method, k),
        })
    return pd.DataFrame(rows)


def write_tables(table: pd.DataFrame, stem: str | Path) -> list[Path]:
    stem = Path(stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    paths = [stem.with_suffix(".md"), stem.with_suffix(".tex"), stem.with_suffix(".csv")]
    paths[0].write_text(table.to_markdown(index=False, disable_numparse=True) + "\n")
    latex = table.copy()
    latex.columns = [c.replace("%", r"\%") for c in latex.columns]
    for column in latex.columns:
        latex[column] = latex[column].astype(str).str.replace("%", r"\%").str.replace("_", r"\_")
    paths[1].write_text(latex.style.hide(axis="index").to_latex(hrules=True)
                        .replace("±", r"$\pm$").replace("→", r"$\to$").replace("—", "--"))
    table.to_csv(paths[2], index=False)
    return paths


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("csv", help="the long-form CSV of analysis.collect")
    parser.add_argument("-o", "--output", default="results/table1", help="path stem for .md, .tex, .csv")
    args = parser.parse_args(argv)
    table = table1(pd.read_csv(args.csv))
    for path in write_tables(table, args.output):
        print(f"wrote {path}")
    print(table.to_markdown(index=False, disable_numparse=True))


if __name__ == "__main__":
    main()
