"""nepenthe.tracking: records written whole or not at all, read back typed, and a W&B mirror that never stops a
run."""

import errno
import json
import os
import time

import pytest

from nepenthe import tracking
from nepenthe.errors import NepentheError, StorageError
from nepenthe.records import RoundRecord
from nepenthe.tracking import RunRecorder, append_line, atomic_write_text, read_rounds, read_summary


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
        assert [r.round for r in read_rounds(tmp_path)] == [0, 1]
    (tmp_path / "rounds.jsonl").write_text('{"round": 0}\n{"rou\n{"round": 2}\n')
    with pytest.raises(NepentheError, match=r"rounds.jsonl: line 2 is not valid JSON"):
        read_rounds(tmp_path)


def test_a_truncated_summary_names_the_file_and_the_fix(tmp_path):
    (tmp_path / "summary.json").write_text('{"status": "comp')
    with pytest.raises(NepentheError) as info:
        read_summary(tmp_path)
    assert str(info.value).startswith(f"{tmp_path / 'summary.json'} is not valid JSON (")
    assert str(info.value).endswith("delete it and re-run the run's command to write it again from the checkpoints")


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
    assert summary.status == "complete" and [r.round for r in read_rounds(run_dir)] == [0, 1]
    assert len(list((run_dir / "wandb").glob("offline-run-*"))) == 1


def test_a_wandb_failure_mid_run_turns_the_mirror_off_and_keeps_records(tmp_path):
    class Broken:
        def log(self, *a, **k):
            raise ConnectionError("socket closed")

    recorder = RunRecorder(tmp_path, wandb_settings={"mode": "offline"})
    recorder._wandb_run = Broken()
    with pytest.warns(UserWarning, match="W&B mirror failed .*socket closed.*local records kept"):
        recorder.round(RoundRecord(round=0, val_acc=90.0))
    recorder.round(RoundRecord(round=1, val_acc=89.0))  # no second warning, no error
    assert [r.round for r in read_rounds(tmp_path)] == [0, 1]


def test_a_line_that_does_not_match_the_record_schema_is_named(tmp_path):
    (tmp_path / "rounds.jsonl").write_text('{"round": 0, "val_acc": 1.0}\n{"schema": 2, "round": 1, "val_acuracy": 2.0}\n')
    with pytest.raises(NepentheError, match=r"rounds.jsonl: line 2: RoundRecord has unknown key\(s\) val_acuracy"):
        read_rounds(tmp_path)
