import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # train.py lives at the repository root

import train  # noqa: E402

SYNTHETIC = [
    "dataset=synthetic", "dataset.kwargs.train_size=600", "dataset.kwargs.val_size=200",
    "dataset.kwargs.test_size=200",
]
FAST = [
    "model.kwargs.width=8", "train.epochs=3", "train.batch_size=32",
    "finetune.epochs=1",
    "stop.max_rounds=3", "stop.max_drop=100", "progress=false", "hardware=cpu",
    "collapse.latency_min_run_time=0.02", "collapse.latency_rounds=1", "collapse.verify_batch=64",
    "collapse.runtimes=[eager]", "collapse.onnx=false",  # ONNX and torch.compile: their own tests
]


def compose_config(overrides):
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return compose(config_name="config", overrides=list(overrides))


@pytest.fixture
def run_fast(tmp_path):
    """Compose with the fast synthetic overrides (plus extra ones) and execute into a fresh directory."""

    def run(*extra, run_dir=None, data=SYNTHETIC):
        cfg = compose_config(data + FAST + list(extra))
        target = run_dir or tmp_path / "run"
        return train.execute(train.to_run_config(cfg), target), target

    return run


def pytest_collection_modifyitems(config, items):
    """The cuda tier runs only where torch sees a GPU; elsewhere each of its tests is skipped saying why."""
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="no CUDA device visible (torch.cuda.is_available() is False): make gpu-check on a GPU")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)
