"""Configuration: every group option composes, every paper pair composes to its published protocol (docs/protocols.md),
presets and method groups bring what they say, and one list of non-semantic keys names the run directory."""

import pytest

import train
from conftest import ROOT, SYNTHETIC, compose_config
from nepenthe.config import NON_SEMANTIC_KEYS, is_non_semantic, semantic_dict
from nepenthe.errors import ConfigError
from nepenthe_cli.rundir import run_id

GROUPS = {group: sorted(p.stem for p in (ROOT / "conf" / group).glob("*.yaml"))
          for group in ("model", "dataset", "pruning", "hardware", "logger", "experiment", "protocol", "scale")}


def test_every_group_has_its_options():
    from nepenthe.models import list_models
    from nepenthe.pruning.registry import METHODS

    assert GROUPS["pruning"] == sorted(METHODS) == ["easier", "egp", "imp", "lacoot", "layerwise", "nepenthe", "none",
                                                    "uniform"]
    assert GROUPS["model"] == list_models()  # every registered model has its group file
    assert GROUPS["hardware"] == ["auto", "cpu", "cuda"] and GROUPS["logger"] == ["none", "wandb"]
    assert GROUPS["protocol"] == ["cifar", "domains", "none", "transfer"] and GROUPS["scale"] == ["full", "smoke"]
    # hand-written presets only: nothing generated is committed
    assert GROUPS["experiment"] == ["frontier_fashion_mnist_resnet18_distill", "frontier_fashion_mnist_resnet18_lacoot",
                                    "quickstart", "study_fashion_mnist_mobilenetv2", "study_fashion_mnist_resnet18",
                                    "study_fashion_mnist_swin_t", "table1", "table1_smoke"]


@pytest.mark.parametrize("group,option", [(g, o) for g, opts in GROUPS.items() for o in opts if g != "experiment"])
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
    elif group == "protocol":
        assert cfg.name == ("run" if option == "none" else option)


def protocol_rows():
    """The table of docs/protocols.md: one dict per row."""
    lines = [line for line in (ROOT / "docs" / "protocols.md").read_text().splitlines() if line.startswith("| ")]
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    return [dict(zip(header, (c.strip() for c in line.strip("|").split("|")))) for line in lines[1:]]


def test_the_protocol_table_covers_every_pair_the_papers_report():
    rows = protocol_rows()
    easier = {(r["model"], r["dataset"]) for r in rows if r["method"] == "-"}
    assert len(easier) == 28  # 4 networks x 7 datasets of the EASIER appendix
    lacoot = {(r["model"], r["dataset"]) for r in rows if r["method"] == "LaCoOT"}
    assert lacoot == {("ResNet-18", "CIFAR-10"), ("MobileNetV2", "CIFAR-10"), ("Swin-T", "CIFAR-10"),
                      ("Swin-T", "Tiny-ImageNet-200")}


@pytest.mark.slow  # 56 pairs, 9 s on 2 cores: make test-all
@pytest.mark.parametrize("row", protocol_rows(), ids=lambda r: f"{r['method']}-{r['model']}-{r['dataset']}")
def test_every_paper_pair_composes_to_its_published_schedule(row):
    cfg = train.to_run_config(compose_config(row["command (`python train.py ...`)"].strip("`").split()))
    t = cfg.train
    milestones = ",".join(str(m) for m in t.milestones) or "-"
    assert (str(t.epochs), str(t.batch_size), t.optimizer, t.lr, t.weight_decay, t.schedule, milestones) == (
        row["epochs"], row["batch"], row["optimizer"], float(row["lr"]), float(row["weight decay"]), row["schedule"],
        row["milestones"])
    assert (cfg.model.kwargs.get("weights") or "-") == row["initial weights"]
    assert (cfg.seed, cfg.pruning.ratio, cfg.stop.max_rounds, cfg.finetune.epochs) == (43, 0.5, 9, None)
    if row["method"] == "LaCoOT":
        assert cfg.pruning.method == "lacoot" and cfg.pruning.lambda_reg == float(row["λ"])
        assert cfg.pruning.finetune_epochs == 0  # no fine-tuning after a removal, as the reference


def test_scale_smoke_shrinks_a_protocol_and_keeps_its_schedule():
    cfg = train.to_run_config(compose_config(["protocol=domains", "model=swin_t", "dataset=pacs", "scale=smoke"]))
    assert (cfg.train.optimizer, cfg.train.lr, cfg.train.epochs, cfg.stop.max_rounds) == ("sgd", 1e-3, 1, 2)
    assert (cfg.hardware.device, cfg.model.kwargs["weights"], cfg.dataset.kwargs["image_size"]) == ("cpu", None, 64)
    tiny = train.to_run_config(compose_config(["protocol=cifar", "model=resnet18_imagenet",
                                               "dataset=tiny_imagenet", "scale=smoke"]))
    assert (tiny.dataset.kwargs["train_subset"], tiny.dataset.kwargs["image_size"], tiny.train.batch_size) == (
        2000, 32, 64)


def test_quickstart_preset_values():
    cfg = train.to_run_config(compose_config(["experiment=quickstart"]))
    assert (cfg.model.name, cfg.dataset.name, cfg.pruning.method, cfg.hardware.device) == (
        "compact_cnn", "fashion_mnist", "nepenthe", "cpu")
    assert cfg.dataset.kwargs["train_subset"] == 12000 and cfg.finetune.epochs == 3 and cfg.stop.max_rounds == 4


def test_the_table1_presets_are_hydra_sweeps():
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        smoke = compose("config", ["experiment=table1_smoke"], return_hydra_config=True)
        published = compose("config", ["experiment=table1"], return_hydra_config=True)
    assert dict(smoke.hydra.sweeper.params) == {"pruning": "nepenthe,egp,easier,imp,lacoot", "seed": "0,1"}
    assert dict(published.hydra.sweeper.params) == {
        "model": "resnet18_cifar,mobilenetv2_cifar,swin_t,vgg16_bn", "pruning": "nepenthe,egp,easier,imp,lacoot",
        "seed": "43,44,45"}
    assert (published.dataset.name, published.hardware.device, published.train.epochs) == ("cifar10", "cuda", 160)


def test_baseline_groups_bring_their_reference_entropy_settings():
    egp = train.to_run_config(compose_config(["pruning=egp"]))
    assert (egp.pruning.method, egp.entropy.zero_state, egp.entropy.layer_mean, egp.entropy.pooling,
            egp.entropy.split, egp.pruning.rounding) == ("egp", "off", "nonconstant", "batch", "train_aug", "floor")
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


def test_one_list_of_non_semantic_keys_names_the_run_directory_and_the_identity():
    assert run_id([]) == "default"
    assert run_id(["seed=1", "pruning=imp", "progress=false", "collapse.merge=never", "logger.mode=online",
                         "hardware.threads=2"]) == "pruning=imp,seed=1"
    long = run_id(["x=" + "a/" * 200])
    assert len(long) == 193 and "/" not in long
    cfg = train.to_run_config(compose_config(["collapse.merge=never", "progress=false"]))
    identity = semantic_dict(cfg)
    for key in NON_SEMANTIC_KEYS:
        node = identity
        for part in key.split(".")[:-1]:
            node = node[part]
        assert key.split(".")[-1] not in node
    assert is_non_semantic("collapse.latency_rounds") and is_non_semantic("+logger.tags") and not is_non_semantic("seed")
    # a method's options belong to the identity only where the method takes them
    assert "lambda_reg" not in identity["pruning"] and "rounding" in identity["pruning"]
    lacoot = semantic_dict(train.to_run_config(compose_config(["pruning=lacoot"])))
    assert lacoot["pruning"]["lambda_reg"] == 5.0 and lacoot["pruning"]["order"] == "by_val_mswd"


def test_the_cards_swin_t_command_uses_swin_t_defaults_and_the_protocol_wins():
    card = compose_config(["model=swin_t", "pruning.ratio=0.5"])  # python train.py -m model=swin_t pruning.ratio=0.5
    assert (card.train.optimizer, card.train.lr, card.train.weight_decay, card.train.schedule) == (
        "adamw", 5e-4, 0.05, "cosine")
    assert compose_config([]).train.optimizer == "sgd"  # the compact CNN keeps its own
    assert compose_config(["model=vgg16_bn"]).train.lr == 0.01  # VGG-16-bn at the published protocols' rate
    preset = compose_config(["protocol=cifar", "model=swin_t", "dataset=cifar10"])  # the published protocol wins
    assert (preset.train.optimizer, preset.train.lr) == ("sgd", 1e-3)


def test_stored_configs_upgrade_and_keep_the_identity_of_every_run_but_lacoots():
    """The committed runs' config.yaml, written before methods declared their options: read through the upgrade,
    each gives the config_hash its summary recorded, except LaCoOT's, whose stop bound moved from pruning.max_drop
    to stop.max_drop (so its identity changed; resuming such a run is refused naming the keys)."""
    import json

    from nepenthe.config import config_hash, load_run_config

    import yaml

    configs = sorted((ROOT / "experiments" / "results").rglob("config.yaml"))
    studies = {config.relative_to(ROOT / "experiments" / "results").parts[0] for config in configs}
    same, moved = 0, 0
    for config in configs:
        summary = json.loads((config.parent / "summary.json").read_text())
        cfg = load_run_config(config)
        written = yaml.safe_load(config.read_text())
        # written before methods declared their options, every run stored pruning.max_drop; LaCoOT's meant its stop
        if cfg.pruning.method == "lacoot" and "max_drop" in (written.get("pruning") or {}):
            moved += 1
            assert config_hash(cfg) != summary["config_hash"] and "max_drop" not in semantic_dict(cfg)["pruning"]
        else:  # every other run, and LaCoOT runs written since (the Swin-T study's)
            same += 1
            assert config_hash(cfg) == summary["config_hash"], config
    # the four runs written before are the smoke and ResNet-18 studies' LaCoOT runs; every other one keeps its hash
    assert {"smoke", "fashion_mnist_resnet18"} <= studies and len(configs) >= 40
    assert (same, moved) == (len(configs) - 4, 4)
