"""nepenthe.atomic: a record is written whole or not at all, and a failed write names the path and the errno."""

import errno
import json
import os

import pytest

from nepenthe import atomic
from nepenthe.atomic import append_line, atomic_write_text
from nepenthe.errors import StorageError
from nepenthe.tracking import read_rounds


def test_append_continues_short_writes(tmp_path, monkeypatch):
    real_write = os.write
    monkeypatch.setattr(atomic.os, "write", lambda fd, data: real_write(fd, data[:3]))  # 3 bytes per call
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

    monkeypatch.setattr(atomic.os, "write", fills_up)
    with pytest.raises(StorageError) as info:
        append_line(path, '{"round": 1, "val_acc": 90.0}\n')
    assert str(info.value) == f"could not append to {path}: [Errno 28] No space left on device"
    assert path.read_text() == '{"round": 0}\n'  # cut back to the last whole line


def test_atomic_write_failure_keeps_the_old_file_and_no_temp(tmp_path, monkeypatch):
    path = tmp_path / "summary.json"
    atomic_write_text(path, "old")
    monkeypatch.setattr(atomic.os, "fsync", lambda fd: (_ for _ in ()).throw(OSError(errno.EIO, "Input/output error")))
    with pytest.raises(StorageError, match=r"could not write .*summary.json: \[Errno 5\] Input/output error"):
        atomic_write_text(path, "new")
    assert path.read_text() == "old" and sorted(p.name for p in tmp_path.iterdir()) == ["summary.json"]
