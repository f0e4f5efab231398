"""nepenthe.runner.run_experiment in-process (through train.py's execute, as the CLI calls it): the records a run
writes, resuming, refusing another config without writing into its directory, every method's run, collapse off."""

import dataclasses
import json
from pathlib import Path

import pytest
import torch
import yaml

import train
from conftest import FAST, SYNTHETIC, compose_config
from nepenthe.data.fashion_mnist import DEBIAN_DIR, prepare_fashion_mnist, raw_dir
from nepenthe.errors import ConfigError
from nepenthe.experiment import Experiment
from nepenthe.records import SCHEMA_VERSION, CollapseResult, RoundRecord, Summary
from nepenthe.rundir import RunDir
from nepenthe.store import load_checkpoint
from nepenthe.tracking import read_rounds, read_summary

UNITS_IN_ORDER = ["relu", "layers.0.0.relu1", "layers.0.0.relu2", "layers.1.0.relu1", "layers.1.0.relu2",
                  "layers.2.0.relu1", "layers.2.0.relu2"]
TIMING = {"wall_time_s", "elapsed_s"}


def untimed(records):
    return [{k: v for k, v in r.to_dict().items() if k not in TIMING} for r in records]


def check_run_directory(run_dir: Path, rounds: int) -> tuple[list[RoundRecord], Summary]:
    records = read_rounds(run_dir)
    assert [r.round for r in records] == list(range(rounds + 1))
    for r in records:
        assert list(r.entropy) == UNITS_IN_ORDER and r.N == 7 and r.k == len(r.zero_entropy_units)
        assert all(0.0 <= h <= 1.0 for h in r.entropy.values()) and 0.0 <= r.test_acc <= 100.0
        assert r.weight_layers == 8  # pruning never removes a layer of the kept model
    assert records[0].sparsity == 0.0 and records[0].pruned == 0
    assert all(b.sparsity > a.sparsity for a, b in zip(records, records[1:]))
    summary = read_summary(run_dir)
    assert summary.status == "complete" and summary.depth == f"{summary.k}/7"
    assert {r: dataclasses.asdict(p) for r, p in summary.trajectory.items()} == {
        str(r.round): {k: getattr(r, k) for k in ("sparsity", "val_acc", "test_acc", "k", "N")} for r in records}
    dense, final = summary.cost.dense, summary.cost.kept
    assert final.macs == dense.macs and final.weight_layers_on_longest_path == 8
    kept = records[summary.kept_round]
    assert (final.macs_nonzero < dense.macs_nonzero) == (kept.sparsity > 0)
    assert yaml.safe_load((run_dir / "config.yaml").read_text())["model"]["name"] == "compact_cnn"
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == [f"round_{i:03d}.pt" for i in range(rounds + 1)]
    check_collapse(run_dir, summary, kept)
    return records, summary


def check_collapse(run_dir: Path, summary: Summary, kept: RoundRecord):
    section = summary.collapse
    assert isinstance(section, CollapseResult)
    assert section.before == summary.cost.kept and section.after == summary.cost.collapsed
    assert section.after.weight_layers_on_longest_path <= section.before.weight_layers_on_longest_path
    assert section.after.macs <= section.before.macs
    assert section.relative_diff <= section.tolerance  # relative to the output's own size, no floor
    assert section.max_abs_diff <= section.tolerance * section.output_scale
    assert section.merge == "cost" and section.border_diff == 0.0 and not section.approximate_activations
    assert abs(section.test_acc - kept.test_acc) <= 0.1
    assert [u["unit"] for u in section.units] == UNITS_IN_ORDER
    assert section.runtimes == {"eager": "ok"} and set(section.latency_ms) == {"eager"}  # FAST times eager only
    eager, spread = section.latency_ms["eager"], section.latency_iqr_ms["eager"]
    assert set(eager) == set(spread) == {"kept", "bn_folded", "collapsed"}
    assert all(ms > 0 for timings in eager.values() for ms in timings.values())
    assert all(iqr >= 0 for timings in spread.values() for iqr in timings.values())
    assert section.latency_repeats >= 1 and section.latency_precision == section.precision == "fp32"
    assert 0 < section.wall_time_s  # the collapse's own seconds, beside the rounds' (summary.wall_time_s)
    assert summary.wall_time_s >= read_rounds(run_dir)[-1].elapsed_s  # every round, up to the kept one or not
    loaded = torch.export.load(str(run_dir / section.file)).module()  # plain PyTorch, no nepenthe code
    assert loaded(torch.zeros(3, *section.input_shape[1:])).shape == (3, 10)


def test_a_run_writes_typed_records_and_a_verified_collapse(run_fast, capsys):
    summary, run_dir = run_fast("pruning=nepenthe")
    records, written = check_run_directory(run_dir, rounds=3)
    assert summary.stop_reason == "max_rounds" and summary.kept_round == 3
    # its estimate is said after the first training steps, before round 0's row, and recorded beside its wall time
    lines = capsys.readouterr().out.splitlines()
    [where] = [i for i, line in enumerate(lines) if line.startswith("estimate: ")]
    assert lines[where + 1].split()[0] == "0"
    est = written.estimate
    assert est == summary.estimate and est.device == "cpu" and est.batch_size == 32 and est.batches_timed == 5
    # 600 training images; 3 dense epochs, then 3 rounds of 1; val 200 + test 200 + the probe's 600 passed forward
    per_image, forward = est.seconds_per_batch / 32, est.forward_ms_per_image / 1e3
    assert 0 < forward < per_image  # measured on one evaluation batch: cheaper than training on it
    assert est.dense_s == pytest.approx(3 * 600 * per_image + 1000 * forward)
    assert est.rounds == 3 and est.rounds_s == pytest.approx(3 * (600 * per_image + 1000 * forward))
    assert 0 < est.total_s < 10 * summary.wall_time_s  # the same order as what the run really took
    # NEPENTHE removes ratio 0.5 of the remaining *prunable* weights each round (unit layers, not the head/shortcuts)
    for r in records[1:]:
        assert r.pruned == sum(r.plan.values()) > 0 and r.replaced_by_identity == []
    assert records[0].test_acc > 80.0  # synthetic templates are easy; a broken pipeline would sit near 10 %
    assert json.loads((run_dir / "rounds.jsonl").read_text().splitlines()[0])["schema"] == SCHEMA_VERSION


@pytest.mark.slow  # make test-all: over 5 s on 2 cores
def test_imp_and_uniform_runs_prune_as_configured(run_fast, tmp_path):
    _, imp_dir = run_fast("pruning=imp", "stop.max_rounds=2", run_dir=tmp_path / "imp")
    imp = read_rounds(imp_dir)
    assert imp[1].sparsity == pytest.approx(0.5, abs=1e-4) and imp[2].sparsity == pytest.approx(0.75, abs=1e-4)
    _, uni_dir = run_fast("pruning=uniform", "pruning.ratio=0.3", "stop.max_rounds=1", run_dir=tmp_path / "uni")
    uni = read_rounds(uni_dir)
    assert all(s == pytest.approx(0.3, abs=0.01) for s in uni[1].unit_sparsity.values())


@pytest.mark.slow  # make test-all: over 5 s on 2 cores
def test_a_run_killed_between_rounds_resumes_and_matches_an_uninterrupted_one(run_fast, tmp_path, monkeypatch):
    _, reference_dir = run_fast(run_dir=tmp_path / "reference")
    reference = read_rounds(reference_dir)

    original_fit = Experiment.fit
    calls = []

    def killed_in_round_2(self, round_index, checkpoints):
        calls.append(round_index)
        if round_index == 2:
            raise KeyboardInterrupt("cluster killed the job")
        return original_fit(self, round_index, checkpoints)

    monkeypatch.setattr(Experiment, "fit", killed_in_round_2)
    with pytest.raises(KeyboardInterrupt):
        run_fast(run_dir=tmp_path / "victim")
    assert [r.round for r in read_rounds(tmp_path / "victim")] == [0, 1]
    assert read_summary(tmp_path / "victim") is None

    calls.clear()
    monkeypatch.setattr(Experiment, "fit", lambda self, r, c: calls.append(r) or original_fit(self, r, c))
    summary, _ = run_fast(run_dir=tmp_path / "victim")
    assert calls == [2, 3]  # neither dense training nor round 1 was redone
    assert untimed(read_rounds(tmp_path / "victim")) == untimed(reference)

    calls.clear()
    again, _ = run_fast(run_dir=tmp_path / "victim")  # complete: nothing is retrained
    assert calls == [] and again == summary


def test_a_directory_of_another_config_is_refused_and_not_written(run_fast, tmp_path, monkeypatch):
    """An unfinished run of seed 0 (killed during round 1); running seed 1 into its directory is refused with the
    differing key named, and not one byte of the directory changes (its lock's own bookkeeping aside)."""
    original_fit = Experiment.fit

    def killed_in_round_1(self, round_index, checkpoints):
        if round_index == 1:
            raise KeyboardInterrupt
        return original_fit(self, round_index, checkpoints)

    monkeypatch.setattr(Experiment, "fit", killed_in_round_1)
    with pytest.raises(KeyboardInterrupt):
        run_fast("seed=0", run_dir=tmp_path / "r")
    monkeypatch.setattr(Experiment, "fit", original_fit)

    def snapshot():
        return {p.relative_to(tmp_path): p.read_bytes() for p in sorted((tmp_path / "r").rglob("*"))
                if p.is_file() and not p.name.startswith(".lock")}

    before = snapshot()
    assert "seed: 0" in before[Path("r/config.yaml")].decode()
    with pytest.raises(ConfigError, match=r"config.yaml holds a run of another config \(seed: 0 -> 1\)"):
        run_fast("seed=1", run_dir=tmp_path / "r")
    assert snapshot() == before
    with pytest.raises(ConfigError, match=r"holds a run of another config \(pruning.ratio: 0.5 -> 0.3\)"):
        run_fast("seed=0", "pruning.ratio=0.3", run_dir=tmp_path / "r")
    assert snapshot() == before


def test_resume_repairs_a_cut_off_last_line_and_removes_stale_temp_files(run_fast):
    _, run_dir = run_fast("stop.max_rounds=1", "collapse.enabled=false")
    (run_dir / "summary.json").unlink()
    with open(run_dir / "rounds.jsonl", "a") as f:
        f.write('{"round": 2, "spars')
    stale = [run_dir / "checkpoints" / ".round_002.pt.k2j4h1", run_dir / ".rounds.jsonl.x8a7q"]
    for p in stale:
        p.write_bytes(b"half")
    run_fast("stop.max_rounds=1", "collapse.enabled=false", run_dir=run_dir)
    lines = (run_dir / "rounds.jsonl").read_text().splitlines()
    assert [json.loads(line)["round"] for line in lines] == [0, 1]
    assert not any(p.exists() for p in stale)


def test_resume_false_clears_every_output_of_the_previous_run(run_fast):
    _, run_dir = run_fast("stop.max_rounds=1")
    assert (run_dir / "collapsed.pt2").exists()
    # what an older run with other collapse settings shipped (ONNX, approximate and fine-tuned networks), its W&B
    # mirror and a temporary file its kill left
    older = ["collapse.json", "collapsed.onnx", "collapsed_approximate.pt2", "collapsed_approximate.onnx",
             "collapsed_finetuned.pt2", "collapsed_finetuned.onnx", "wandb/run-1/x", ".summary.json.k2j4"]
    for name in older:
        (run_dir / name).parent.mkdir(parents=True, exist_ok=True)
        (run_dir / name).write_text("{}")
    run_fast("stop.max_rounds=1", "collapse.enabled=false", "resume=false", run_dir=run_dir)
    assert not (run_dir / "collapsed.pt2").exists() and not any((run_dir / name).exists() for name in older)
    assert not (run_dir / "wandb").exists()
    assert read_summary(run_dir).status == "complete" and read_summary(run_dir).collapse is None


@pytest.mark.slow  # make test-all: over 5 s on 2 cores
def test_bf16_autocast_and_channels_last_run_on_cpu(run_fast):
    summary, run_dir = run_fast("hardware.precision=bf16", "hardware.channels_last=true", "stop.max_rounds=1",
                                "pruning=imp")
    records = read_rounds(run_dir)
    assert records[0].test_acc > 50.0 and records[1].sparsity > 0.2
    assert summary.device == "cpu"
    # collapse is verified in fp32: in fp32 the collapsed model scores what the kept one does (200 test
    # images: one image is 0.5 points), and the bf16 difference is reported as measured, not hidden
    section = summary.collapse
    assert section.precision == section.latency_precision == "bf16"
    assert abs(section.test_acc_fp32 - section.kept_test_acc_fp32) <= 0.5
    assert section.relative_diff <= 1e-4 < section.relative_diff_run_precision < 0.2
    # the fp32 number is the kept model's own fp32 accuracy, evaluated here independently of collapse
    from nepenthe.engine import evaluate
    from nepenthe.experiment import restore_run

    exp, record = restore_run(run_dir)
    loader = exp.data.loader("test", 256)
    fp32 = evaluate(exp.model, loader, device=exp.device, amp_dtype=None, channels_last=True)["acc"]
    assert fp32 == section.kept_test_acc_fp32 and record.test_acc == records[-1].test_acc


@pytest.mark.slow  # make test-all: over 5 s on 2 cores
def test_wandb_offline_mirrors_the_round_records(run_fast):
    pytest.importorskip("wandb")
    summary, run_dir = run_fast("logger=wandb", "logger.mode=offline", "stop.max_rounds=1")
    offline = list((run_dir / "wandb").glob("offline-run-*"))
    assert len(offline) == 1
    history = list(offline[0].glob("*.wandb"))
    assert history and history[0].stat().st_size > 0
    assert read_summary(run_dir).status == "complete"


@pytest.mark.slow  # make test-all: over 4 s on 2 cores
def test_the_collapse_command_recollapses_a_saved_run(run_fast, tmp_path, capsys):
    from nepenthe_cli.collapse import main

    summary, run_dir = run_fast("stop.max_rounds=2")
    out = tmp_path / "recollapsed"
    out.mkdir()
    (out / "collapsed.onnx").write_text("an older collapse's network")  # this one writes no ONNX (the run's setting)
    assert main([str(run_dir), "--merge", "never", "--out", str(out), "--verify-batch", "32"]) == 0
    assert sorted(p.name for p in out.glob("collapsed*")) == ["collapsed.pt2"]  # nothing older beside it
    report = CollapseResult.from_dict(json.loads((out / "collapse.json").read_text()))
    assert report.round == summary.kept_round == 2 and report.merge == "never"
    assert report.input_shape[0] == 32 and report.kept_test_acc == summary.kept.test_acc
    assert report.after == summary.collapse.after  # same checkpoint, same probe: same collapsed model
    assert report.test_acc == summary.collapse.test_acc
    model = torch.export.load(str(out / "collapsed.pt2")).module()
    assert model(torch.zeros(2, *report.input_shape[1:])).shape == (2, 10)
    assert main([str(run_dir), "--round", "7"]) == 2
    assert main([str(tmp_path / "nothing")]) == 2
    assert f"{tmp_path / 'nothing'} is not a run directory (no config.yaml)" in capsys.readouterr().err


def test_an_easier_run_swaps_one_activation_per_round_and_collapse_drops_them(run_fast, tmp_path):
    summary, run_dir = run_fast("pruning=easier", "stop.max_rounds=2", "finetune.epochs=null",
                                "finetune.total_epochs=2")
    records = read_rounds(run_dir)
    assert [len(r.replaced_by_identity) for r in records] == [0, 1, 2]
    assert all(r.pruned == 0 and r.sparsity == 0.0 for r in records)
    assert all(set(r.replaced_by_identity) <= set(r.zero_entropy_units) for r in records)
    assert [r.epochs for r in records[1:]] == [1, 1]
    # the first swap is the unit with the lowest dense entropy (EASIER: mean over all neurons, ON iff z >= 0)
    dense = records[0].entropy
    assert records[1].replaced_by_identity == [min(dense, key=dense.get)]
    assert [u for u in summary.collapse.units if u["unit"] in records[2].replaced_by_identity] == []
    dropped = {op["node"] for op in summary.collapse.operations if op["op"] == "drop_identity"}
    assert set(records[2].replaced_by_identity) <= dropped
    # a checkpoint reloads with its swaps: the restored model equals the run's model
    exp = Experiment(train.to_run_config(compose_config(list(SYNTHETIC) + FAST + ["pruning=easier"])))
    model = exp.load_round(load_checkpoint(RunDir(run_dir).checkpoint(2)))
    assert all(isinstance(model.get_submodule(n), torch.nn.Identity) for n in records[2].replaced_by_identity)


def test_collapse_can_be_switched_off_and_the_kept_model_is_still_costed(run_fast):
    summary, run_dir = run_fast("collapse.enabled=false", "stop.max_rounds=1")
    assert summary.collapse is None and summary.cost.collapsed is None
    assert summary.cost.kept.macs == summary.cost.dense.macs
    assert summary.cost.kept.macs_nonzero < summary.cost.dense.macs_nonzero
    assert not (run_dir / "collapsed.pt2").exists()


def test_building_a_run_changes_no_process_setting(tmp_path):
    """Seeds and threads are set by run_experiment and the fit step, never by building the run's parts."""
    torch.manual_seed(1234)
    expected = torch.rand(3)
    torch.manual_seed(1234)
    threads = torch.get_num_threads()
    cfg = train.to_run_config(compose_config(list(SYNTHETIC) + FAST + ["hardware.threads=1"]))
    Experiment(cfg).new_model()
    assert torch.equal(torch.rand(3), expected) and torch.get_num_threads() == threads


@pytest.mark.slow
@pytest.mark.timeout(600)
@pytest.mark.skipif(not DEBIAN_DIR.is_dir(), reason="needs Debian's dataset-fashion-mnist (make data)")
def test_fashion_mnist_subset_end_to_end(run_fast, tmp_path):
    prepare_fashion_mnist(tmp_path / "data")
    summary, run_dir = run_fast(
        "stop.max_rounds=2", "train.epochs=2", "train.batch_size=64",
        data=["dataset=fashion_mnist", f"dataset.root={tmp_path / 'data'}", "dataset.kwargs.train_subset=3000",
              "dataset.kwargs.val_size=1000", "dataset.kwargs.augment=[]"],
    )
    records, summary = check_run_directory(run_dir, rounds=2)
    assert records[0].val_acc > 45.0  # 2 epochs on 3k images reach ~60 %; chance is 10 %
    assert len(list(raw_dir(tmp_path / "data").iterdir())) == 4


@pytest.mark.slow
@pytest.mark.timeout(1200)
@pytest.mark.skipif(not DEBIAN_DIR.is_dir(), reason="needs Debian's dataset-fashion-mnist (make data)")
def test_quickstart_final_model_collapses_with_accuracy_unchanged(tmp_path):
    """The README's main job (about 4 minutes on 2 cores): its kept model loses layers, not accuracy."""
    prepare_fashion_mnist(tmp_path / "data")
    cfg = compose_config(["experiment=quickstart", "progress=false", "hardware=cpu", "hardware.threads=2",
                          f"dataset.root={tmp_path / 'data'}"])
    summary = train.execute(train.to_run_config(cfg), tmp_path / "run")
    section = summary.collapse
    assert summary.k >= 1
    assert abs(section.test_acc - summary.kept.test_acc) <= 0.1
    assert section.after.weight_layers_on_longest_path < section.before.weight_layers_on_longest_path
    assert section.after.macs < section.before.macs and section.removed_layers


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_a_paper_protocol_at_smoke_scale_runs_on_its_real_data_layout(tmp_path):
    from test_datasets import write_cifar

    write_cifar(tmp_path / "data", "cifar-10-batches-py", [f"data_batch_{i}" for i in range(1, 6)], ["test_batch"],
                b"labels", 10)
    cfg = compose_config(["protocol=cifar", "model=resnet18_cifar", "dataset=cifar10", "scale=smoke",
                          f"dataset.root={tmp_path / 'data'}",
                          "dataset.kwargs.train_subset=null", "dataset.kwargs.val_size=5", "progress=false"])
    run = train.to_run_config(cfg)
    assert (run.seed, run.model.name, run.train.optimizer, run.train.lr, run.train.epochs) == (
        43, "resnet18_cifar", "sgd", 0.1, 1)  # the published protocol, shrunk only where the smoke variant says
    summary = train.execute(run, tmp_path / "run")
    records = read_rounds(tmp_path / "run")
    assert [r.round for r in records] == [0, 1, 2]
    # two rounds of ratio 0.5 over the unit layers leave 25 % of them; shortcuts and the classifier stay dense
    assert 0.70 < records[2].sparsity < 0.75 and records[1].sparsity == pytest.approx(0.492, abs=0.01)
    assert summary.N == 17 and summary.collapse.input_shape[1:] == [3, 32, 32]
