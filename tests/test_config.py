import subprocess
import sys

import pytest

import train
from conftest import ROOT, SYNTHETIC, compose_config
from nepenthe.errors import ConfigError

GROUPS = {group: sorted(p.stem for p in (ROOT / "conf" / group).glob("*.yaml"))
          for group in ("model", "dataset", "pruning", "hardware", "logger", "experiment")}


def test_every_group_has_its_options():
    from nepenthe.models import list_models
    from nepenthe.pruning.methods import METHODS

    assert GROUPS["pruning"] == sorted(METHODS) == ["easier", "egp", "imp", "layerwise", "nepenthe", "none", "uniform"]
    assert GROUPS["model"] == list_models()  # every registered model has its group file
    assert GROUPS["hardware"] == ["auto", "cpu", "cuda"]
    assert GROUPS["logger"] == ["none", "wandb"]
    assert "quickstart" in GROUPS["experiment"]


@pytest.mark.parametrize("group,option", [(g, o) for g, opts in GROUPS.items() for o in opts])
def test_every_config_group_option_composes_and_validates(group, option):
    cfg = train.to_run_config(compose_config([f"{group}={option}"]))
    if group in ("model", "dataset"):
        assert getattr(cfg, group).name == option
    elif group == "pruning":
        assert cfg.pruning.method == option and 0 < cfg.pruning.ratio < 1
    elif group == "hardware":
        assert cfg.hardware.device == option
    elif group == "logger":
        assert cfg.logger.name == option
    else:
        assert cfg.name == option


def test_quickstart_preset_values():
    cfg = train.to_run_config(compose_config(["experiment=quickstart"]))
    assert (cfg.model.name, cfg.dataset.name, cfg.pruning.method, cfg.hardware.device) == (
        "compact_cnn", "fashion_mnist", "nepenthe", "cpu")
    assert cfg.dataset.kwargs["train_subset"] == 12000 and cfg.finetune.epochs == 3 and cfg.stop.max_rounds == 4


@pytest.mark.parametrize("override,message", [
    ("model.name=resnet1000", "unknown model 'resnet1000'; known: compact_cnn, mobilenetv2_cifar, mobilenetv2_imagenet, resnet18_cifar, resnet18_imagenet, swin_t, timm, vgg16_bn"),
    ("pruning.ratio=1.5", "pruning.ratio=1.5 must lie strictly between 0 and 1"),
    ("pruning.ratio=0", "pruning.ratio=0.0 must lie strictly between 0 and 1"),
    ("pruning.method=magic", "unknown pruning method 'magic'"),
    ("entropy.zero_state=maybe", "entropy.zero_state='maybe' is not valid; choose one of off, on, drop"),
    ("train.epochs=many", "Value 'many' of type 'str' could not be converted to Integer"),
    ("hardware.precision=fp8", "hardware.precision='fp8' is not valid; choose one of fp32, bf16"),
    ("train.lr=-1", "train.lr=-1.0 must be > 0"),
])
def test_bad_values_give_one_clear_error(override, message):
    with pytest.raises(ConfigError) as info:
        train.to_run_config(compose_config([override]))
    assert message in str(info.value)
    assert "\n" not in str(info.value)


def test_run_id_is_readable_and_bounded():
    assert train.run_id("") == "default"
    assert train.run_id("pruning=imp,seed=1") == "pruning=imp,seed=1"
    long = train.run_id("x=" + "a/" * 200)
    assert len(long) == 193 and "/" not in long


def test_cli_missing_data_root_fails_cleanly_and_leaves_no_run_directory(tmp_path):
    result = subprocess.run(
        [sys.executable, "train.py", f"output_root={tmp_path}", f"dataset.root={tmp_path / 'nodata'}",
         "+dataset.kwargs.source_dir=/nonexistent", "progress=false"],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 2
    assert "error: Fashion-MNIST not found in" in result.stderr
    assert "apt-get install -y dataset-fashion-mnist" in result.stderr
    assert not any((tmp_path / "run").glob("*")), "a failed run must not leave a directory behind"


def test_baseline_groups_bring_their_reference_entropy_settings():
    egp = train.to_run_config(compose_config(["pruning=egp"]))
    assert (egp.pruning.method, egp.entropy.zero_state, egp.entropy.layer_mean, egp.entropy.pooling,
            egp.entropy.split) == ("egp", "off", "nonconstant", "batch", "train_aug")
    easier = train.to_run_config(compose_config(["pruning=easier"]))
    assert (easier.pruning.method, easier.entropy.zero_state, easier.entropy.layer_mean) == ("easier", "on", "all")
    explicit = train.to_run_config(compose_config(["pruning=egp", "entropy.pooling=dataset"]))
    assert explicit.entropy.pooling == "dataset"  # a command-line override still wins


def test_total_finetune_epochs_are_shared_evenly_over_the_rounds():
    from nepenthe.experiment import Experiment

    cfg = train.to_run_config(compose_config(SYNTHETIC + ["finetune.total_epochs=10", "stop.max_rounds=4",
                                                          "train.epochs=7", "hardware=cpu"]))
    exp = Experiment(cfg)
    assert [exp.epochs_for(r) for r in range(5)] == [7, 3, 3, 2, 2]
    with pytest.raises(ConfigError, match="finetune.total_epochs=10 and finetune.epochs=2 both set"):
        train.to_run_config(compose_config(["finetune.total_epochs=10", "finetune.epochs=2"]))
