"""train.py through real interpreters: exit codes, one line per refusal, Ctrl-C, damaged files on disk, and what a
refused run may remove. (The same refusals in-process, as a table: tests/test_cli.py.)"""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import FAST, ROOT, SYNTHETIC

pytestmark = pytest.mark.e2e  # subprocesses: in make test-all
DATA = ROOT / "data" / "FashionMNIST" / "raw"


def run_train(*overrides, cwd=ROOT, timeout=120):
    env = {k: v for k, v in os.environ.items() if k != "NEPENTHE_PREEXISTING"}
    return subprocess.run([sys.executable, str(ROOT / "train.py"), *overrides], cwd=cwd, capture_output=True,
                          text=True, timeout=timeout, env=env)


def run(tmp_path: Path, overrides: list[str], base=None) -> subprocess.CompletedProcess:
    base = SYNTHETIC + FAST if base is None else base
    command = [sys.executable, str(ROOT / "train.py"), *base, *overrides, f"output_root={tmp_path / 'out'}"]
    return subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=300)


def last_line(done: subprocess.CompletedProcess) -> str:
    return [line for line in done.stderr.splitlines() if line.strip()][-1]


def test_the_command_line_exit_codes_are_real(tmp_path):
    """The same refusal through a real interpreter: exit 2 and the one line (the table above runs in-process)."""
    done = run(tmp_path, ["pruning.ratio=1.5"])
    assert done.returncode == 2 and last_line(done) == "error: pruning.ratio=1.5 must lie strictly between 0 and 1 (e.g. 0.5)"
    assert not (tmp_path / "out").exists()


@pytest.mark.skipif(not DATA.is_dir(), reason="needs Fashion-MNIST in data/ (make install)")
def test_a_truncated_data_file_is_named(tmp_path):
    raw = tmp_path / "fm" / "FashionMNIST" / "raw"
    raw.mkdir(parents=True)
    for f in DATA.iterdir():
        if f.name.endswith("ubyte"):
            (raw / f.name).symlink_to(f)
    truncated = raw / "t10k-labels-idx1-ubyte"
    truncated.unlink()
    truncated.write_bytes((DATA / truncated.name).read_bytes()[:5000])
    done = run(tmp_path, ["dataset=fashion_mnist", f"dataset.root={tmp_path / 'fm'}"], base=FAST)
    assert done.returncode == 2
    assert last_line(done).startswith(f"error: {truncated} is corrupt: its IDX header")
    assert not (tmp_path / "out").exists()


def completed_run(tmp_path: Path) -> Path:
    done = run(tmp_path, ["stop.max_rounds=2"])
    assert done.returncode == 0, done.stderr[-2000:]
    (run_dir,) = [p.parent for p in (tmp_path / "out").glob("*/*/summary.json")]
    (run_dir / "summary.json").unlink()  # as if killed before the summary: the next start resumes
    return run_dir


def snapshot(folder: Path) -> dict:
    return {p: p.stat().st_size for p in folder.rglob("*") if p.is_file() and ".lock" not in p.name}


def largest_tensor_payload(path) -> int:
    """Where the bytes of the checkpoint's largest tensor start (torch.save writes an uncompressed zip; its readers
    check no CRC, so damage there unpickles and only the content hash can tell), past the zip's headers wherever the
    records' size puts them."""
    import struct
    import zipfile

    with zipfile.ZipFile(path) as archive:
        entry = max(archive.infolist(), key=lambda info: info.file_size)
    assert entry.file_size > 8192 and entry.compress_type == zipfile.ZIP_STORED
    raw = path.read_bytes()
    name_length, extra_length = struct.unpack("<HH", raw[entry.header_offset + 26: entry.header_offset + 30])
    return entry.header_offset + 30 + name_length + extra_length + entry.file_size // 2 - 2048


def test_a_corrupted_checkpoint_and_a_corrupted_record_file_are_named(tmp_path):
    run_dir = completed_run(tmp_path)
    ckpt = run_dir / "checkpoints" / "round_002.pt"
    data = bytearray(ckpt.read_bytes())
    start = largest_tensor_payload(ckpt)
    data[start: start + 4096] = bytes(4096)  # inside one tensor's bytes: same size, still unpickles
    ckpt.write_bytes(bytes(data))
    before = snapshot(run_dir)
    done = run(tmp_path, ["stop.max_rounds=2"])
    assert done.returncode == 2
    assert last_line(done) == (f"error: checkpoint {ckpt} is corrupt (its content does not match its SHA-256); "
                               f"delete it and re-run the command to resume from round_001.pt (the round before)")
    assert snapshot(run_dir) == before  # nothing written, nothing removed

    ckpt.unlink()
    rounds = run_dir / "rounds.jsonl"
    lines = rounds.read_text().splitlines()
    rounds.write_text("\n".join([lines[0], lines[1][:40], *lines[2:]]) + "\n")  # a broken line in the middle
    done = run(tmp_path, ["stop.max_rounds=2"])
    assert done.returncode == 0, done.stderr[-2000:]  # records are rebuilt from the checkpoint on resume
    assert len(rounds.read_text().splitlines()) == 3


def test_a_sweep_refused_before_its_jobs_leaves_nothing_and_never_touches_what_was_there(tmp_path):
    command = [sys.executable, str(ROOT / "train.py"), "-m", "model=resnet99,compact_cnn"]
    done = subprocess.run([*command, f"output_root={tmp_path / 'out'}"], cwd=tmp_path, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 1 and "Could not find 'model/resnet99'" in done.stderr
    assert not (tmp_path / "out").exists()  # not even Hydra's multirun.yaml
    (tmp_path / "mine" / "run").mkdir(parents=True)
    (tmp_path / "mine" / "run" / "multirun.yaml").write_text("a file of yours\n")
    done = subprocess.run([*command, f"output_root={tmp_path / 'mine'}"], cwd=tmp_path, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 1 and (tmp_path / "mine" / "run").is_dir()  # existed before: never removed


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
    result = run_train("hydra.run.dir=.", "pruning.ratio=1.5", cwd=tmp_path)
    assert result.returncode == 2 and "pruning.ratio=1.5 must lie strictly between 0 and 1" in result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == [".git", "notes.md"]
    assert (tmp_path / ".git" / "HEAD").read_text() == "ref: refs/heads/main\n"


def test_a_refused_config_removes_only_the_folders_it_created(tmp_path):
    (tmp_path / "other_run").mkdir()
    result = run_train(f"output_root={tmp_path}", "train.epochs=-1", "progress=false")
    assert result.returncode == 2 and "train.epochs=-1 must be >= 0" in result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["other_run"]  # runs/<name>/<id>/ created and removed


def test_ctrl_c_ends_with_one_line_on_how_to_resume(tmp_path):
    command = [sys.executable, str(ROOT / "train.py"), *SYNTHETIC, *FAST, "train.epochs=50", f"output_root={tmp_path}"]
    # a shell's background job inherits SIGINT as ignored: the child restores the default, so that this test does
    # not depend on how the suite was started (make test &)
    proc = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    banner = [proc.stdout.readline() for _ in range(3)]  # what runs, then the table header: training now
    assert banner[0].startswith("compact_cnn: ") and banner[2].startswith("run directory: ")
    assert proc.stdout.readline().startswith("units:")
    time.sleep(1.0)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130
    lines = [line for line in err.splitlines() if line.strip()]  # the CUDA_HOME warning is silenced too
    assert len(lines) == 1 and lines[0].startswith("interrupted; run the same command again to resume")


def test_a_missing_data_root_fails_cleanly_and_leaves_no_run_directory(tmp_path):
    result = run_train(f"output_root={tmp_path}", f"dataset.root={tmp_path / 'nodata'}",
                       "+dataset.kwargs.source_dir=/nonexistent", "progress=false")
    assert result.returncode == 2
    assert "error: Fashion-MNIST not found in" in result.stderr
    assert "apt-get install -y dataset-fashion-mnist" in result.stderr
    assert not any((tmp_path / "run").glob("*")), "a failed run must not leave a directory behind"
