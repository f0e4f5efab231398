"""docs/own_model.md's code blocks run as written (so the page cannot rot) and do what the page says."""

import re

import pytest
import torch

from conftest import ROOT


def test_own_model_page_runs_and_collapses_exactly():
    text = (ROOT / "docs" / "own_model.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    assert len(blocks) == 3
    namespace: dict = {}
    for block in blocks[:2]:
        exec(compile(block, "docs/own_model.md", "exec"), namespace)
    result, small, report, batch = namespace["result"], namespace["small"], namespace["report"], namespace["batch"]
    records = result.records
    assert [r.round for r in records] == list(range(len(records))) and len(records) >= 2
    assert records[0].sparsity == 0.0 and records[0].N == 2
    assert records[1].sparsity > 0.3  # half of the two units' weights go in round 1 (the head stays dense)
    assert records[0].val_acc > 80.0  # 4 classes, chance is 25 %
    assert result.kept.val_acc >= records[0].val_acc - 2.0
    reference = result.model.eval()(batch)
    assert small(batch).shape == reference.shape
    assert torch.allclose(small(batch), reference, rtol=0, atol=1e-4 * reference.abs().max().item())
    assert report.before.weight_layers_on_longest_path == 3
    namespace_model = namespace["model"]
    exec(compile(blocks[2], "docs/own_model.md", "exec"), namespace)  # one more round by hand on the same model
    assert sum(namespace["plan"].counts.values()) > 0 and set(namespace["stats"]) == {"2", "6"}
    assert namespace["model"] is namespace_model


@pytest.mark.slow  # make test-all: over 4 s on 2 cores
def test_the_library_never_imports_hydra_and_exports_a_documented_api():
    import subprocess
    import sys

    code = "import sys, nepenthe; print('hydra' in sys.modules, 'wandb' in sys.modules, len(nepenthe.__all__))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT).stdout.split()
    assert out == ["False", "False", "47"]
    import nepenthe

    import nepenthe.collapse.pipeline as pipeline  # the subpackage is not shadowed by the exported function

    assert nepenthe.collapse_model is pipeline.collapse
    undocumented = [n for n in nepenthe.__all__ if callable(getattr(nepenthe, n)) and not getattr(nepenthe, n).__doc__]
    assert undocumented == []


def test_run_experiment_from_python_without_hydra(tmp_path):
    import nepenthe
    from nepenthe.config import semantic_dict
    from nepenthe.tracking import read_rounds

    cfg = nepenthe.load_run_config({
        "dataset": {"name": "synthetic", "kwargs": {"train_size": 400, "val_size": 100, "test_size": 100}},
        "model": {"kwargs": {"width": 8}}, "train": {"epochs": 2, "batch_size": 32}, "finetune": {"epochs": 1},
        "stop": {"max_rounds": 1, "max_drop": 100}, "progress": False, "hardware": {"device": "cpu"},
        "collapse": {"enabled": False},
    })
    summary = nepenthe.run_experiment(cfg, tmp_path / "run")
    assert summary.status == "complete" and summary.rounds_completed == 1
    assert [r.round for r in read_rounds(tmp_path / "run")] == [0, 1]
    again = nepenthe.load_run_config(tmp_path / "run" / "config.yaml")  # the written config reloads as the same run
    assert semantic_dict(again) == semantic_dict(cfg)


def test_prune_with_a_run_dir_checkpoints_and_resumes(tmp_path):
    from torch import nn

    import nepenthe
    from nepenthe.tracking import read_rounds

    torch.manual_seed(0)
    x, y = torch.randn(256, 6), torch.randint(0, 3, (256,))
    model = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 3))
    calls = []

    def train(m, r):
        calls.append(r)

    def evaluate(m):
        with torch.no_grad():
            return {"val_acc": 50.0, "test_acc": float((m(x).argmax(1) == y).float().mean() * 100)}

    kwargs = dict(train=train, evaluate=evaluate, probe_batches=[(x, y)],
                  stop=nepenthe.StopConfig(max_rounds=2, max_drop=100.0),
                  setup=nepenthe.PruneSetup(run_dir=tmp_path / "mine", train_dense=True))
    first = nepenthe.prune(model, **kwargs)
    assert calls == [0, 1, 2] and [r.round for r in read_rounds(tmp_path / "mine")] == [0, 1, 2]
    # NEPENTHE's budget: round 1 removes half of the two units' 96 + 256 weights; the head (48) stays dense
    assert first.records[1].pruned == 176 and abs(first.records[1].sparsity - 176 / 400) < 1e-9
    calls.clear()
    again = nepenthe.prune(nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 3)),
                           **kwargs)
    assert calls == [] and [r.pruned for r in again.records] == [r.pruned for r in first.records]
    assert torch.equal(again.model(x), first.model(x))  # resumed from the checkpoints: the same pruned model


@pytest.mark.e2e
def test_the_documented_weights_one_liner_writes_a_file_the_swin_t_preset_loads(tmp_path):
    import subprocess
    import sys

    from nepenthe.models import create_model

    line = re.search(r"`(mkdir -p weights && python -c .*?swin_t_imagenet\.pth'\)\")`",
                     (ROOT / "docs" / "running.md").read_text())
    command = line.group(1).replace("weights='DEFAULT'", "weights=None")  # no download here: same file, random values
    command = command.replace("python -c", f"{sys.executable} -c")
    done = subprocess.run(command, shell=True, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    saved = torch.load(tmp_path / "weights" / "swin_t_imagenet.pth")
    model = create_model("swin_t", 10, 3, weights=str(tmp_path / "weights" / "swin_t_imagenet.pth"))
    first = next(iter(k for k in saved if k.endswith("weight") and "features" in k))
    assert torch.equal(model.state_dict()[first], saved[first])  # the preset's model reads the file as written
