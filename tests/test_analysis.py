"""analysis/: collect (local and W&B sources give the same rows), Table 1 numbers, figures, the notebook."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

from analysis import collect, plots, tables
from conftest import ROOT
from nepenthe.data.fashion_mnist import DEBIAN_DIR, prepare_fashion_mnist
from nepenthe.tracking import flatten


def fake_run(method, seed, accs, ks, dense_macs=140_000_000, collapsed_macs=100_000_000):
    """config, round records and summary of one run, as train.py writes them."""
    config = {"seed": seed, "model": {"name": "resnet18_cifar", "kwargs": {}},
              "dataset": {"name": "cifar10", "root": "data", "kwargs": {}},
              "pruning": {"method": method, "ratio": 0.5}}
    records = [{"round": r, "sparsity": 1 - 0.5 ** r, "val_acc": a + 0.5, "test_acc": a, "k": k, "N": 17,
                "entropy": {"relu": 0.9 - 0.1 * r, "layers.0.0.relu1": 0.0 if k else 0.5}}
               for r, (a, k) in enumerate(zip(accs, ks))]
    final = len(accs) - 1
    cost = {"dense": {"macs": dense_macs, "macs_nonzero": dense_macs, "params": 11_000_000, "params_nonzero": 11_000_000,
                      "weight_layers_on_longest_path": 18},
            "final": {"macs": dense_macs, "macs_nonzero": 40_000_000, "params": 11_000_000,
                      "params_nonzero": 5_000_000, "weight_layers_on_longest_path": 18},
            "collapsed": {"macs": collapsed_macs, "macs_nonzero": collapsed_macs, "params": 9_000_000,
                          "params_nonzero": 4_000_000, "weight_layers_on_longest_path": 16}}
    summary = {"status": "complete", "final_round": final, "cost": cost,
               "collapse": {"test_acc": accs[final] - 0.01, "max_abs_diff": 1e-6,
                            "latency_ms": {"uncollapsed": {"batch_1": 8.0, "batch_64": 160.0},
                                           "collapsed": {"batch_1": 5.0, "batch_64": 120.0}}}}
    return config, records, summary


RUNS = [fake_run("nepenthe", 0, [91.0, 90.0, 89.0], [0, 1, 2]), fake_run("nepenthe", 1, [92.0, 91.0, 90.0], [0, 1, 2]),
        fake_run("easier", 0, [91.0, 90.5], [0, 2])]


def write_run_dir(folder: Path, config, records, summary):
    folder.mkdir(parents=True)
    (folder / "config.yaml").write_text(yaml.safe_dump(config))
    (folder / "rounds.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    (folder / "summary.json").write_text(json.dumps(summary))


@pytest.fixture
def runs_folder(tmp_path):
    for i, run in enumerate(RUNS):
        write_run_dir(tmp_path / "runs" / f"job{i}", *run)
    return tmp_path / "runs"


def test_collect_local_runs_gives_the_documented_columns_and_values(runs_folder):
    frame = collect.to_frame(collect.local_runs([runs_folder]))
    assert list(frame.columns) == collect.COLUMNS and len(frame) == 3 + 3 + 2
    final = frame[frame["is_final"]]
    assert sorted(final["round"]) == [1, 2, 2]
    row = final[(final["method"] == "nepenthe") & (final["seed"] == 1)].iloc[0]
    assert (row["test_acc"], row["k"], row["depth"], row["sparsity"]) == (90.0, 2, "2/17", 0.75)
    assert (row["macs_dense"], row["macs_collapsed"], row["weight_layers_collapsed"]) == (140e6, 100e6, 16)
    assert (row["latency_batch"], row["latency_ms_b1_collapsed"], row["latency_ms_bn_uncollapsed"]) == (64, 5.0, 160.0)
    assert row["collapsed_test_acc"] == pytest.approx(89.99)
    assert json.loads(row["entropy"]) == {"layers.0.0.relu1": 0.0, "relu": pytest.approx(0.7)}
    assert frame[~frame["is_final"]]["macs_collapsed"].isna().all()  # cost describes the kept round only


class FakeWandbRun:
    def __init__(self, run_id, config, records, summary):
        self.id, self.config = run_id, config
        self.summary = {**flatten(summary), "_runtime": 3}
        self._history = [{**flatten(r), "_step": r["round"]} for r in records]

    def scan_history(self):
        return iter(self._history)


class FakeApi:
    def __init__(self, runs):
        self._runs = runs
        self.asked = None

    def runs(self, path, filters=None):
        self.asked = (path, filters)
        return self._runs


def test_wandb_source_gives_the_same_rows_as_the_local_one(runs_folder):
    local = collect.to_frame(collect.local_runs([runs_folder])).drop(columns="run_id")
    api = FakeApi([FakeWandbRun(f"r{i}", *run) for i, run in enumerate(RUNS)])
    remote = collect.to_frame(collect.wandb_runs("me/nepenthe", {"config.seed": 0}, api=api))
    assert api.asked == ("me/nepenthe", {"config.seed": 0})
    assert remote["run_id"].str.startswith("wandb:me/nepenthe/").all()
    pd.testing.assert_frame_equal(remote.drop(columns="run_id"), local)


def test_table1_means_and_stds_by_hand_and_published_numbers(runs_folder):
    table = tables.table1(collect.to_frame(collect.local_runs([runs_folder])))
    nep = table[table["method"] == "nepenthe"].iloc[0]
    # seeds' kept rounds: 89.0 and 90.0 -> mean 89.50, sample std 0.71; dense 91.0 and 92.0
    assert nep["top-1 (%)"] == "89.50 ± 0.71" and nep["dense top-1 (%)"] == "91.50 ± 0.71"
    assert (nep["seeds"], nep["k/N"], nep["sparsity (%)"]) == (2, "2/17", "75.0")
    assert nep["MACs (M)"] == "140.00 → 100.00" and nep["weight layers"] == "18 → 16"
    assert nep["latency b1 (ms)"] == "8.000 → 5.000" and nep["collapsed top-1 (%)"] == "89.49 ± 0.71"
    assert nep["published top-1 (%)"] == "89.26 (LaCoOT table)"
    easier = table[table["method"] == "easier"].iloc[0]
    assert easier["top-1 (%)"] == "90.50" and easier["published top-1 (%)"] == "90.35 (LaCoOT table)"
    # elsewhere EASIER is compared with its own appendix at the same number of removed activations
    assert tables.published("resnet18_imagenet", "tiny_imagenet", "easier", 2.0) == "40.62 (EASIER, k=2)"
    assert tables.published("resnet18_imagenet", "tiny_imagenet", "nepenthe", 2.0) == "—"


def test_tables_are_written_as_markdown_latex_and_csv(runs_folder, tmp_path):
    table = tables.table1(collect.to_frame(collect.local_runs([runs_folder])))
    md, tex, csv = tables.write_tables(table, tmp_path / "out" / "table1")
    lines = md.read_text().splitlines()
    assert lines[0].startswith("| model ") and len(lines) == 2 + len(table)
    assert any("nepenthe" in line and "89.50 ± 0.71" in line for line in lines)
    assert r"89.50 $\pm$ 0.71" in tex.read_text() and r"\begin{tabular}" in tex.read_text()
    assert pd.read_csv(csv)["top-1 (%)"].tolist() == table["top-1 (%)"].tolist()


def test_figures_are_written_as_png_and_pdf(runs_folder, tmp_path):
    paths = plots.all_figures(collect.to_frame(collect.local_runs([runs_folder])), tmp_path / "figures")
    names = sorted(p.name for p in paths)
    assert names == sorted(f"{n}.{ext}" for n in ("depth_vs_accuracy", "entropy_heatmap", "cost_vs_accuracy")
                           for ext in ("png", "pdf"))
    assert all(p.stat().st_size > 5000 for p in paths)
    assert all(p.read_bytes()[:4] == (b"\x89PNG" if p.suffix == ".png" else b"%PDF") for p in paths)


def test_notebook_rebuilds_the_figures_from_the_csv(runs_folder, tmp_path):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    csv = tmp_path / "runs.csv"
    collect.to_frame(collect.local_runs([runs_folder])).to_csv(csv, index=False)
    os.environ["NEPENTHE_RUNS_CSV"], os.environ["NEPENTHE_FIGURES"] = str(csv), str(tmp_path / "nbfig")
    try:
        notebook = nbformat.read(ROOT / "analysis" / "notebooks" / "figures.ipynb", as_version=4)
        nbclient.NotebookClient(notebook, timeout=180,
                                resources={"metadata": {"path": str(ROOT / "analysis" / "notebooks")}}).execute()
    finally:
        del os.environ["NEPENTHE_RUNS_CSV"], os.environ["NEPENTHE_FIGURES"]
    assert (tmp_path / "nbfig" / "depth_vs_accuracy.png").stat().st_size > 5000
    table_output = notebook.cells[3].outputs[0]["data"]["text/plain"]
    assert "89.50 ± 0.71" in table_output


def test_collect_command_writes_the_csv(runs_folder, tmp_path):
    out = tmp_path / "runs.csv"
    result = subprocess.run([sys.executable, "-m", "analysis.collect", str(runs_folder), "-o", str(out)], cwd=ROOT,
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "8 rows from 3 runs" in result.stdout and len(pd.read_csv(out)) == 8


@pytest.mark.slow
@pytest.mark.skipif(not DEBIAN_DIR.is_dir(), reason="needs Debian's dataset-fashion-mnist (make data)")
def test_make_reproduce_table1_smoke_on_a_tiny_subset(tmp_path):
    prepare_fashion_mnist(tmp_path / "data")
    extra = f"dataset.root={tmp_path / 'data'} dataset.kwargs.train_subset=500 dataset.kwargs.val_size=200 " \
            "model.kwargs.width=8 train.epochs=1 finetune.epochs=1 stop.max_rounds=1"
    result = subprocess.run(["make", "reproduce-table1", "SCALE=smoke", f"RUNS={tmp_path / 'runs'}",
                             f"RESULTS={tmp_path / 'results'}", "ONLY=pruning=nepenthe,easier seed=0",
                             f"EXTRA={extra}"], cwd=ROOT, capture_output=True, text=True, timeout=1200)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    out = tmp_path / "results" / "smoke"
    frame = pd.read_csv(out / "runs.csv")
    assert sorted(frame["method"].unique()) == ["easier", "nepenthe"] and set(frame["round"]) == {0, 1}
    assert (out / "table1.md").read_text().count("compact_cnn") == 2
    assert (out / "figures" / "depth_vs_accuracy.pdf").stat().st_size > 5000


def test_collect_lists_failed_and_unfinished_runs_instead_of_dropping_them(runs_folder, tmp_path):
    from nepenthe.tracking import write_failure

    (runs_folder / "job1" / "summary.json").unlink()  # stopped (or still running) after its rounds
    failed = runs_folder / "job9"
    (failed / ".hydra").mkdir(parents=True)
    write_failure(failed, "pruning.ratio=1.5 must lie strictly between 0 and 1 (e.g. 0.5)", "ConfigError")
    rounds = [r["round"] for r in collect.read_rounds(runs_folder / "job1")]
    assert collect.incomplete_runs([runs_folder]) == [
        (runs_folder / "job1", f"unfinished: rounds 0..{max(rounds)}"),
        (failed, "failed: pruning.ratio=1.5 must lie strictly between 0 and 1 (e.g. 0.5)")]
    out = tmp_path / "runs.csv"
    result = subprocess.run([sys.executable, "-m", "analysis.collect", str(runs_folder), "-o", str(out)], cwd=ROOT,
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert f"warning: {runs_folder / 'job1'} has no summary (unfinished: rounds 0..{max(rounds)})" in result.stderr
    assert f"warning: {failed} has no summary (failed: pruning.ratio=1.5" in result.stderr
    assert "8 rows from 3 runs" in result.stdout  # the unfinished run's rounds are still in the table
