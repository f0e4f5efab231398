"""analysis.frontier: layers removed against accuracy drop (vs the plain dense network of the seed) and latency, per
method setting, with each method's Pareto front and its best point within 1 point: numbers by hand."""

import json

import pandas as pd
import pytest

from analysis import frontier
from analysis.rows import Row, qualified_methods, to_frame

NEPENTHE = {"distill": 0.0, "ratio": 0.5, "rounding": "nearest"}


def run(method, seed, setting, dense_acc, layers_after, collapsed_acc, finetuned_acc=float("nan"),
        regularised=False):
    """A finished run as its two rows: round 0 and the kept round 2 (18 layers and 100 M MACs dense; each layer
    removed takes 5 M MACs)."""
    run_id = f"/runs/{method}-{json.dumps(setting, sort_keys=True)}-{seed}"
    common = dict(run_id=run_id, model="resnet18_cifar", dataset="fashion_mnist", method=method, ratio=0.5,
                  seed=seed, kept_round=2, regularised_dense=regularised, setting=json.dumps(setting, sort_keys=True))
    dense = Row(**common, round=0, test_acc=dense_acc, val_acc=dense_acc)
    kept = Row(**common, round=2, is_kept=True, test_acc=collapsed_acc, val_acc=collapsed_acc,
               weight_layers_dense=18, weight_layers_collapsed=layers_after, macs_dense=100e6,
               macs_collapsed=100e6 - 5e6 * (18 - layers_after), collapsed_test_acc=collapsed_acc,
               finetuned_test_acc=finetuned_acc, latency_ms_b1_collapsed_onnxruntime=0.9)
    return [dense, kept]


@pytest.fixture
def frame():
    plain, distilled = NEPENTHE, {**NEPENTHE, "distill": 1.0}
    rows = (run("nepenthe", 0, plain, 90.0, 13, 89.0, 89.8) + run("nepenthe", 1, plain, 91.0, 13, 89.6, 90.4)
            + run("nepenthe", 0, distilled, 90.0, 12, 89.5) + run("nepenthe", 1, distilled, 91.0, 12, 90.3)
            # LaCoOT's round 0 is regularised (88.0, 88.5): its drop is against the others' plain dense network
            + run("lacoot", 0, {"lambda_reg": 1.0, "distill": 0.0}, 88.0, 10, 88.5, regularised=True)
            + run("lacoot", 1, {"lambda_reg": 1.0, "distill": 0.0}, 88.5, 10, 89.5, regularised=True))
    return qualified_methods(to_frame(rows))


def test_settings_of_one_method_are_told_apart_by_what_differs_between_them(frame):
    assert sorted(frame["method"].unique()) == ["lacoot", "nepenthe[distill=0]", "nepenthe[distill=1]"]


def test_frontier_points_fronts_and_best_by_hand(frame):
    table = frontier.frontier(frontier.run_points(frame)).set_index(["method", "network"])
    exact, tuned = table.loc[("nepenthe[distill=0]", "exact")], table.loc[("nepenthe[distill=0]", "finetuned")]
    assert (exact["layers_removed_mean"], exact["drop_mean"]) == (5, pytest.approx(-1.2))
    assert (tuned["layers_removed_mean"], tuned["drop_mean"]) == (5, pytest.approx(-0.4))
    assert exact["macs_fraction_mean"] == pytest.approx(0.75) and exact["seeds"] == 2
    distilled = table.loc[("nepenthe[distill=1]", "exact")]
    assert (distilled["layers_removed_mean"], distilled["drop_mean"]) == (6, pytest.approx(-0.6))
    lacoot = table.loc[("lacoot", "exact")]
    assert (lacoot["layers_removed_mean"], lacoot["drop_mean"]) == (8, pytest.approx(-1.5))  # vs 90.0 and 91.0
    assert ("nepenthe[distill=1]", "finetuned") not in table.index  # that run did not fine-tune its collapse
    # NEPENTHE's front across its settings: (5, -0.4) and (6, -0.6); the exact (5, -1.2) is beaten by its fine-tune
    assert (bool(exact["on_front"]), bool(tuned["on_front"]), bool(distilled["on_front"])) == (False, True, True)
    chosen = frontier.best(table.reset_index()).set_index("base_method")
    assert chosen.loc["nepenthe", "method"] == "nepenthe[distill=1]" and bool(chosen.loc["nepenthe", "within"])
    assert chosen.loc["lacoot", "layers_removed_mean"] == 8 and not chosen.loc["lacoot", "within"]


def test_the_careful_latency_replaces_the_in_run_one_with_its_spread(frame, tmp_path):
    runs = sorted({r.split("/")[-1] for r in frame["run_id"] if "distill\": 1.0" in r})
    latency = pd.DataFrame([{"run": "dense", "network": "dense", "model": "resnet18_cifar",
                             "dataset": "fashion_mnist", "median_ms": 1.0, "low_ms": 0.95, "high_ms": 1.05}] +
                           [{"run": name, "network": "collapsed", "model": "resnet18_cifar",
                             "dataset": "fashion_mnist", "median_ms": 0.5, "low_ms": 0.45 + 0.01 * i,
                             "high_ms": 0.55} for i, name in enumerate(runs)])
    latency.to_csv(tmp_path / "latency.csv", index=False)
    table = frontier.write_frontier(frame, tmp_path, frontier.read_latency(tmp_path / "latency.csv"))
    row = table.set_index(["method", "network"]).loc[("nepenthe[distill=1]", "exact")]
    assert (row["latency_ms_mean"], row["speedup"], row["latency_source"]) == (0.5, 2.0, "careful")
    assert (row["latency_low_ms"], row["latency_high_ms"]) == (0.45, 0.55)
    other = table.set_index(["method", "network"]).loc[("lacoot", "exact")]
    assert (other["latency_ms_mean"], other["latency_source"]) == (0.9, "in-run")  # not timed carefully: says so
    shown = " ".join((tmp_path / "frontier.md").read_text().split())  # the markdown's padding aside
    assert "| NEPENTHE | distill=1 | exact collapse |" in shown and "0.500 (2.00×)" in shown
    assert "0.900 (1.11×) in-run" in shown
    best = (tmp_path / "frontier_best.md").read_text()
    assert "no: the closest" in best and (tmp_path / "figures" / "frontier.png").is_file()
