"""Bad input through the real command line: a non-zero exit, one message naming the key or the file, and nothing left
behind. The README's reliability table lists these cases."""

import re
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import FAST, ROOT, SYNTHETIC

DATA = ROOT / "data" / "FashionMNIST" / "raw"

# (case, overrides, message that must appear, exit code): Hydra's own errors for unknown options and keys exit 1
CONFIG_CASES = [
    ("unknown model", ["model=resnet99"], r"Could not find 'model/resnet99'", 1),
    ("unknown pruning group option", ["pruning=magic"], r"Could not find 'pruning/magic'", 1),
    ("unknown top-level key", ["foo=1"], r"Could not override 'foo'", 1),
    ("unknown nested key", ["train.lrr=0.1"], r"Could not override 'train.lrr'", 1),
    ("ratio above 1", ["pruning.ratio=1.5"], r"error: pruning.ratio=1.5 must lie strictly between 0 and 1", 2),
    ("ratio zero", ["pruning.ratio=0"], r"error: pruning.ratio=0.0 must lie strictly between 0 and 1", 2),
    ("ratio not a number", ["pruning.ratio=abc"], r"error: pruning.ratio: Value 'abc' of type 'str' could not be "
     r"converted to Float", 2),
    ("seed not an integer", ["seed=abc"], r"error: seed: Value 'abc' of type 'str' could not be converted to Integer", 2),
    ("negative epochs", ["train.epochs=-1"], r"error: train.epochs=-1 must be >= 0", 2),
    ("zero batch size", ["train.batch_size=0"], r"error: train.batch_size=0 must be > 0", 2),
    ("negative learning rate", ["train.lr=-0.1"], r"error: train.lr=-0.1 must be > 0", 2),
    ("unknown device", ["hardware.device=tpu"], r"error: hardware.device='tpu'", 2),
    ("unknown precision", ["hardware.precision=fp8"], r"error: hardware.precision='fp8'", 2),
    ("unknown entropy option", ["entropy.zero_state=maybe"], r"error: entropy.zero_state='maybe'", 2),
    ("unknown merge", ["collapse.merge=sometimes"], r"error: collapse.merge='sometimes'", 2),
    ("tolerance not relative", ["collapse.tolerance=2"], r"error: collapse.tolerance=2.0 must be < 1", 2),
    ("zero probe batches", ["entropy.max_batches=0"], r"error: entropy.max_batches=0 must be > 0", 2),
    ("negative rounds", ["stop.max_rounds=-1"], r"error: stop.max_rounds=-1 must be >= 0", 2),
    ("cuda without a GPU", ["hardware=cuda"], r"error: hardware.device='cuda' but no CUDA device is visible", 2),
    ("missing dataset files", ["dataset=cifar10", "dataset.root={tmp}/nowhere"], r"error: .*nowhere", 2),
]


def run(tmp_path: Path, overrides: list[str], base=None) -> subprocess.CompletedProcess:
    base = SYNTHETIC + FAST if base is None else base
    command = [sys.executable, str(ROOT / "train.py"), *base, *overrides, f"output_root={tmp_path / 'out'}"]
    return subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=300)


def last_line(done: subprocess.CompletedProcess) -> str:
    return [line for line in done.stderr.splitlines() if line.strip()][-1]


def run_in_process(tmp_path: Path, overrides: list[str], capsys, monkeypatch, base) -> tuple[int, str]:
    """``python train.py OVERRIDES`` without a new interpreter: the exit code and stderr (Hydra's main as-is)."""
    import train
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    monkeypatch.chdir(tmp_path)
    # imported (not run as __main__), Hydra would look for a ``conf`` package: name the folder
    monkeypatch.setattr(sys, "argv", ["train.py", "--config-path", str(ROOT / "conf"), *base, *overrides,
                                      f"output_root={tmp_path / 'out'}"])
    capsys.readouterr()
    try:
        train.main()
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    finally:
        GlobalHydra.instance().clear()
    return code, capsys.readouterr().err


@pytest.mark.parametrize("case,overrides,message,code", CONFIG_CASES, ids=[c[0] for c in CONFIG_CASES])
def test_bad_configuration_is_refused_with_one_message_and_leaves_nothing(tmp_path, capsys, monkeypatch, case,
                                                                          overrides, message, code):
    base = FAST if any(o.startswith("dataset=") for o in overrides) else SYNTHETIC + FAST  # real data: no sizes
    got, err = run_in_process(tmp_path, [o.replace("{tmp}", str(tmp_path)) for o in overrides], capsys, monkeypatch,
                              base)
    assert got == code, err[-2000:]
    lines = [line for line in err.splitlines() if line.strip()]
    assert re.search(message, err if code == 1 else lines[-1]), err
    if code == 2:  # nepenthe's own errors: one line, no traceback
        assert len(lines) == 1 and "Traceback" not in err
    assert not (tmp_path / "out").exists()  # no run directory, no empty folders


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


def test_a_corrupted_checkpoint_and_a_corrupted_record_file_are_named(tmp_path):
    run_dir = completed_run(tmp_path)
    ckpt = run_dir / "checkpoints" / "round_002.pt"
    data = bytearray(ckpt.read_bytes())
    data[len(data) // 2: len(data) // 2 + 4096] = bytes(4096)  # same size, still unpickles
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


def test_a_nan_loss_stops_the_run_with_the_fix(tmp_path, capsys, monkeypatch):
    code, err = run_in_process(tmp_path, ["train.lr=1e12", "train.epochs=1"], capsys, monkeypatch, SYNTHETIC + FAST)
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1, err
    assert re.fullmatch(r"error: (dense|round \d+) .*(loss became nan at step \d+|mean loss is nan); lower train.lr.*",
                        lines[0]), lines[0]
    assert not list((tmp_path / "out").rglob("summary.json"))  # never reported as complete; completed rounds stay


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
