"""What a run ships (nepenthe/deploy.py, nepenthe/collapse/export.py, measure.py, the depth-first merge): ONNX equal to
the torch collapsed model in ONNX Runtime, latency per runtime side by side, the depth-first merge that adds MACs to
remove a layer, and the approximate network measured (and fine-tuned) on its own."""

import pytest
import torch
from torch import nn
from torch.nn.utils import prune

from nepenthe.collapse import approximate_network, collapse
from nepenthe.collapse.export import OnnxRuntimeModel, export_onnx, onnx_relative_diff
from nepenthe.collapse.measure import latency_by_runtime
from nepenthe.collapse.pipeline import detached_copy
from nepenthe.errors import NepentheError
from nepenthe.metrics import weight_layers_on_longest_path
from nepenthe.models.blocks import BasicBlock
from nepenthe.models.registry import _BUILDERS, register_model
from nepenthe.records import CollapseResult
from nepenthe.tracking import read_summary
from test_collapse import all_on, assert_same, ops, randomize_norms, seeded, stats_of, with_identity  # noqa: F401

ort = pytest.importorskip("onnxruntime", reason="the deploy extra (pip install -e .[deploy])")


class ConstantsAndMerges(nn.Module):
    """A conv pruned to 100 % (a folded constant, per position because of the padding), a 1x1 -> 3x3 chain that merges
    exactly once the ReLU between them is linearised, and a residual add."""

    def __init__(self):
        super().__init__()
        self.stem, self.bn = nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8)
        self.dead = nn.Conv2d(8, 8, 3, padding=1)
        self.reduce, self.act, self.spread = nn.Conv2d(8, 4, 1), nn.ReLU(), nn.Conv2d(4, 8, 3, padding=1)
        self.head = nn.Linear(8, 5)

    def forward(self, x):
        y = self.bn(self.stem(x))
        y = y + self.dead(y)
        y = y + self.spread(self.act(self.reduce(y)))
        return self.head(y.mean((2, 3)))


def collapsed_constants_and_merges(merge="cost"):
    model = randomize_norms(ConstantsAndMerges())
    prune.l1_unstructured(model.dead, "weight", amount=1.0)
    x = torch.randn(16, 3, 10, 10)
    small, report = collapse(model, {"act": all_on(4)}, x, merge)
    return model, small, report, x


@pytest.mark.slow  # 13 s of dynamo export: keeps `make test` under 3 minutes (the default tier still exports and
# runs ONNX Runtime in test_latency_per_runtime_side_by_side_and_a_runtime_that_cannot_run_says_why)
def test_onnx_runtime_equals_the_torch_collapsed_model_with_merges_and_folded_constants(tmp_path):
    model, small, report, x = collapsed_constants_and_merges("depth")
    assert ops(report, "fold_constant") and ops(report, "merge")  # the constant and the exact merge are there
    path = export_onnx(small, x, tmp_path / "small.onnx")
    onnx_model = OnnxRuntimeModel(path)
    for batch in (x, x[:1], torch.randn(40, 3, 10, 10)):  # the batch size stays free
        assert_same(onnx_model(batch), small(batch).detach())
    assert onnx_relative_diff(onnx_model, small, x) <= 1e-6
    reference = detached_copy(model).eval()  # the pruned model with its ReLU linearised: what collapse stands for
    reference.act = nn.Identity()
    assert_same(onnx_model(x), reference(x).detach(), rtol=1e-4)


class WindowsFromTheBatchSize(nn.Module):
    """Reads its batch size from a shape and reshapes with it, as torchvision's Swin partitions its windows."""

    def __init__(self):
        super().__init__()
        self.embed, self.head = nn.Linear(16, 8), nn.Linear(8, 3)

    def forward(self, x):
        batch = x.shape[0]
        tokens = self.embed(x.reshape(batch, 4, 4, 4).permute(0, 2, 1, 3).reshape(batch * 4, 16))
        return self.head(tokens.view(batch, 4, 8).mean(1))


@pytest.mark.slow  # make test-all: two dynamo exports, ~10 s on 2 cores
def test_a_model_traced_at_batch_one_still_ships_with_a_free_batch_size(tmp_path):
    """Traced at batch 1, such a model used to be exported with its batch fixed at 1 (torch.export's 0/1
    specialisation): ONNX Runtime then refused the latency measurement's batch of 64 in the Swin-T study."""
    from nepenthe.collapse.export import load_collapsed, save_collapsed

    model = WindowsFromTheBatchSize().eval()
    one, many = torch.randn(1, 1, 8, 8), torch.randn(64, 1, 8, 8)
    onnx_model = OnnxRuntimeModel(export_onnx(model, one, tmp_path / "m.onnx"))
    program = load_collapsed(save_collapsed(model, one, tmp_path / "m.pt2"))
    for batch in (one, many):
        assert_same(onnx_model(batch), model(batch).detach(), rtol=1e-5)
        assert_same(program(batch), model(batch).detach(), rtol=1e-6)


@pytest.mark.slow  # make test-all: over 5 s on 2 cores
def test_a_model_onnx_cannot_export_is_one_clear_error(tmp_path):
    class Bessel(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 4)

        def forward(self, x):
            return torch.special.bessel_j0(self.fc(x))

    with pytest.raises(NepentheError, match=r"torch.onnx could not export Bessel: DispatchError: No ONNX function "
                                            r"found for .*bessel_j0"):
        export_onnx(Bessel(), torch.randn(2, 4), tmp_path / "b.onnx")
    assert list(tmp_path.iterdir()) == []  # nothing half-written


@pytest.mark.slow  # make test-all: over 4 s on 2 cores
def test_latency_per_runtime_side_by_side_and_a_runtime_that_cannot_run_says_why(tmp_path, monkeypatch):
    small, large = nn.Linear(32, 32), nn.Sequential(*[nn.Linear(32, 32) for _ in range(6)])
    stats, notes = latency_by_runtime({"small": small, "large": large}, torch.randn(1, 32), (1, 8),
                                      ("eager", "compile", "onnxruntime"), onnx_dir=tmp_path, min_run_time=0.01,
                                      rounds=2)
    assert notes == {"eager": "ok", "compile": "ok", "onnxruntime": "ok"}
    for runtime in ("eager", "compile", "onnxruntime"):
        assert set(stats[runtime]) == {"small", "large"}
        for per_batch in stats[runtime].values():
            assert set(per_batch) == {"batch_1", "batch_8"}
            assert all(0 < s["p25"] <= s["median"] <= s["p75"] and s["n"] >= 2 for s in per_batch.values())
    import nepenthe.collapse.export as export

    def missing():
        raise export.OnnxUnavailable("ONNX export needs the deploy extra, which is not installed (onnxruntime is "
                                     "missing): " + export.DEPLOY_EXTRA)

    monkeypatch.setattr(export, "_onnx_modules", missing)
    stats, notes = latency_by_runtime({"small": small}, torch.randn(1, 32), (1,), ("eager", "onnxruntime"),
                                      onnx_dir=tmp_path, min_run_time=0.01, rounds=1)
    assert set(stats) == {"eager"} and notes["onnxruntime"] == (
        "not measured: ONNX export needs the deploy extra, which is not installed (onnxruntime is missing): "
        "pip install -e .[deploy] (onnx, onnxruntime, onnxscript)")


def test_depth_first_merges_remove_a_layer_at_more_macs_and_record_both():
    class Bottleneck(nn.Module):  # 1x1 down to a quarter, then 3x3 back up: merging costs 3.6x the MACs
        def __init__(self):
            super().__init__()
            self.reduce, self.act, self.spread = nn.Conv2d(16, 4, 1), nn.ReLU(), nn.Conv2d(4, 16, 3, padding=1)

        def forward(self, x):
            return self.spread(self.act(self.reduce(x)))

    block, x = Bottleneck().eval(), torch.randn(4, 16, 8, 8)
    _, cost = collapse(block, {"act": all_on(4)}, x, "cost")
    assert not ops(cost, "merge") and cost.after.weight_layers_on_longest_path == 2  # cost refuses: MACs would rise
    small, depth = collapse(block, {"act": all_on(4)}, x, "depth")
    (merge,) = ops(depth, "merge")
    assert merge["exact"] and (merge["macs_before"], merge["macs_after"]) == (16 * 4 * 64 + 4 * 16 * 9 * 64,
                                                                           16 * 16 * 9 * 64)
    assert (merge["weight_layers_before"], merge["weight_layers_after"]) == (2, 1)
    assert depth.after.weight_layers_on_longest_path == 1 and depth.after.macs > depth.before.macs
    assert_same(small(x), with_identity(block, "act")(x).detach())  # exact


def test_a_linearized_relu1_in_a_resnet_block_merges_only_with_the_approximate_opt_in():
    block = randomize_norms(BasicBlock(8, 8))
    x = torch.randn(8, 8, 12, 12)
    exact, report = collapse(block, {"relu1": all_on(8), "relu2": stats_of([0.5] * 8)}, x, "depth")
    assert not ops(report, "merge") and weight_layers_on_longest_path(exact) == 2  # 3x3 o 3x3: exact only inside
    approx, operations, diff = approximate_network(exact, x, "depth")
    (merge,) = [op for op in operations if op["op"] == "merge"]
    assert merge["layers"] == ["conv1", "conv2"] and not merge["exact"] and merge["kernel"] == [5, 5]
    assert merge["macs_after"] > merge["macs_before"]  # a 5x5 costs more than two 3x3 at 8 channels
    assert (merge["weight_layers_before"], merge["weight_layers_after"]) == (2, 1)
    assert weight_layers_on_longest_path(approx) == 1 and weight_layers_on_longest_path(exact) == 2  # a copy
    assert merge["interior_relative_diff"] < 1e-5 < diff == pytest.approx(
        ((approx(x) - exact(x)).abs().max() / exact(x).abs().max()).item(), rel=1e-5)  # error on the border ring


@pytest.fixture
def untransportable_model():
    """A registered model whose logits go through an op ONNX has no function for (the scaled Bessel i0e)."""

    class BesselHead(nn.Module):
        def __init__(self, num_classes, in_chans, width):
            super().__init__()
            self.conv, self.bn, self.relu = nn.Conv2d(in_chans, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU()
            self.fc = nn.Linear(width, num_classes)

        def forward(self, x):
            return torch.special.i0e(self.fc(self.relu(self.bn(self.conv(x))).mean((2, 3))))

    register_model("bessel_test")(lambda num_classes=10, in_chans=1, width=8: BesselHead(num_classes, in_chans, width))
    yield "bessel_test"
    del _BUILDERS["bessel_test"]


@pytest.mark.slow  # make test-all: over 5 s on 2 cores
def test_a_run_whose_model_onnx_cannot_export_says_so_once_and_completes(run_fast, untransportable_model, capsys):
    summary, run_dir = run_fast(f"model.name={untransportable_model}", "~model.kwargs.blocks", "stop.max_rounds=1",
                                "collapse.onnx=true", "collapse.runtimes=[eager,onnxruntime]")
    assert summary.status == "complete" and (run_dir / "collapsed.pt2").is_file()
    assert not (run_dir / "collapsed.onnx").exists() and summary.collapse.onnx_file is None
    warnings = [line for line in capsys.readouterr().err.splitlines() if line.startswith("warning: ")]
    assert len(warnings) == 1 and warnings[0].startswith(
        "warning: no collapsed.onnx: torch.onnx could not export BesselHead: DispatchError: No ONNX function found "
        "for <OpOverload(op='prims.bessel_i0e'")
    assert summary.collapse.runtimes["eager"] == "ok"
    assert summary.collapse.runtimes["onnxruntime"].startswith("not measured: torch.onnx could not export")
    assert set(summary.collapse.latency_ms) == {"eager"}


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_a_run_ships_onnx_times_every_runtime_and_measures_the_approximate_network_on_its_own(run_fast):
    """EASIER linearises two activations; merge=depth with the approximate opt-in merges the linearised block's 3x3
    convs (a border-ring error), and collapse.finetune recovers what that costs; every network's accuracy is its own."""
    summary, run_dir = run_fast("pruning=easier", "stop.max_rounds=2", "collapse.merge=depth",
                                "collapse.approximate_merges=true", "collapse.finetune.epochs=2",
                                "collapse.finetune.lr=0.005", "collapse.onnx=true",
                                "collapse.runtimes=[eager,compile,onnxruntime]")
    c = summary.collapse
    assert isinstance(c, CollapseResult) and c.runtimes == {"eager": "ok", "compile": "ok", "onnxruntime": "ok"}
    models = {"kept", "bn_folded", "collapsed", "approximate", "finetuned"}
    assert all(set(c.latency_ms[r]) == models and set(c.latency_iqr_ms[r]) == models for r in c.runtimes)
    assert c.onnx_file == "collapsed.onnx" and c.onnx_relative_diff <= c.tolerance
    onnx_model = OnnxRuntimeModel(run_dir / "collapsed.onnx")
    shipped = torch.export.load(str(run_dir / "collapsed.pt2")).module()
    batch = torch.randn(5, *c.input_shape[1:])
    assert_same(onnx_model(batch), shipped(batch).detach())
    approx, tuned = c.approximate, c.finetuned
    assert approx.file == "collapsed_approximate.pt2" and approx.onnx_file == "collapsed_approximate.onnx"
    assert tuned.file == "collapsed_finetuned.pt2" and tuned.onnx_file == "collapsed_finetuned.onnx"
    assert all((run_dir / f).is_file() for f in (approx.file, approx.onnx_file, tuned.file, tuned.onnx_file))
    inexact = [op for op in approx.operations if op["op"] == "merge" and not op["exact"]]
    assert inexact and approx.cost.weight_layers_on_longest_path < c.after.weight_layers_on_longest_path
    assert approx.relative_diff > 0 and 0 <= approx.test_acc <= 100
    assert (tuned.epochs, tuned.val_acc_before, tuned.test_acc_before) == (2, approx.val_acc, approx.test_acc)
    assert tuned.val_acc >= tuned.val_acc_before  # fine-tuning recovers (or keeps) what the merges cost
    assert same_network_cost(tuned.cost, approx.cost)  # the same network, trained
    again = read_summary(run_dir).collapse
    assert again.approximate == approx and again.finetuned == tuned  # every field in the records


def same_network_cost(tuned, collapsed) -> bool:
    """A fine-tuned collapsed network costs what the collapsed one does: the same layers, MACs and zeros (its pruned
    weights held at zero); its batch norms, folded back, give a bias to each conv that had none (a few params)."""
    return ((tuned.macs, tuned.macs_nonzero, tuned.weight_layers_on_longest_path) ==
            (collapsed.macs, collapsed.macs_nonzero, collapsed.weight_layers_on_longest_path)
            and 0 <= tuned.params - collapsed.params == tuned.params_nonzero - collapsed.params_nonzero <= 512)


def test_a_model_of_your_own_is_collapsed_measured_and_shipped_from_plain_inputs(tmp_path):
    """nepenthe.deploy takes a Deployment of plain values, not a configured run (docs/library.md)."""
    from nepenthe.config import CollapseConfig
    from nepenthe.deploy import Deployment, collapse_kept, measure_collapsed
    from nepenthe.entropy import measure_entropy

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Flatten(),
                          nn.Linear(8 * 6 * 6, 3)).eval()
    images = torch.randn(16, 1, 6, 6)
    with torch.no_grad():  # the ReLU never switches OFF: it is the identity on these images
        model[1].bias.fill_(50.0)
    stats = measure_entropy(model, {"2": model[2]}, [images])
    calls = []

    def assess(network, fp32=False):
        calls.append(network)
        return {"val_acc": 75.0, "test_acc": 70.0}

    settings = CollapseConfig(runtimes=["eager"], onnx=False, latency_batches=[1], latency_min_run_time=0.02,
                              latency_rounds=1)
    d = Deployment(model, images, settings, assess, layouts={"2": "channels_first"})
    small, report = collapse_kept(d, stats)
    # the batch norm folds into the conv (963 -> 947 parameters), the always-ON ReLU is the identity, and no merge
    # crosses the flatten: conv and linear stay
    assert (report.before.params, report.after.params, report.after.weight_layers_on_longest_path) == (963, 947, 2)
    assert report.relative_diff_vs_original < 1e-5
    result = measure_collapsed(d, small, report, tmp_path)
    assert (result.test_acc, result.val_acc, result.file) == (70.0, 75.0, "collapsed.pt2") and calls == [small]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["collapsed.pt2"]
    assert set(result.latency_ms["eager"]) == {"kept", "bn_folded", "collapsed"}
    assert torch.allclose(small(images), model(images), atol=1e-4)
