"""Issue 15: a run never destroys what it did not create, and its write paths never lose or mix records."""

import errno
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from torch import nn

import train
from conftest import FAST, ROOT, SYNTHETIC, compose_config
from nepenthe import tracking
from nepenthe.checkpoint import checkpoint_path, load_checkpoint, save_checkpoint
from nepenthe.errors import ConfigError, DataError, NepentheError, StorageError
from nepenthe.rundir import Preexisting, remove_unused_run_dir
from nepenthe.tracking import RunRecorder, append_line, atomic_write_text, read_rounds, read_summary


def run_train(*overrides, cwd=ROOT, timeout=120):
    env = {k: v for k, v in os.environ.items() if k != "NEPENTHE_PREEXISTING"}
    return subprocess.run([sys.executable, str(ROOT / "train.py"), *overrides], cwd=cwd, capture_output=True,
                          text=True, timeout=timeout, env=env)


# 1. Data loss -------------------------------------------------------------------------------------------------------

def test_a_refused_config_leaves_an_existing_folder_and_its_files_intact(tmp_path):
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "marker.txt").write_text("precious")
    result = run_train(f"hydra.run.dir={folder}", "pruning.ratio=1.5", "progress=false")
    assert result.returncode == 2
    assert "pruning.ratio=1.5 must lie strictly between 0 and 1" in result.stderr
    assert sorted(p.name for p in folder.iterdir()) == ["marker.txt"]  # Hydra's .hydra/ (ours) went, the rest stays
    assert (folder / "marker.txt").read_text() == "precious"


def test_run_dir_dot_in_a_checkout_keeps_every_file(tmp_path):
    (tmp_path / ".git").mkdir()
    (tmp_path / ".git" / "HEAD").write_text("ref: refs/heads/main\n")
    (tmp_path / "notes.md").write_text("mine")
    result = run_train("hydra.run.dir=.", "seed=abc", cwd=tmp_path)
    assert result.returncode == 2 and "seed: Value 'abc'" in result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == [".git", "notes.md"]
    assert (tmp_path / ".git" / "HEAD").read_text() == "ref: refs/heads/main\n"


def test_a_refused_config_removes_only_the_folders_it_created(tmp_path):
    (tmp_path / "other_run").mkdir()
    result = run_train(f"output_root={tmp_path}", "train.epochs=-1", "progress=false")
    assert result.returncode == 2 and "train.epochs=-1 must be >= 0" in result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["other_run"]  # runs/<name>/<id>/ created and removed


def test_preexisting_snapshot_decides_by_what_existed(tmp_path):
    (tmp_path / "old").mkdir()
    snap = Preexisting.snapshot(tmp_path / "new" / "deeper")
    assert snap.anchor == str(tmp_path) and snap.names == ("old",)
    assert snap.is_new(tmp_path / "new") and snap.is_new(tmp_path / "new" / "deeper")
    assert not snap.is_new(tmp_path) and not snap.is_new(tmp_path / "old") and not snap.is_new(tmp_path / "old" / "x")
    assert not Preexisting(str(tmp_path), None).is_new(tmp_path / "new")  # unknown listing: nothing is new
    run_dir = tmp_path / "new" / "deeper"
    (run_dir / ".hydra").mkdir(parents=True)
    (run_dir / ".hydra" / "config.yaml").write_text("x")
    (run_dir / "user_file").write_text("y")  # something not ours appeared: its folder must stay
    removed = remove_unused_run_dir(run_dir, snap)
    assert run_dir / ".hydra" in removed and (run_dir / "user_file").exists()
    assert remove_unused_run_dir(run_dir, None) == []


# 2. Short writes ------------------------------------------------------------------------------------------------------

def test_append_continues_short_writes(tmp_path, monkeypatch):
    real_write = os.write
    monkeypatch.setattr(tracking.os, "write", lambda fd, data: real_write(fd, data[:3]))  # 3 bytes per call
    append_line(tmp_path / "r.jsonl", json.dumps({"round": 0, "val_acc": 91.5}) + "\n")
    assert read_rounds(tmp_path) == [] and (tmp_path / "r.jsonl").read_text() == '{"round": 0, "val_acc": 91.5}\n'


def test_disk_full_during_an_append_leaves_whole_lines_and_names_the_path(tmp_path, monkeypatch):
    path = tmp_path / "rounds.jsonl"
    append_line(path, '{"round": 0}\n')
    real_write = os.write
    calls = []

    def fills_up(fd, data):
        calls.append(len(data))
        if len(calls) == 1:
            return real_write(fd, data[:5])  # half a line reaches the disk, then it is full
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(tracking.os, "write", fills_up)
    with pytest.raises(StorageError) as info:
        append_line(path, '{"round": 1, "val_acc": 90.0}\n')
    assert str(info.value) == f"could not append to {path}: [Errno 28] No space left on device"
    assert path.read_text() == '{"round": 0}\n'  # cut back to the last whole line


def test_atomic_write_failure_keeps_the_old_file_and_no_temp(tmp_path, monkeypatch):
    path = tmp_path / "summary.json"
    atomic_write_text(path, "old")
    monkeypatch.setattr(tracking.os, "fsync", lambda fd: (_ for _ in ()).throw(OSError(errno.EIO, "Input/output error")))
    with pytest.raises(StorageError, match=r"could not write .*summary.json: \[Errno 5\] Input/output error"):
        atomic_write_text(path, "new")
    assert path.read_text() == "old" and sorted(p.name for p in tmp_path.iterdir()) == ["summary.json"]


def test_a_cut_off_last_line_is_skipped_with_a_warning_and_a_broken_middle_line_is_named(tmp_path):
    (tmp_path / "rounds.jsonl").write_text('{"round": 0}\n{"round": 1}\n{"round": 2, "val')
    with pytest.warns(UserWarning, match=r"rounds.jsonl: line 3 is cut off"):
        assert [r["round"] for r in read_rounds(tmp_path)] == [0, 1]
    (tmp_path / "rounds.jsonl").write_text('{"round": 0}\n{"rou\n{"round": 2}\n')
    with pytest.raises(NepentheError, match=r"rounds.jsonl: line 2 is not valid JSON"):
        read_rounds(tmp_path)


def test_analysis_collect_skips_a_cut_off_line(run_fast):
    from analysis.collect import local_runs

    _, run_dir = run_fast("stop.max_rounds=1", "collapse.enabled=false")
    with open(run_dir / "rounds.jsonl", "a") as f:
        f.write('{"round": 2, "spars')
    with pytest.warns(UserWarning, match="line 3 is cut off"):
        rows = local_runs([run_dir])
    assert sorted(r["round"] for r in rows) == [0, 1]


def test_resume_repairs_a_cut_off_last_line(run_fast, tmp_path):
    _, run_dir = run_fast("stop.max_rounds=1", "collapse.enabled=false")
    (run_dir / "summary.json").unlink()
    with open(run_dir / "rounds.jsonl", "a") as f:
        f.write('{"round": 2, "spars')
    run_fast("stop.max_rounds=1", "collapse.enabled=false", run_dir=run_dir)
    lines = (run_dir / "rounds.jsonl").read_text().splitlines()
    assert [json.loads(line)["round"] for line in lines] == [0, 1]


# 3. W&B online without a key or network ------------------------------------------------------------------------------

def test_wandb_online_without_a_key_warns_once_and_keeps_the_run_going_offline(run_fast, monkeypatch, tmp_path):
    pytest.importorskip("wandb")
    for var in ("WANDB_API_KEY", "WANDB_MODE", "WANDB_BASE_URL"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))  # no ~/.netrc key either
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(tmp_path / "home"))
    started = time.perf_counter()
    with pytest.warns(UserWarning, match=r"W&B online could not start .*mirroring offline") as caught:
        summary, run_dir = run_fast("logger=wandb", "logger.mode=online", "stop.max_rounds=1", "collapse.enabled=false")
    assert time.perf_counter() - started < 120
    assert sum("W&B" in str(w.message) for w in caught) == 1
    assert summary["status"] == "complete" and [r["round"] for r in read_rounds(run_dir)] == [0, 1]
    assert len(list((run_dir / "wandb").glob("offline-run-*"))) == 1


def test_a_wandb_failure_mid_run_turns_the_mirror_off_and_keeps_records(tmp_path):
    class Broken:
        def log(self, *a, **k):
            raise ConnectionError("socket closed")

    recorder = RunRecorder(tmp_path, wandb_settings={"mode": "offline"})
    recorder._wandb_run = Broken()
    with pytest.warns(UserWarning, match="W&B mirror failed .*socket closed.*local records kept"):
        recorder.round({"round": 0, "val_acc": 90.0})
    recorder.round({"round": 1, "val_acc": 89.0})  # no second warning, no error
    assert [r["round"] for r in read_rounds(tmp_path)] == [0, 1]


# 4. Checkpoints --------------------------------------------------------------------------------------------------------

def small_model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 64, 3), nn.ReLU(), nn.Conv2d(64, 64, 3))


def test_a_checkpoint_with_4kb_zeroed_inside_a_weight_is_refused_naming_the_fallback(tmp_path):
    model = small_model()
    save_checkpoint(tmp_path, 0, model, {"records": [{"round": 0}], "config": {}})
    path = save_checkpoint(tmp_path, 1, model, {"records": [{"round": 0}, {"round": 1}], "config": {}})
    data = bytearray(path.read_bytes())
    start = data.find(model[2].weight.detach().numpy().tobytes()[:64])
    assert start > 0
    size = len(data)
    data[start + 1024:start + 1024 + 4096] = bytes(4096)
    path.write_bytes(bytes(data))
    assert path.stat().st_size == size  # right size, still unpickles: only the hash tells
    with pytest.raises(NepentheError) as info:
        load_checkpoint(path)
    assert str(info.value) == (f"checkpoint {path} is corrupt (its content does not match its SHA-256); delete it and "
                               f"re-run the command to resume from round_000.pt (the round before)")
    assert load_checkpoint(checkpoint_path(tmp_path, 0))["round"] == 0


def test_stale_temp_files_are_removed_when_a_run_starts(run_fast, tmp_path):
    _, run_dir = run_fast("stop.max_rounds=1", "collapse.enabled=false")
    (run_dir / "summary.json").unlink()
    stale = [run_dir / "checkpoints" / ".round_002.pt.k2j4h1", run_dir / ".rounds.jsonl.x8a7q"]
    for p in stale:
        p.write_bytes(b"half")
    run_fast("stop.max_rounds=1", "collapse.enabled=false", run_dir=run_dir)
    assert not any(p.exists() for p in stale)


# 5. Errors that name their key or file --------------------------------------------------------------------------------

@pytest.mark.parametrize("override,message", [
    ("pruning.ratio=abc", "pruning.ratio: Value 'abc' of type 'str' could not be converted to Float"),
    ("seed=abc", "seed: Value 'abc' of type 'str' could not be converted to Integer"),
    ("entropy.max_batches=0", "entropy.max_batches=0 must be > 0"),
])
def test_type_and_range_errors_name_the_key(override, message):
    with pytest.raises(ConfigError) as info:
        train.to_run_config(compose_config([override]))
    assert str(info.value) == message


def test_a_truncated_summary_names_the_file_and_the_fix(tmp_path):
    (tmp_path / "summary.json").write_text('{"status": "comp')
    with pytest.raises(NepentheError) as info:
        read_summary(tmp_path)
    assert str(info.value).startswith(f"{tmp_path / 'summary.json'} is not valid JSON (")
    assert str(info.value).endswith("delete it and re-run the run's command to write it again from the checkpoints")


def test_fashion_mnist_labels_out_of_range_are_refused_before_training(tmp_path):
    from nepenthe.data import create_data
    from test_data import write_idx_gz  # the same writer of the real IDX format as the layout tests

    write_idx_gz(tmp_path / "debian", test_labels=[0, 1, 12, 3])
    with pytest.raises(DataError, match=r"t10k-labels-idx1-ubyte holds label 12 at index 2; Fashion-MNIST labels "
                                        r"are 0\.\.9"):
        create_data("fashion_mnist", str(tmp_path / "root"), source_dir=str(tmp_path / "debian"), val_size=6)


def test_ctrl_c_ends_with_one_line_on_how_to_resume(tmp_path):
    command = [sys.executable, str(ROOT / "train.py"), *SYNTHETIC, *FAST, "train.epochs=50", f"output_root={tmp_path}"]
    proc = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    banner = [proc.stdout.readline() for _ in range(3)]  # what runs, then the table header: training now
    assert banner[0].startswith("compact_cnn: ") and banner[2].startswith("run directory: ")
    assert proc.stdout.readline().startswith("units:")
    time.sleep(1.0)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130
    lines = [line for line in err.splitlines() if line.strip()]  # the CUDA_HOME warning is silenced too
    assert len(lines) == 1 and lines[0].startswith("interrupted; run the same command again to resume")


def test_resume_false_clears_every_output_of_the_previous_run(run_fast):
    _, run_dir = run_fast("stop.max_rounds=1")
    assert (run_dir / "collapsed.pt2").exists()
    (run_dir / "collapse.json").write_text("{}")
    run_fast("stop.max_rounds=1", "collapse.enabled=false", "resume=false", run_dir=run_dir)
    assert not (run_dir / "collapsed.pt2").exists() and not (run_dir / "collapse.json").exists()
    assert read_summary(run_dir)["status"] == "complete" and "collapse" not in read_summary(run_dir)


def test_the_nan_hint_suggests_fp32_only_to_bf16_runs():
    from nepenthe.engine import _precision_hint

    assert _precision_hint(None) == "" and _precision_hint(torch.bfloat16) == " or use hardware.precision=fp32"
