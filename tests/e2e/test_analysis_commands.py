"""analysis/ through its commands (make reproduce-table1, make figures, python -m analysis.collect), as a user runs
them: real subprocesses, so in make test-all."""

import subprocess
import sys

import pandas as pd
import pytest

import record_grid
from analysis import collect, plots, tables
from conftest import ROOT
from nepenthe.data.fashion_mnist import DEBIAN_DIR, prepare_fashion_mnist
from test_analysis import grid, runs_folder  # noqa: F401  (fixtures)

pytestmark = pytest.mark.e2e  # subprocesses: in make test-all


@pytest.mark.timeout(600)
def test_make_figures_executes_the_notebook_into_its_own_folder_and_leaves_committed_results_alone(grid, tmp_path):
    pytest.importorskip("nbclient")
    csv = tmp_path / "runs.csv"
    collect.to_frame(collect.local_runs([grid[0]])).to_csv(csv, index=False)
    def snapshot():
        return {p: p.read_bytes() for p in (ROOT / "experiments" / "results").rglob("*") if p.is_file()}

    committed = snapshot()
    result = subprocess.run(["make", "-o", "install", "figures", f"CSV={csv}", f"OUT={tmp_path / 'nb'}"], cwd=ROOT,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    out = tmp_path / "nb"
    assert sorted(p.name for p in (out / "figures").glob("*.png")) == sorted(f"{n}.png" for n in plots.FIGURES)
    assert (out / "table1.md").read_text().count("| ResNet-18 ") == 8
    import nbformat

    executed = nbformat.read(out / "figures.ipynb", as_version=4)
    images = [o for c in executed.cells if c.cell_type == "code" for o in c.get("outputs", [])
              if "image/png" in o.get("data", {})]
    assert len(images) == len(plots.FIGURES)  # every figure shown in the notebook
    texts = "".join(o.get("data", {}).get("text/markdown", "") for c in executed.cells if c.cell_type == "code"
                    for o in c.get("outputs", []))
    assert "91.25 ± 0.35" in texts and "matched_k" in texts
    assert snapshot() == committed
    refused = subprocess.run(["make", "-o", "install", "figures", f"CSV={csv}",
                              f"OUT={ROOT / 'experiments' / 'results' / 'smoke'}"], cwd=ROOT, capture_output=True,
                             text=True, timeout=120)
    assert refused.returncode != 0 and "inside the committed results" in refused.stderr
    assert snapshot() == committed


def test_make_reproduce_table1_renders_a_multi_model_multi_dataset_record_set(tmp_path):
    record_grid.write_grid(tmp_path / "runs" / "table1")  # the published scale's run directory name
    result = subprocess.run(["make", "-o", "install", "reproduce-table1", "SWEEP=0", f"RUNS={tmp_path / 'runs'}",
                             f"RESULTS={tmp_path / 'results'}"], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    out = tmp_path / "results" / "published"
    numeric = pd.read_csv(out / "table1.csv")
    assert len(numeric) == 16 and set(numeric["model"]) == set(record_grid.MODELS)
    expected = tables.table1(collect.to_frame(collect.local_runs([tmp_path / "runs"])))
    pd.testing.assert_frame_equal(numeric.fillna({"published_source": ""}), expected, check_dtype=False)
    for name in ("matched_k", "matched_sparsity", "matched_macs"):
        assert (out / f"{name}.md").is_file() and (out / f"{name}.tex").is_file()
    assert sorted(p.name for p in (out / "figures").iterdir()) == sorted(
        f"{n}.{ext}" for n in [*plots.FIGURES, "frontier"] for ext in ("png", "pdf"))
    frontier = pd.read_csv(out / "frontier.csv")  # the kept rounds as frontier points, one per method and network
    assert len(frontier) == 16 and (out / "frontier_best.md").is_file()


def test_collect_command_writes_the_csv(runs_folder, tmp_path):
    out = tmp_path / "runs.csv"
    result = subprocess.run([sys.executable, "-m", "analysis.collect", str(runs_folder), "-o", str(out)], cwd=ROOT,
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "8 rows from 3 runs" in result.stdout and len(pd.read_csv(out)) == 8


@pytest.mark.slow
@pytest.mark.timeout(1200)
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
    assert (out / "table1.md").read_text().count("| compact CNN ") == 2 and (out / "matched_k.md").is_file()
    assert (out / "figures" / "depth_vs_accuracy.pdf").stat().st_size > 5000


@pytest.mark.slow
@pytest.mark.timeout(1200)
@pytest.mark.skipif(not DEBIAN_DIR.is_dir(), reason="needs Debian's dataset-fashion-mnist (make data)")
def test_the_resnet18_study_sweep_runs_one_lacoot_seed_on_a_small_subset_through_its_sweep_file(tmp_path):
    """experiments/results/fashion_mnist_resnet18 comes from conf/experiment/study_fashion_mnist_resnet18.yaml: one of
    its jobs, on 600 images and one epoch per stage, through the same command, so the study cannot rot."""
    prepare_fashion_mnist(tmp_path / "data")
    extra = f"dataset.root={tmp_path / 'data'} dataset.kwargs.train_subset=600 dataset.kwargs.val_size=300 " \
            "train.epochs=1 train.milestones=[] collapse.latency_rounds=1 collapse.latency_min_run_time=0.02"
    result = subprocess.run(["make", "-o", "install", "reproduce", "EXPERIMENT=study_fashion_mnist_resnet18",
                             f"RUNS={tmp_path / 'runs'}", f"RESULTS={tmp_path / 'results'}",
                             "ONLY=pruning=lacoot seed=0", f"EXTRA={extra}"], cwd=ROOT, capture_output=True, text=True,
                            timeout=1200)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "(1 jobs)" in result.stdout
    frame = pd.read_csv(tmp_path / "results" / "study_fashion_mnist_resnet18" / "runs.csv")
    assert set(frame["method"]) == {"lacoot"} and set(frame["model"]) == {"resnet18_cifar"}
    assert set(frame["N"]) == {17}  # the papers' 17 rectifier units at a quarter of the width
    final = frame[frame["is_kept"]].iloc[0]
    assert final["params_dense"] < 800_000  # width 16: 0.70 M parameters (the full width has 11.2 M)
    assert final["weight_layers_dense"] == 18 and final["weight_layers_collapsed"] <= 18
    # LaCoOT removes one block per round (two weight layers each) while it stays within its max_drop
    removed_blocks = int(frame["round"].max())
    assert final["weight_layers_collapsed"] == 18 - 2 * int(final["kept_round"])
    assert 0 <= final["kept_round"] <= removed_blocks <= 4
    assert (tmp_path / "results" / "study_fashion_mnist_resnet18" / "figures" / "depth_vs_accuracy.png").is_file()


def test_a_failing_sweep_ends_in_its_summary_line_and_renders_what_finished(tmp_path):
    """make reproduce-table1 on a sweep whose jobs fail while they run (a diverging learning rate): the sweep's own
    summary, one error line, exit 1, no traceback. A configuration error is refused before any job starts."""
    tiny = ("dataset.kwargs.train_subset=300 dataset.kwargs.val_size=100 model.kwargs.width=8 train.epochs=1 "
            "finetune.epochs=1 stop.max_rounds=1 collapse.latency_rounds=1 collapse.latency_min_run_time=0.02 "
            "collapse.verify_batch=32")

    def reproduce(extra):
        return subprocess.run(["make", "-o", "install", "reproduce-table1", "SCALE=smoke", f"RUNS={tmp_path / 'runs'}",
                               f"RESULTS={tmp_path / 'results'}", "ONLY=pruning=nepenthe,imp seed=0",
                               f"EXTRA={tiny} {extra}"], cwd=ROOT, capture_output=True, text=True, timeout=600)

    refused = reproduce("pruning.ratio=1.5")
    assert refused.returncode != 0 and "Traceback" not in refused.stderr
    assert "pruning.ratio=1.5 must lie strictly between 0 and 1 (e.g. 0.5)" in refused.stderr
    assert not (tmp_path / "runs").exists()  # checked before launching: no job started

    result = reproduce("train.lr=1e12")
    assert result.returncode != 0
    assert "sweep finished: 2 of 2 jobs failed" in result.stderr and "Traceback" not in result.stderr
    assert "error: the sweep ended with exit code 1 (its summary is above)" in result.stderr
