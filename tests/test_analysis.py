"""analysis/: collect (local and W&B sources give the same rows), Table 1 numbers, figures, the notebook."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

import numpy as np

import record_grid
from analysis import collect, plots, rows as rows_module, tables, wandb_source
from conftest import ROOT
from nepenthe.data.fashion_mnist import DEBIAN_DIR, prepare_fashion_mnist
from nepenthe.records import RoundRecord, flatten
from nepenthe.tracking import RunRecorder


def fake_run(method, seed, accs, ks, dense_macs=140_000_000, collapsed_macs=100_000_000):
    """config, round records and summary of one run, as train.py writes them."""
    config = {"seed": seed, "model": {"name": "resnet18_cifar", "kwargs": {}},
              "dataset": {"name": "cifar10", "root": "data", "kwargs": {}},
              "pruning": {"method": method, "ratio": 0.5}, "hardware": {"precision": "fp32"}}
    records = [{"round": r, "sparsity": 1 - 0.5 ** r, "val_acc": a + 0.5, "test_acc": a, "k": k, "N": 17,
                "entropy": {"relu": 0.9 - 0.1 * r, "layers.0.0.relu1": 0.0 if k else 0.5}}
               for r, (a, k) in enumerate(zip(accs, ks))]
    final = len(accs) - 1
    cost = {"dense": {"macs": dense_macs, "macs_nonzero": dense_macs, "params": 11_000_000, "params_nonzero": 11_000_000,
                      "weight_layers_on_longest_path": 18},
            "kept": {"macs": dense_macs, "macs_nonzero": 40_000_000, "params": 11_000_000,
                      "params_nonzero": 5_000_000, "weight_layers_on_longest_path": 18},
            "collapsed": {"macs": collapsed_macs, "macs_nonzero": collapsed_macs, "params": 9_000_000,
                          "params_nonzero": 4_000_000, "weight_layers_on_longest_path": 16}}
    summary = {"status": "complete", "kept_round": final, "cost": cost,
               "collapse": {"test_acc": accs[final] - 0.01, "max_abs_diff": 1e-6,
                            "relative_diff_vs_original": 1e-7,
                            "latency_ms": {"kept": {"batch_1": 8.0, "batch_64": 160.0},
                                           "bn_folded": {"batch_1": 6.0, "batch_64": 140.0},
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
    assert list(frame.columns) == rows_module.COLUMNS and len(frame) == 3 + 3 + 2
    final = frame[frame["is_kept"]]
    assert sorted(final["round"]) == [1, 2, 2] and frame.groupby("run_id")["kept_round"].nunique().eq(1).all()
    row = final[(final["method"] == "nepenthe") & (final["seed"] == 1)].iloc[0]
    assert (row["test_acc"], row["k"], row["depth"], row["sparsity"], row["kept_round"]) == (90.0, 2, "2/17", 0.75, 2)
    assert (row["macs_dense"], row["macs_collapsed"], row["weight_layers_collapsed"]) == (140e6, 100e6, 16)
    assert (row["latency_batch"], row["latency_ms_b1_collapsed"], row["latency_ms_bn_kept"]) == (64, 5.0, 160.0)
    assert row["collapsed_test_acc"] == pytest.approx(89.99) and row["precision"] == "fp32"
    assert (row["test_acc_fp32"], row["collapsed_test_acc_fp32"]) == (90.0, pytest.approx(89.99))  # fp32 run
    assert json.loads(row["entropy"]) == {"layers.0.0.relu1": 0.0, "relu": pytest.approx(0.7)}
    assert frame[~frame["is_kept"]]["macs_collapsed"].isna().all()  # cost describes the kept round only


class FakeWandbRun:
    def __init__(self, run_id, config, records, summary, state="finished"):
        self.id, self.config, self.state = run_id, config, state
        self.summary = {**flatten(records[-1]), **flatten(summary or {}), "_runtime": 3}
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


def test_wandb_api_source_gives_the_same_rows_as_the_local_one(runs_folder):
    local = collect.to_frame(collect.local_runs([runs_folder])).drop(columns="run_id")
    api = FakeApi([FakeWandbRun(f"r{i}", *run) for i, run in enumerate(RUNS)])
    rows, problems = wandb_source.api_runs("me/nepenthe", {"config.seed": 0}, api=api)
    remote = collect.to_frame(rows)
    assert api.asked == ("me/nepenthe", {"config.seed": 0}) and problems == []
    assert remote["run_id"].str.startswith("wandb:me/nepenthe/").all()
    pd.testing.assert_frame_equal(remote.drop(columns="run_id"), local)
    # a crashed run keeps its logged rounds and is named, not dropped
    config, records, _ = RUNS[0]
    rows, problems = wandb_source.api_runs("me/p", api=FakeApi([FakeWandbRun("x", config, records[:2], None,
                                                                               "crashed")]))
    assert problems == [("wandb:me/p/x", "W&B state crashed, last logged round 1")]
    assert [r.round for r in rows] == [0, 1] and not any(r.is_kept for r in rows)


@pytest.fixture
def grid(tmp_path):
    dirs = record_grid.write_grid(tmp_path / "grid")
    return tmp_path / "grid", dirs


def test_grid_records_come_through_the_recorder_and_collect_keeps_models_apart(grid):
    folder, dirs = grid
    frame = collect.to_frame(collect.local_runs([folder]))
    assert len(dirs) == 32 and len(frame) == 32 * 4 and frame["run_id"].nunique() == 32
    counts = frame.groupby(["model", "dataset", "method"])["seed"].nunique()
    assert len(counts) == 2 * 2 * 4 and (counts == 2).all()


def test_table1_groups_by_model_dataset_method_with_numbers_by_hand(grid):
    frame = collect.to_frame(collect.local_runs([grid[0]]))
    t1 = tables.table1(frame)
    assert len(t1) == 16 and not t1.duplicated(["model", "dataset", "method"]).any()
    row = t1[(t1.model == "resnet18_cifar") & (t1.dataset == "cifar10") & (t1.method == "egp")].iloc[0]
    # seed 0 keeps round 2: 92 - 0.5*2 + 0 = 91.0; seed 1 keeps round 3: 92 - 1.5 + 1 = 91.5
    assert (row.top1_mean, row.top1_std) == pytest.approx((91.25, 0.3535534))
    assert (row.dense_top1_mean, row.dense_top1_std) == pytest.approx((92.5, 0.7071068))
    assert (row.sparsity_mean, row.sparsity_std) == pytest.approx((50.0, 14.142136))  # 40 % and 60 %, shown apart:
    assert row.kept_rounds == "0:2 1:3"
    assert (row.k_mean, row.N, row.weight_layers_dense, row.weight_layers_collapsed_mean) == (2, 17, 18, 16)
    assert (row.macs_dense_m, row.macs_collapsed_m_mean) == pytest.approx((100.0, 80.0))
    assert (row.latency_b1_kept_ms, row.latency_b1_bn_folded_ms, row.latency_b1_collapsed_ms) == (8, 6, 4)
    assert row.collapse_speedup_over_bn_folded == 1.5 and row.latency_b1_collapsed_iqr_ms == pytest.approx(0.4)
    assert (row.published_top1, row.published_source) == (90.64, "LaCoOT table")
    other = t1[(t1.model == "mobilenetv2_cifar") & (t1.dataset == "tiny_imagenet") & (t1.method == "egp")].iloc[0]
    assert (other.top1_mean, other.N, other.weight_layers_dense) == (pytest.approx(54.25), 35, 53)  # not averaged in
    imp = t1[(t1.model == "resnet18_cifar") & (t1.dataset == "cifar10") & (t1.method == "imp")].iloc[0]
    assert (imp.sparsity_mean, imp.k_mean) == (pytest.approx(81.25), 0)  # 75 % and 87.5 %
    # elsewhere EASIER is compared with its own appendix at the same number of removed activations
    assert tables.published("resnet18_imagenet", "tiny_imagenet", "easier", 2.0) == (40.62, "EASIER, k=2")
    assert np.isnan(tables.published("resnet18_imagenet", "tiny_imagenet", "nepenthe", 2.0)[0])


def test_matched_tables_compare_methods_at_equal_budget(grid):
    frame = collect.to_frame(collect.local_runs([grid[0]]))
    pick = dict(model="resnet18_cifar", dataset="cifar10")

    def cell(table, level_name, level, method):
        hit = table[(table.model == pick["model"]) & (table.dataset == pick["dataset"]) & (table[level_name] == level)
                    & (table.method == method)]
        assert len(hit) == 1
        return hit.iloc[0]

    mk = tables.matched_k(frame)
    assert sorted(mk[(mk.model == "resnet18_cifar") & (mk.dataset == "cifar10")]["k"].unique()) == [0, 1, 2, 3]
    # k=1: seed 0 round 1 (91.0); seed 1 rounds 1 and 2, best validation is round 1 (92.0)
    c = cell(mk, "k", 1, "nepenthe")
    assert (c.top1_mean, c.seeds_reaching, c.rounds) == (pytest.approx(91.5), 2, "0:1 1:1")
    c = cell(mk, "k", 3, "nepenthe")  # only seed 0 reaches k = 3 (round 3, past its stop: 89.0)
    assert (c.top1_mean, c.seeds_reaching, c.seeds, c.rounds) == (89.0, 1, 2, "0:3")
    assert cell(mk, "k", 2, "imp").seeds_reaching == 0
    ms = tables.matched_sparsity(frame)
    c = cell(ms, "sparsity_target", 0.5, "imp")  # rounds 1-3 qualify; round 1 has the best validation top-1
    assert (c.top1_mean, c.sparsity_mean, c.rounds) == (pytest.approx(92.25), 50.0, "0:1 1:1")
    c = cell(ms, "sparsity_target", 0.5, "nepenthe")  # only round 3 (60 %) qualifies
    assert (c.top1_mean, c.rounds) == (pytest.approx(89.5), "0:3 1:3")
    assert cell(ms, "sparsity_target", 0.9, "imp").seeds_reaching == 0  # 87.5 % at most
    mm = tables.matched_macs(frame)
    assert cell(mm, "macs_budget", 0.9, "nepenthe").seeds_reaching == 2  # k = 2 removes 20 % of the MACs
    assert cell(mm, "macs_budget", 0.75, "nepenthe").seeds_reaching == 0
    assert cell(mm, "macs_budget", 0.9, "imp").seeds_reaching == 0 and cell(mm, "macs_budget", 1.0, "imp").seeds == 2


def test_tables_are_written_as_markdown_booktabs_latex_and_numeric_csv(grid, tmp_path):
    frame = collect.to_frame(collect.local_runs([grid[0]]))
    shown = tables.write_all(frame, tmp_path / "out")
    assert set(shown) == {"table1", "matched_k", "matched_sparsity", "matched_macs"}
    md = (tmp_path / "out" / "table1.md").read_text().splitlines()
    assert len(md) == 2 + 16 and md[0].startswith("| Model ")
    assert any("ResNet-18" in line and "CIFAR-10" in line and "| EGP " in line and "91.25 ± 0.35" in line
               and "0:2 1:3" in line and "8.000/6.000/4.000" in line for line in md)
    tex = (tmp_path / "out" / "table1.tex").read_text()
    assert r"\toprule" in tex and r"\midrule" in tex and r"\bottomrule" in tex and r"\addlinespace" in tex
    assert r"91.25 $\pm$ 0.35" in tex and "compact" not in tex and "resnet18_cifar" not in tex
    align = tex.splitlines()[0]
    assert align == r"\begin{tabular}{lllrlrrrrrrrrlr}"  # names left, numbers right
    numeric = pd.read_csv(tmp_path / "out" / "table1.csv")
    assert numeric["top1_mean"].dtype == float and numeric["top1_std"].dtype == float
    assert "±" not in numeric.to_csv()
    mk = (tmp_path / "out" / "matched_k.md").read_text()
    assert "89.00 (1/2) [0:3]" in mk and mk.splitlines()[0].split("|")[4:8] == [
        "                     NEPENTHE ", "                          EGP ", "                       EASIER ",
        "                          IMP "]  # the papers' order, numbers right-aligned


@pytest.mark.slow  # make test-all: over 5 s on 2 cores
def test_wandb_csv_export_becomes_the_same_tables_as_the_run_directories(grid, tmp_path):
    folder, dirs = grid
    unfinished = tmp_path / "unfinished"
    unfinished.mkdir()
    config, records, _ = record_grid.one_run("resnet18_cifar", "cifar10", "nepenthe", 5)
    recorder = RunRecorder(unfinished)
    recorder.write_config(yaml.safe_dump(config))
    for record in records[:2]:
        recorder.round(RoundRecord.from_dict(record, schema=2))
    export = record_grid.wandb_export(dirs, tmp_path / "wandb_export_2026-11-23T10_00_00.000+00_00.csv", unfinished)
    rows, problems = wandb_source.csv_runs(export)
    assert problems == [(f"wandb-csv:{export.name}#32/unfinished", "W&B state crashed, last logged round 1")]
    exported = collect.to_frame([r for r in rows if r.seed != 5])
    local = collect.to_frame(collect.local_runs([folder]))
    same = [c for c in rows_module.COLUMNS if c not in ("run_id", "entropy")]
    pd.testing.assert_frame_equal(exported[same], local[same])
    # entropy: an export holds it for the dense and the kept round (the summary's), not the rounds between
    ends = exported["is_kept"] | (exported["round"] == 0)
    assert (exported.loc[ends, "entropy"] == local.loc[ends, "entropy"]).all()
    assert (exported.loc[~ends, "entropy"] == "").all()
    for build in (tables.table1, tables.matched_k, tables.matched_sparsity, tables.matched_macs):
        pd.testing.assert_frame_equal(build(exported), build(local))
    # the command reads it, warns about the unfinished run and keeps its rows
    out = tmp_path / "runs.csv"
    result = subprocess.run([sys.executable, "-m", "analysis.collect", "--wandb-csv", str(export), "-o", str(out)],
                            cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "has no summary (W&B state crashed, last logged round 1)" in result.stderr
    assert f"{32 * 4 + 1} rows from 33 runs" in result.stdout


def test_collect_reads_the_run_directory_around_a_wandb_folder_and_refuses_a_bare_one(grid, tmp_path):
    folder, dirs = grid
    (dirs[0] / "wandb" / "offline-run-20261123_100000-abc").mkdir(parents=True)
    assert collect.run_folder(dirs[0] / "wandb") == dirs[0].resolve()
    bare = tmp_path / "elsewhere" / "wandb"
    (bare / "offline-run-20261123_100000-abc").mkdir(parents=True)
    with pytest.raises(SystemExit, match="holds W&B runs but no nepenthe run directory"):
        collect.run_folder(bare)


@pytest.mark.slow  # make test-all: over 5 s on 2 cores
def test_figures_have_one_row_of_panels_per_model_and_dataset(grid, tmp_path):
    frame = collect.to_frame(collect.local_runs([grid[0]]))
    fig = plots.depth_vs_accuracy(frame)
    titles = [ax.get_title() for ax in fig.axes]
    assert len(fig.axes) == 4 * 2
    for pair in ("ResNet-18 on CIFAR-10", "ResNet-18 on Tiny-ImageNet-200", "MobileNetV2 on CIFAR-10",
                 "MobileNetV2 on Tiny-ImageNet-200"):
        assert sum(t.startswith(pair) for t in titles) == 1
    left = fig.axes[0]  # one (model, dataset): 8 runs, seed 0 of each has a faded round past its stop
    faded = [line for line in left.get_lines() if line.get_alpha() == plots.FADED]
    assert len(faded) == 4
    assert fig.legends and all(not ax.get_legend() for ax in fig.axes)  # legends outside the axes
    dense = [line for line in left.get_lines() if line.get_linestyle() == ":"]
    assert len(dense) == 1 and dense[0].get_ydata()[0] == pytest.approx(frame[(frame["round"] == 0)
        & (frame["model"] == "mobilenetv2_cifar") & (frame["dataset"] == "cifar10")]["test_acc"].mean())
    # the thick mean lines: entropy methods at k = 0, 1, 2 (seed 1 never reaches 3); IMP at k = 0 only
    means = [line for line in left.get_lines() if line.get_linewidth() == 2.6]
    assert sorted(len(line.get_xdata()) for line in means) == [1, 3, 3, 3]
    import matplotlib.pyplot as plt

    plt.close(fig)
    paths = plots.all_figures(frame, tmp_path / "figures")
    assert sorted(p.name for p in paths) == sorted(f"{n}.{ext}" for n in plots.FIGURES for ext in ("png", "pdf"))
    assert all(p.stat().st_size > 5000 for p in paths)
    assert all(p.read_bytes()[:4] == (b"\x89PNG" if p.suffix == ".png" else b"%PDF") for p in paths)


def test_lacoots_regularised_dense_round_is_marked_and_kept_out_of_the_dense_reference(tmp_path):
    """LaCoOT trains its round 0 with the transport regulariser: its dense top-1 is its own (marked in Table 1), the
    figures' dense line and marker come from plain dense training, and the latency figure counts the layers the
    collapse removed from the kept model (LaCoOT's blocks were already gone)."""
    config, records, summary = fake_run("lacoot", 0, [88.0, 88.0], [0, 2])
    config["pruning"]["lambda_reg"] = 5.0
    summary["cost"]["kept"]["weight_layers_on_longest_path"] = 16  # one block removed by the method
    runs = [fake_run("nepenthe", 0, [91.0, 90.0], [0, 1]), (config, records, summary)]
    for i, run in enumerate(runs):
        write_run_dir(tmp_path / "runs" / f"job{i}", *run)
    frame = collect.to_frame(collect.local_runs([tmp_path / "runs"]))
    assert frame.groupby("method")["regularised_dense"].all().to_dict() == {"lacoot": True, "nepenthe": False}
    assert sorted(frame.loc[frame["is_kept"], "weight_layers_kept"].tolist()) == [16, 18]
    assert tables.plain_dense(frame)["test_acc"].tolist() == [91.0]  # not the mean with LaCoOT's 88.0
    shown = tables.table1_display(tables.table1(frame)).set_index("Method")
    assert shown.loc["LaCoOT", "Dense top-1 (%)"] == "88.00 (its own, trained with its regulariser)"
    assert shown.loc["NEPENTHE", "Dense top-1 (%)"] == "91.00"
    fig = plots.depth_vs_accuracy(frame)
    dense = [line for line in fig.axes[0].get_lines() if line.get_linestyle() == ":"]
    assert len(dense) == 1 and dense[0].get_ydata()[0] == 91.0
    fig = plots.latency_vs_depth(frame)
    removed = sorted({round(x) for line in fig.axes[0].get_lines() for x in line.get_xdata() if line.get_marker() == "o"})
    assert removed == [0, 2]  # LaCoOT: 16 kept -> 16 collapsed; NEPENTHE: 18 -> 16
    import matplotlib.pyplot as plt

    plt.close("all")


@pytest.mark.slow  # make test-all: over 5 s on 2 cores
def test_collect_lists_failed_and_unfinished_runs_instead_of_dropping_them(runs_folder, tmp_path):
    from nepenthe.tracking import write_failure

    (runs_folder / "job1" / "summary.json").unlink()  # stopped (or still running) after its rounds
    failed = runs_folder / "job9"
    (failed / ".hydra").mkdir(parents=True)
    write_failure(failed, "pruning.ratio=1.5 must lie strictly between 0 and 1 (e.g. 0.5)", "ConfigError")
    rounds = [r.round for r in collect.read_rounds(runs_folder / "job1")]
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


def test_a_bf16_run_shows_its_collapsed_accuracy_beside_the_fp32_pair_that_was_verified(runs_folder):
    summary_file = runs_folder / "job0" / "summary.json"
    summary = json.loads(summary_file.read_text())
    summary["collapse"].update(precision="bf16", relative_diff_run_precision=0.012, test_acc_fp32=89.25,
                               kept_test_acc_fp32=89.25, val_acc_fp32=90.0, kept_val_acc_fp32=90.0)
    summary_file.write_text(json.dumps(summary))
    config_file = runs_folder / "job0" / "config.yaml"
    config = yaml.safe_load(config_file.read_text())
    config["hardware"]["precision"] = "bf16"
    config_file.write_text(yaml.safe_dump(config))
    frame = collect.to_frame(collect.local_runs([runs_folder]))
    row = frame[frame["is_kept"] & (frame["precision"] == "bf16")].iloc[0]
    assert (row["collapse_relative_diff"], row["test_acc_fp32"], row["collapsed_test_acc_fp32"]) == (0.012, 89.25, 89.25)
    shown = tables.table1_display(tables.table1(frame[frame["precision"] == "bf16"]))
    assert shown["Collapsed top-1 (%)"].iloc[0] == "88.99 (fp32: 89.25 vs 89.25 kept)"
    assert shown["Precision"].iloc[0] == "bf16"
    # without a collapse section a bf16 run's fp32 accuracy is unknown, never its bf16 accuracy relabelled
    del summary["collapse"]
    summary_file.write_text(json.dumps(summary))
    frame = collect.to_frame(collect.local_runs([runs_folder]))
    row = frame[frame["is_kept"] & (frame["precision"] == "bf16")].iloc[0]
    assert np.isnan(row["test_acc_fp32"]) and row["test_acc"] == 89.0


def test_reproduce_checks_what_a_scale_needs_before_launching_anything(tmp_path):
    """SCALE=published on a machine without CUDA or CIFAR-10: one line per missing piece naming the fix, and
    nothing launched (no run directory)."""
    import torch

    from analysis import reproduce

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(SystemExit) as info:
        reproduce.main(["--scale", "published", "--runs-root", str(tmp_path / "runs"), "--only", "model=resnet18_cifar",
                        "pruning=nepenthe", "seed=43", "--extra", f"dataset.root={tmp_path / 'nowhere'}"])
    lines = str(info.value).splitlines()
    assert lines == [
        "error: experiment=table1 asks for CUDA (hardware.device=cuda) and this machine has none; run SCALE=smoke "
        "for the CPU version, or submit it to GPUs with LAUNCHER=slurm",
        f"error: dataset cifar10: cifar10 not found: expected torchvision's layout in {tmp_path / 'nowhere'}/"
        "cifar-10-batches-py (the extracted cifar-10-batches-py archive); pass dataset.kwargs.download=true where the "
        "network allows"]
    assert not (tmp_path / "runs").exists()
    with pytest.raises(SystemExit, match="SCALE='huge' is not valid; choose one of smoke, published"):
        reproduce.main(["--scale", "huge"])
    with pytest.raises(SystemExit, match=r"--only 'colour=red' names no key of the sweep"):
        reproduce.main(["--scale", "smoke", "--only", "colour=red", "--runs-root", str(tmp_path / "runs")])


@pytest.mark.parametrize("folder", sorted(p.parent for p in (ROOT / "experiments" / "results").glob("*/runs.csv")),
                         ids=lambda p: p.name)
def test_committed_tables_re_render_byte_identically_from_their_runs_csv(folder, tmp_path):
    from analysis import frontier
    from analysis.rows import read_runs

    frame = read_runs(folder / "runs.csv")  # as analysis.reproduce renders: one method's settings told apart
    tables.write_all(frame, tmp_path)
    for path in sorted(tmp_path.iterdir()):
        assert path.read_bytes() == (folder / path.name).read_bytes(), f"{folder.name}/{path.name} differs"
    if (folder / "frontier.md").is_file():  # rendered since the frontier existed: it re-renders too
        frontier.write_frontier(frame, tmp_path / "frontier", frontier.read_latency(folder / "latency.csv"))
        for name in ("frontier", "frontier_best"):
            for suffix in (".md", ".tex", ".csv"):
                made, kept = tmp_path / "frontier" / f"{name}{suffix}", folder / f"{name}{suffix}"
                assert made.read_bytes() == kept.read_bytes(), f"{folder.name}/{name}{suffix} differs"


def test_the_architectures_table_reads_drops_against_plain_dense_of_the_same_seed(tmp_path):
    """One row per model and method over several study folders: LaCoOT's drop is against the plain dense network of
    its seed (91.0), not its own regularised one (88.0); MACs as a share of dense; ONNX Runtime speed-up per run."""
    from analysis import architectures

    lacoot = fake_run("lacoot", 0, [88.0, 87.5], [0, 2], collapsed_macs=70_000_000)
    lacoot[0]["pruning"]["lambda_reg"] = 5.0
    studies = {"a": [fake_run("nepenthe", 0, [91.0, 90.0, 89.0], [0, 1, 2]),
                     fake_run("nepenthe", 1, [92.0, 91.0, 91.5], [0, 1, 2]), lacoot],
               "b": [fake_run("easier", 0, [80.0, 79.0], [0, 3])]}
    studies["b"][0][0]["model"]["name"] = "swin_t"
    timed = studies["b"][0][2]["collapse"]
    timed["latency_ms"] = {"eager": timed["latency_ms"], "onnxruntime": {
        "kept": {"batch_1": 0.3, "batch_64": 9.0}, "bn_folded": {"batch_1": 0.3, "batch_64": 9.0},
        "collapsed": {"batch_1": 0.2, "batch_64": 6.0}}}
    for study, runs in studies.items():
        for i, run in enumerate(runs):
            write_run_dir(tmp_path / "runs" / study / f"job{i}", *run)
        (tmp_path / study).mkdir()
        collect.to_frame(collect.local_runs([tmp_path / "runs" / study])).to_csv(tmp_path / study / "runs.csv")
    shown = architectures.display(architectures.across(
        [pd.read_csv(tmp_path / s / "runs.csv") for s in ("b", "a")])).set_index(["architecture", "method"])
    assert list(shown.index) == [("Swin-T on CIFAR-10", "EASIER"), ("ResNet-18 on CIFAR-10", "NEPENTHE"),
                                 ("ResNet-18 on CIFAR-10", "LaCoOT")]
    nepenthe, lacoot_row = shown.loc[("ResNet-18 on CIFAR-10", "NEPENTHE")], shown.loc[("ResNet-18 on CIFAR-10", "LaCoOT")]
    assert nepenthe["top-1 dense → kept (drop)"] == "91.50 → 90.25 (-1.25 ± 1.06)"  # drops -2.0 and -0.5
    assert nepenthe["k/N"] == "2/17" and nepenthe["weight layers dense → collapsed"] == "18 → 16"
    assert nepenthe["MACs (M) dense → collapsed"] == "140.00 → 100.00 (71 %)"
    assert nepenthe["ONNX Runtime b1 over BN folding"] == "—"  # not timed there
    assert lacoot_row["top-1 dense → kept (drop)"] == "91.00 → 87.50 (-3.50)"
    assert lacoot_row["MACs (M) dense → collapsed"] == "140.00 → 70.00 (50 %)"
    easier = shown.loc[("Swin-T on CIFAR-10", "EASIER")]
    assert easier["top-1 dense → kept (drop)"] == "80.00 → 79.00 (-1.00)"
    assert easier["ONNX Runtime b1 over BN folding"] == "1.50×"


def test_the_readme_front_table_is_the_committed_studies_rendered():
    """The README's three-architecture table is regenerated, never edited by hand: it equals what
    ``python -m analysis.architectures --readme README.md`` writes from the committed runs.csv files."""
    from analysis import architectures

    readme = (ROOT / "README.md").read_text()
    table = architectures.markdown(architectures.committed_studies())
    assert architectures.replace_block(readme, table) == readme
    with pytest.raises(SystemExit, match="needs the lines"):
        architectures.replace_block("no markers here", table)
