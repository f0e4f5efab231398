"""nepenthe.rundir: one object names every file of a run directory, and clear() leaves nothing of an older run."""

import pytest

from nepenthe.rundir import RunDir


def test_every_path_of_a_run_directory_is_named_once(tmp_path):
    d = RunDir(tmp_path)
    assert d.config == tmp_path / "config.yaml" and d.rounds == tmp_path / "rounds.jsonl"
    assert d.summary == tmp_path / "summary.json" and d.collapse_report == tmp_path / "collapse.json"
    assert d.checkpoint(7) == tmp_path / "checkpoints" / "round_007.pt"
    assert d.in_round == tmp_path / "checkpoints" / "in_round.pt"
    assert d.network("approximate", ".onnx") == tmp_path / "collapsed_approximate.onnx"
    assert [p.name for p in d.networks()] == [
        "collapsed.pt2", "collapsed.onnx", "collapsed_approximate.pt2", "collapsed_approximate.onnx",
        "collapsed_finetuned.pt2", "collapsed_finetuned.onnx"]
    with pytest.raises(ValueError, match=r"no shipped network 'healed'.pt2; roles: collapsed, approximate"):
        d.network("healed")


def test_clear_removes_every_output_and_temp_file_but_keeps_config_lock_and_foreign_files(tmp_path):
    d = RunDir(tmp_path)
    outputs = [d.rounds, d.summary, d.collapse_report, d.status, d.error, *d.networks(), d.checkpoint(0), d.in_round,
               d.wandb / "offline-run-1" / "run.wandb"]
    temps = [tmp_path / ".rounds.jsonl.a1b2", tmp_path / ".collapsed.onnx.x9.onnx",
             d.checkpoints / ".round_012.pt.zz", d.checkpoints / ".in_round.pt.q"]
    kept = [d.config, d.lock, d.lock_holder, tmp_path / "notes.txt", tmp_path / ".hydra" / "overrides.yaml"]
    for p in outputs + temps + kept:
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text("x")
    assert d.temp_files() == sorted(temps)
    d.clear()
    assert sorted(p for p in tmp_path.rglob("*") if p.is_file()) == sorted(kept)
    assert not d.checkpoints.exists() and not d.wandb.exists()
