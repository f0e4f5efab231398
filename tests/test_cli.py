"""train.py, the Hydra shim, run in-process: every bad input is one line naming the key or file, with the exit code
and nothing left behind (docs/errors.md's table); the start banner; which folders a refused run may remove.
The same through real interpreters (exit codes, Ctrl-C, damaged files): tests/e2e/test_cli_process.py."""

import re
import sys
from pathlib import Path

import pytest

import train
from conftest import FAST, ROOT, SYNTHETIC, compose_config
from nepenthe_cli.rundir import Preexisting, remove_unused_run_dir

CONFIG_CASES = [
    ("unknown model", ["model=resnet99"], r"Could not find 'model/resnet99'", 1),
    ("unknown pruning group option", ["pruning=magic"], r"Could not find 'pruning/magic'", 1),
    ("unknown top-level key", ["foo=1"], r"Could not override 'foo'", 1),
    ("unknown nested key", ["train.lrr=0.1"], r"Could not override 'train.lrr'", 1),
    ("ratio above 1", ["pruning.ratio=1.5"], r"error: pruning.ratio=1.5 must lie strictly between 0 and 1", 2),
    ("ratio zero", ["pruning.ratio=0"], r"error: pruning.ratio=0.0 must lie strictly between 0 and 1", 2),
    # a value of the wrong type is Hydra's to refuse while it composes (the schema is RunConfig)
    ("ratio not a number", ["pruning.ratio=abc"], r"Error merging override pruning.ratio=abc\nValue 'abc' of type "
     r"'str' could not be converted to Float", 1),
    ("seed not an integer", ["seed=abc"], r"Error merging override seed=abc\nValue 'abc' of type 'str' could not be "
     r"converted to Integer", 1),
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
    ("unknown model name", ["model.name=resnet1000"], r"error: unknown model 'resnet1000'; known: compact_cnn, "
     r"mobilenetv2_cifar, mobilenetv2_imagenet, resnet18_cifar, resnet18_imagenet, swin_t, timm, vgg16_bn", 2),
    ("unknown method name", ["pruning.method=magic"], r"error: unknown pruning method 'magic'; known: easier, egp", 2),
    ("epochs not a number", ["train.epochs=many"], r"Error merging override train.epochs=many\nValue 'many' of type "
     r"'str' could not be converted to Integer", 1),
    ("ratio of a method without one", ["pruning=lacoot", "pruning.ratio=0.3"], r"error: pruning.ratio=0.3 does not "
     r"apply to lacoot, which prunes by no ratio; leave it at 0.5", 2),
    ("unknown protocol", ["protocol=imagenet21k"], r"Could not find 'protocol/imagenet21k'", 1),
    ("a method option of another method", ["pruning.lambda_reg=3"], r"error: pruning.lambda_reg=3.0 applies to "
     r"lacoot only; pruning.method='nepenthe' has no such option", 2),
    ("lacoot negative lambda", ["pruning=lacoot", "pruning.lambda_reg=-1"], r"error: pruning.lambda_reg=-1.0 must "
     r"be >= 0", 2),
    ("lacoot unknown order", ["pruning=lacoot", "pruning.order=random"], r"error: pruning.order='random' is not "
     r"valid; choose one of by_val_mswd, deepest_first", 2),
    ("lacoot unit not in the model", ["pruning=lacoot", "pruning.units=[layers.9.9]"], r"error: LaCoOT unit "
     r"'layers.9.9' is not a module of ResidualCNN", 2),
]


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


# make test runs one case of each kind (a Hydra refusal, a range, a choice, a type, missing data, a method's option);
# make test-all runs them all (each starts train.py's Hydra entry point: about half a second)
QUICK_CASES = {"unknown model", "unknown nested key", "ratio above 1", "ratio not a number", "unknown entropy option",
               "missing dataset files", "a method option of another method", "ratio of a method without one"}


@pytest.mark.parametrize("case,overrides,message,code", [
    pytest.param(*c, id=c[0], marks=() if c[0] in QUICK_CASES else pytest.mark.slow) for c in CONFIG_CASES])
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


def test_a_nan_loss_stops_the_run_with_the_fix(tmp_path, capsys, monkeypatch):
    code, err = run_in_process(tmp_path, ["train.lr=1e12", "train.epochs=1"], capsys, monkeypatch, SYNTHETIC + FAST)
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1, err
    assert re.fullmatch(r"error: (dense|round \d+) .*(loss became nan at step \d+|mean loss is nan); lower train.lr.*",
                        lines[0]), lines[0]
    assert not list((tmp_path / "out").rglob("summary.json"))  # never reported as complete; completed rounds stay


def test_the_start_banner_says_what_runs_and_how_much_it_may_train(tmp_path):
    import train
    from conftest import FAST, SYNTHETIC, compose_config
    from nepenthe.experiment import Experiment
    from nepenthe.report import describe_run

    exp = Experiment(train.to_run_config(compose_config(SYNTHETIC + FAST)))
    params = sum(p.numel() for p in exp.model.parameters())
    lines = describe_run(exp, tmp_path / "r")
    assert lines[0] == (f"compact_cnn: {params / 1e6:.2f} M params, 7 units, from scratch | synthetic "
                        f"(train/val/test 600/200/200, root -)")
    # dense 3 epochs + 3 rounds × 1 epoch, 600 images each
    assert lines[1].startswith("cpu fp32, ") and lines[1].endswith(
        "| nepenthe ratio 0.5 | dense 3 epochs, then up to 3 rounds of 1 epochs; stop when val drops > 100 pts "
        "below dense | at most 3,600 training images")
    assert lines[2] == f"run directory: {tmp_path / 'r'}"


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


def test_the_banner_says_where_the_papers_start_swin_t(tmp_path):
    from nepenthe.experiment import Experiment
    from nepenthe.report import describe_run

    exp = Experiment(train.to_run_config(compose_config(
        ["model=swin_t", "dataset=synthetic", "dataset.kwargs.train_size=64", "dataset.kwargs.val_size=16",
         "dataset.kwargs.test_size=16", "hardware=cpu"])))
    assert exp.cfg.train.optimizer == "adamw"
    first = describe_run(exp, tmp_path)[0]
    assert first.startswith("swin_t: 27.5") and "12 units, from scratch (the published protocols start from ImageNet " \
        "weights: save them to weights/swin_t_imagenet.pth as docs/running.md shows" in first


class _FakeJob:
    """What the launcher reads from a submitit job that never reported back."""
    job_id = "17_0"

    def __init__(self, exc, state="CANCELLED by 0"):
        self._exc, self.state = exc, state
        self.paths = type("Paths", (), {"stderr": Path("/logs/17_0_log.err")})()

    def results(self):
        raise self._exc


@pytest.mark.parametrize("exc_type, expected_type, expected", [
    ("UncompletedJobError", "CANCELLED", "ended CANCELLED without a result (killed by the cluster"),
    ("FailedJobError", "CANCELLED", "failed before its run could start: ModuleNotFoundError: No module named 'x'"),
])
def test_a_job_without_a_result_is_recorded_failed_by_the_submitter_and_the_sweep_goes_on(
        tmp_path, capsys, exc_type, expected_type, expected):
    from types import SimpleNamespace

    import submitit.core.utils as submitit_utils
    from hydra.core.utils import JobStatus

    from nepenthe.tracking import read_status
    from nepenthe_cli.launchers import CollectsEveryJob
    from nepenthe_cli.rundir import job_run_dir

    launcher = CollectsEveryJob()
    launcher.config = SimpleNamespace(hydra=SimpleNamespace(sweep=SimpleNamespace(dir=str(tmp_path))))
    exc = getattr(submitit_utils, exc_type)("Traceback ...\nModuleNotFoundError: No module named 'x'\n")
    result = launcher._result(_FakeJob(exc), ["seed=1"], 3)
    assert result.status == JobStatus.COMPLETED and result.return_value is None  # the sweep's summary counts it
    status = read_status(job_run_dir(tmp_path, ["seed=1"]))
    assert (status.written_by, status.type, status.job_id) == ("submitter", expected_type, "17_0")
    assert expected in status.error
    assert f"error: job 3 (" in capsys.readouterr().err
