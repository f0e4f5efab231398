"""The Swin-T and MobileNetV2 study presets (conf/experiment/study_fashion_mnist_{swin_t,mobilenetv2}.yaml): one job
of each on a few hundred real Fashion-MNIST images, so that the presets cannot rot, and what each study is there to
show happens on it: Swin's replaced GELUs let fc2 ∘ fc1 merge; MobileNetV2's merges are chosen by measured latency."""

import pytest

import train
from conftest import compose_config
from nepenthe.data.fashion_mnist import DEBIAN_DIR, prepare_fashion_mnist
from nepenthe.tracking import read_rounds

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600),
              pytest.mark.skipif(not DEBIAN_DIR.is_dir(), reason="needs Debian's dataset-fashion-mnist (make data)")]

SHRINK = ["dataset.kwargs.train_subset=300", "dataset.kwargs.val_size=200", "dataset.kwargs.test_subset=500", "train.epochs=1", "stop.max_rounds=2",
          "collapse.latency_rounds=1", "collapse.latency_min_run_time=0.02", "collapse.latency_batches=[1]",
          "collapse.runtimes=[eager]", "collapse.onnx=false", "collapse.verify_batch=64", "entropy.max_batches=2"]


def run_preset(tmp_path, preset: str, method: str):
    prepare_fashion_mnist(tmp_path / "data")
    cfg = train.to_run_config(compose_config([f"experiment={preset}", f"pruning={method}", "seed=0",
                                              f"dataset.root={tmp_path / 'data'}", *SHRINK]))
    return cfg, train.execute(cfg, tmp_path / "run"), read_rounds(tmp_path / "run")


def test_one_easier_job_of_the_swin_study_merges_the_mlps_of_the_blocks_it_linearized(tmp_path):
    cfg, summary, records = run_preset(tmp_path, "study_fashion_mnist_swin_t", "easier")
    assert (cfg.model.name, cfg.model.kwargs["embed_dim"], cfg.train.optimizer) == ("swin_t", 24, "adamw")
    assert summary.N == 12 and records[0].weight_layers == 29 and summary.estimate.rounds == 2
    replaced = records[-1].replaced_by_identity
    assert len(replaced) >= 2 and all(name.endswith(".mlp.1") for name in replaced)  # one GELU per round at least
    collapse = summary.collapse
    kept = set(records[summary.kept_round].replaced_by_identity)
    merges = [op["layers"] for op in collapse.operations if op["op"] == "merge"]
    # every GELU replaced in the kept round: its block's fc1 and fc2 became one linear map
    assert sorted(merges) == sorted([[u.replace(".mlp.1", ".mlp.0"), u.replace(".mlp.1", ".mlp.3")] for u in kept])
    assert collapse.after.weight_layers_on_longest_path == 29 - len(kept)
    assert (collapse.after.macs < collapse.before.macs) == bool(kept) and collapse.relative_diff <= 1e-4


def test_one_easier_job_of_the_mobilenetv2_study_times_its_candidate_merges(tmp_path):
    cfg, summary, records = run_preset(tmp_path, "study_fashion_mnist_mobilenetv2", "easier")
    assert (cfg.model.name, cfg.model.kwargs["width_mult"], cfg.collapse.merge) == ("mobilenetv2_cifar", 0.25,
                                                                                  "latency")
    assert summary.N == 35 and records[0].weight_layers == 53
    collapse = summary.collapse
    decided = [op for op in collapse.operations if op["op"] in ("merge", "merge_declined")]
    for op in decided:  # every candidate carries both timings; the kept ones beat the unmerged layers
        timings = op["latency_ms"]
        assert {"merged", "unmerged"} <= set(timings)
        if op["op"] == "merge":
            assert timings["merged"]["median"] < timings["unmerged"]["median"]
    kept = records[summary.kept_round].replaced_by_identity
    assert bool(decided) == bool(kept)  # a linearized ReLU6 leaves a chain whose merges are timed
    assert collapse.relative_diff <= 1e-4 and set(collapse.latency_ms["eager"]) == {"kept", "bn_folded",
                                                                                   "collapsed"}
