"""nepenthe.tracking: records read back typed (a cut-off last line skipped, a broken one named), and a W&B mirror
that never stops a run."""

import json
import time

import pytest

from nepenthe.errors import NepentheError
from nepenthe.records import RoundRecord
from nepenthe.tracking import RunRecorder, read_rounds, read_summary


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


@pytest.mark.slow  # make test-all: over 4 s on 2 cores
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
