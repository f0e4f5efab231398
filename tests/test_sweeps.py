"""A sweep runs every job: one failing job records its error in its own run directory, the others complete, and the
command ends by listing the failed jobs with a non-zero exit code."""

import json
import subprocess
import sys

from nepenthe.tracking import read_rounds, read_status, read_summary

from conftest import ROOT
from test_launchers import TINY


def test_a_failing_job_does_not_stop_the_sweep_and_the_end_lists_it(tmp_path):
    runs = tmp_path / "runs"
    command = [sys.executable, str(ROOT / "train.py"), "-m", *TINY, f"output_root={runs}", "name=sweep",
               "pruning.ratio=0.5,1.5,0.3"]
    done = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert done.returncode == 1, done.stderr[-3000:]
    jobs = {d.name.split("pruning.ratio=")[1].split(",")[0]: d for d in (runs / "sweep").iterdir() if d.is_dir()}
    assert sorted(jobs) == ["0.3", "0.5", "1.5"]
    for ratio in ("0.5", "0.3"):  # job #2 ran after job #1 failed
        assert read_summary(jobs[ratio])["status"] == "complete"
        assert [r["round"] for r in read_rounds(jobs[ratio])] == [0, 1]
        assert read_status(jobs[ratio]) is None
    status = read_status(jobs["1.5"])
    assert status["status"] == "failed" and status["type"] == "ConfigError"
    assert status["error"] == "pruning.ratio=1.5 must lie strictly between 0 and 1 (e.g. 0.5)"
    assert "Traceback" in (jobs["1.5"] / "error.txt").read_text()
    assert not (jobs["1.5"] / "rounds.jsonl").exists()
    lines = done.stderr.strip().splitlines()
    assert f"error: job 1 ({jobs['1.5']}): {status['error']}" in lines
    assert lines[-2:] == ["sweep finished: 1 of 3 jobs failed (status.json and error.txt in each):",
                          f"  {jobs['1.5']}: {status['error']}"]
    assert "Traceback" not in done.stderr
    json.loads((jobs["1.5"] / "status.json").read_text())  # a whole file, never half-written


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


def test_the_cards_swin_t_command_uses_swin_t_defaults_and_says_where_weights_go(tmp_path):
    import train
    from conftest import compose_config
    from nepenthe.experiment import Experiment
    from nepenthe.report import describe_run

    card = compose_config(["model=swin_t", "pruning.ratio=0.5"])  # python train.py -m model=swin_t pruning.ratio=0.5
    assert (card.train.optimizer, card.train.lr, card.train.weight_decay, card.train.schedule) == (
        "adamw", 5e-4, 0.05, "cosine")
    assert compose_config([]).train.optimizer == "sgd"  # the compact CNN keeps its own
    assert compose_config(["model=vgg16_bn"]).train.lr == 0.01  # VGG-16-bn at the published protocols' rate
    preset = compose_config(["experiment=swin_t_cifar10"])  # the published protocol still wins
    assert (preset.train.optimizer, preset.train.lr) == ("sgd", 1e-3)
    exp = Experiment(train.to_run_config(compose_config(
        ["model=swin_t", "dataset=synthetic", "dataset.kwargs.train_size=64", "dataset.kwargs.val_size=16",
         "dataset.kwargs.test_size=16", "hardware=cpu"])))
    assert exp.cfg.train.optimizer == "adamw"
    first = describe_run(exp, tmp_path)[0]
    assert first.startswith("swin_t: 27.5") and "12 units, from scratch (the published protocols start from ImageNet " \
        "weights: save them to weights/swin_t_imagenet.pth as the README shows" in first
