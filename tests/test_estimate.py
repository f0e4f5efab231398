"""A run says how long it will take after its first training steps (nepenthe/estimate.py), and names the CPU-scale
preset of its model when that is hours on a CPU (nepenthe_cli/cpu_presets.py)."""

import pytest

from nepenthe.estimate import BatchClock, RunWork, duration, estimate_line, estimate_run
from nepenthe.records import RunEstimate
from nepenthe_cli.cpu_presets import CPU_HOURS_LIMIT_S, advice_for, cpu_scale_presets

from conftest import compose_config


def test_the_clock_times_steps_after_the_warmup_within_epochs_once(monkeypatch):
    clock_times = iter([0.0, 1.0, 2.0, 2.5, 100.0, 100.4, 100.7, 101.0, 101.2])
    monkeypatch.setattr("nepenthe.estimate.time.perf_counter", lambda: next(clock_times))
    heard = []
    clock = BatchClock(lambda seconds, steps: heard.append((seconds, steps)), warmup=2, timed=4)
    clock.epoch_started()  # 0.0
    clock.tick(), clock.tick()  # steps 1-2 at 1.0, 2.0: the warm-up
    clock.tick()  # step 3 at 2.5: 0.5 s
    # evaluation, the probe, a new fit: not a training step
    clock.epoch_started()  # 100.0
    clock.tick(), clock.tick(), clock.tick()  # 0.4, 0.3, 0.3 s
    assert heard == [(pytest.approx((0.5 + 0.4 + 0.3 + 0.3) / 4), 4)]
    clock.tick(), clock.epoch_started()  # measured: later calls read no clock (the iterator would be exhausted)
    assert len(heard) == 1
    with pytest.raises(ValueError, match="warmup=0 and timed=5 must both be >= 1"):
        BatchClock(lambda s, n: None, warmup=0)


def test_the_estimate_adds_every_round_the_stop_rule_allows():
    # 1,000 training images, batches of 100 at 0.5 s: 5 ms per image trained; 600 images passed forward per round
    work = RunWork(train_images=1000, batch_size=100, round_epochs=[10, 2, 2, 2], forward_images_per_round=600)
    estimate = estimate_run(work, seconds_per_batch=0.5, batches_timed=5, device="cpu", forward_per_image=0.0025)
    forward = 600 * 0.0025  # 1.5 s per round, at the measured forward time
    assert estimate.dense_s == pytest.approx(10 * 1000 * 0.005 + forward)  # 51.5 s
    assert estimate.rounds_s == pytest.approx(3 * (2 * 1000 * 0.005 + forward))  # 34.5 s
    assert estimate.total_s == pytest.approx(86.0) and estimate.rounds == 3
    assert estimate_line(estimate) == ("estimate: 86 s in all (dense 52 s, up to 3 rounds 34 s; the collapse not "
                                       "included), from 0.5 s per training batch of 100 on cpu (mean of 5 steps) and "
                                       "2.5 ms per image passed forward")
    # nothing measured forward: a third of a training step per image
    unmeasured = estimate_run(work, seconds_per_batch=0.5, batches_timed=5, device="cpu")
    assert unmeasured.dense_s == pytest.approx(50 + 600 * 0.005 / 3) and unmeasured.forward_ms_per_image == \
        pytest.approx(5 / 3)


@pytest.mark.parametrize("seconds,text", [(42, "42 s"), (420, "7 min"), (6720, "1 h 52 min"), (7200, "2 h"),
                                          (158400, "44 h")])
def test_durations_read_as_a_person_says_them(seconds, text):
    assert duration(seconds) == text


def test_each_model_with_a_cpu_preset_is_named_studies_first():
    presets = cpu_scale_presets()
    assert presets["resnet18_cifar"][0] == "study_fashion_mnist_resnet18"
    assert presets["swin_t"] == ["study_fashion_mnist_swin_t"]
    assert presets["mobilenetv2_cifar"] == ["study_fashion_mnist_mobilenetv2"]
    assert set(presets["compact_cnn"]) >= {"quickstart", "table1_smoke"}


def _estimate(total_s: float, device: str = "cpu") -> RunEstimate:
    return RunEstimate(seconds_per_batch=3.3, batches_timed=5, batch_size=128, device=device, dense_s=total_s / 2,
                       rounds=5, rounds_s=total_s / 2, total_s=total_s)


def test_hours_on_a_cpu_name_the_models_cpu_scale_preset():
    from train import to_run_config

    advise = advice_for(to_run_config(compose_config(["model=swin_t", "pruning.ratio=0.5"])))
    line = advise(_estimate(44 * 3600))
    assert line.startswith("this run would take about 44 h on this CPU (past 2 h): "
                           "experiment=study_fashion_mnist_swin_t is the CPU-scale preset of model=swin_t")
    assert advise(_estimate(CPU_HOURS_LIMIT_S)) is None  # not past the limit
    assert advise(_estimate(44 * 3600, device="cuda")) is None  # a GPU run is not told to shrink
    vgg = advice_for(to_run_config(compose_config(["model=vgg16_bn"])))(_estimate(3 * 3600))
    assert "no CPU-scale preset of model=vgg16_bn exists; shrink model.kwargs" in vgg
