"""Healing the shallow network: distillation from the dense model while fine-tuning, and batch norms put back into a
collapsed network while it fine-tunes (nepenthe/distill.py, nepenthe/collapse/renormalize.py)."""

import math

import pytest
import torch
from conftest import FAST, SYNTHETIC, compose_config
from torch import fx, nn

import train
from nepenthe.collapse.renormalize import fold_batchnorms_back, with_batchnorms
from nepenthe.config import config_hash, semantic_dict
from nepenthe.data.fashion_mnist import DEBIAN_DIR, prepare_fashion_mnist
from nepenthe.distill import DistillationLoss, distillation_kl
from nepenthe.errors import ConfigError
from nepenthe.tracking import read_rounds, read_summary
from test_deploy import same_network_cost


def test_the_distillation_term_is_t_squared_kl_from_the_softened_teacher():
    student, teacher = torch.tensor([[0.0, 0.0]]), torch.tensor([[math.log(3.0), 0.0]])
    # T = 1: teacher (0.75, 0.25), student (0.5, 0.5)
    expected = 0.75 * math.log(0.75 / 0.5) + 0.25 * math.log(0.25 / 0.5)
    assert distillation_kl(student, teacher, 1.0).item() == pytest.approx(expected, abs=1e-7)
    # T = 2: teacher softmax(log3 / 2, 0) = (sqrt3, 1) / (sqrt3 + 1); times T² = 4
    p = math.sqrt(3) / (math.sqrt(3) + 1)
    soft = p * math.log(p / 0.5) + (1 - p) * math.log((1 - p) / 0.5)
    assert distillation_kl(student, teacher, 2.0).item() == pytest.approx(4 * soft, abs=1e-7)
    # a batch: the mean over its rows; the same logits: zero
    batch = distillation_kl(torch.cat([student, teacher]), torch.cat([teacher, teacher]), 1.0)
    assert batch.item() == pytest.approx(expected / 2, abs=1e-7)
    assert distillation_kl(teacher, teacher, 3.0).item() == pytest.approx(0.0, abs=1e-7)


def test_the_distillation_loss_runs_a_frozen_copy_of_the_teacher_on_the_batch_the_student_saw():
    torch.manual_seed(0)
    teacher, student = nn.Linear(4, 3), nn.Linear(4, 3)
    term = DistillationLoss(teacher, weight=0.5, temperature=2.0)
    with torch.no_grad():
        teacher.weight.add_(1.0)  # the caller's model changing afterwards changes nothing: the term holds a copy
    assert not any(p.requires_grad for p in term.teacher.parameters())
    term.attach(student)
    x = torch.randn(8, 4)
    out = student(x)
    value = term()
    expected = 0.5 * distillation_kl(out, term.teacher(x), 2.0)
    assert value.item() == pytest.approx(expected.item(), rel=1e-6) and value.item() > 0
    value.backward()
    assert student.weight.grad is not None and term.teacher.weight.grad is None
    with pytest.raises(ConfigError, match="has seen no batch"):  # the batch is not kept past its step
        term()
    term.detach()
    student(x)
    with pytest.raises(ConfigError, match="has seen no batch"):  # detached: the hook is gone
        term()
    with pytest.raises(ConfigError, match="weight > 0 and temperature > 0; got weight=0"):
        DistillationLoss(teacher, weight=0, temperature=2.0)


def test_distillation_off_keeps_every_earlier_runs_identity_and_on_is_part_of_it():
    base = train.to_run_config(compose_config(SYNTHETIC + FAST))
    assert "distill" not in semantic_dict(base)["finetune"] and "teacher" not in semantic_dict(base)["finetune"]
    distilled = train.to_run_config(compose_config(SYNTHETIC + FAST + ["finetune.distill.weight=1"]))
    assert semantic_dict(distilled)["finetune"]["distill"] == {"weight": 1.0, "temperature": 4.0}
    assert config_hash(distilled) != config_hash(base)
    # the collapsed network's fine-tuning is not the run's identity (collapse.* can be redone on a saved run)
    collapsed = train.to_run_config(compose_config(SYNTHETIC + FAST + ["collapse.finetune.distill.weight=1"]))
    assert config_hash(collapsed) == config_hash(base)


@pytest.mark.parametrize("override, message", [
    ("finetune.distill.weight=-1", "finetune.distill.weight=-1.0 must be >= 0"),
    ("finetune.distill.temperature=0", "finetune.distill.temperature=0.0 must be > 0"),
    ("collapse.finetune.distill.temperature=-2", "collapse.finetune.distill.temperature=-2.0 must be > 0"),
    ("finetune.teacher=/nonexistent/run", "finetune.teacher='/nonexistent/run' is not a directory"),
])
def test_bad_distillation_settings_are_refused_naming_the_value(override, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(".", r"\.")):
        train.to_run_config(compose_config(SYNTHETIC + FAST + [override]))


class ConvNet(nn.Module):
    """Two convs with biases and nothing between them to normalise: what a collapsed network looks like."""

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Conv2d(3, 6, 3, padding=1), nn.Conv2d(6, 4, 3, stride=2)
        self.head = nn.Linear(4, 5)

    def forward(self, x):
        return self.head(self.b(torch.relu(self.a(x))).mean(dim=(2, 3)))


def test_inserted_batch_norms_are_the_identity_until_trained_and_fold_back_exactly():
    torch.manual_seed(0)
    net = fx.symbolic_trace(ConvNet()).eval()
    images = torch.randn(16, 3, 10, 10) * 2 + 1
    before = net(images)
    renormed, inserted = with_batchnorms(net, images)
    assert inserted == ["a_renorm", "b_renorm"]
    assert sum(isinstance(m, nn.BatchNorm2d) for m in renormed.modules()) == 2
    torch.testing.assert_close(renormed.eval()(images), before, rtol=0, atol=1e-5)  # eval: the identity
    # train mode on the images the statistics came from: the batch's own statistics, the identity again
    torch.testing.assert_close(renormed.train()(images), before, rtol=0, atol=1e-4)
    assert all(not isinstance(m, nn.BatchNorm2d) for m in net.modules())  # the network given is left as it was
    with torch.no_grad():  # what training does to them: other scales, shifts and statistics
        for name in inserted:
            norm = renormed.get_submodule(name)
            for tensor in (norm.weight, norm.bias, norm.running_mean):
                tensor.add_(torch.randn_like(tensor) * 0.3)
            norm.running_var.mul_(1.5)
    trained = renormed.eval()(images)
    assert (trained - before).abs().max() > 0.05
    folded = fold_batchnorms_back(renormed, inserted)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in folded.modules())
    assert sum(p.numel() for p in folded.parameters()) == sum(p.numel() for p in net.parameters())
    torch.testing.assert_close(folded(images), trained, rtol=0, atol=1e-5)  # the fold is exact


def test_a_teacher_of_another_architecture_is_refused_before_anything_is_written(run_fast, tmp_path):
    from nepenthe.experiment import Experiment
    from nepenthe.records import RoundRecord
    from nepenthe.store import save_checkpoint

    narrow = Experiment(train.to_run_config(compose_config(SYNTHETIC + FAST + ["model.kwargs.width=4"])))
    save_checkpoint(tmp_path / "narrow", 0, narrow.model, [RoundRecord(round=0)], {})
    with pytest.raises(Exception, match="does not fit this run's model compact_cnn"):
        run_fast("finetune.distill.weight=1", f"finetune.teacher={tmp_path / 'narrow'}", run_dir=tmp_path / "student")
    assert not (tmp_path / "student").exists()
    with pytest.raises(Exception, match="holds no round-0 checkpoint"):
        run_fast("finetune.distill.weight=1", f"finetune.teacher={tmp_path}", run_dir=tmp_path / "student")


@pytest.mark.slow
@pytest.mark.timeout(600)
@pytest.mark.skipif(not DEBIAN_DIR.is_dir(), reason="needs Debian's dataset-fashion-mnist (make data)")
def test_a_distilled_run_and_its_collapsed_network_fine_tuned_with_batch_norms_on_fashion_mnist(run_fast, tmp_path):
    """One distillation job and one collapsed-network fine-tune (batch norms back in, distilled) on a few hundred
    Fashion-MNIST images: each part recorded, the fine-tuned network shipped beside the exact one at its cost."""
    prepare_fashion_mnist(tmp_path / "data")
    summary, run_dir = run_fast(
        "pruning=nepenthe", "model=resnet18_cifar", "model.kwargs.width=8", "stop.max_rounds=2", "train.epochs=2",
        "train.batch_size=32", "finetune.distill.weight=1", "collapse.finetune.epochs=1",
        "collapse.finetune.lr=0.01", "collapse.finetune.distill.weight=1", "collapse.onnx=true",
        "collapse.runtimes=[onnxruntime]",
        data=["dataset=fashion_mnist", f"dataset.root={tmp_path / 'data'}", "dataset.kwargs.train_subset=600",
              "dataset.kwargs.val_size=200", "dataset.kwargs.test_subset=300"],
    )
    records = read_rounds(run_dir)
    assert records[0].train_distill_loss is None  # the dense round is the teacher: nothing to distil from
    assert all(r.train_distill_loss > 0 for r in records[1:])
    for r in records:  # float32 batches summed in float64: equal to rounding
        assert r.train_ce_loss + (r.train_distill_loss or 0.0) == pytest.approx(r.train_loss, rel=1e-6)
    c = read_summary(run_dir).collapse
    tuned = c.finetuned
    assert (tuned.epochs, tuned.lr, tuned.batchnorm, tuned.distill_weight) == (1, 0.01, True, 1.0)
    assert tuned.train_distill_loss > 0 and tuned.train_loss == pytest.approx(
        tuned.train_ce_loss + tuned.train_distill_loss, rel=1e-6)
    assert (tuned.val_acc_before, tuned.test_acc_before) == (c.val_acc, c.test_acc)
    assert same_network_cost(tuned.cost, c.after)  # batch norms folded back, zeros held: its layers, MACs, zeros
    assert tuned.cost.macs_nonzero < tuned.cost.macs  # pruned weights are still there, as zeros
    assert tuned.relative_diff > 0 and tuned.file == "collapsed_finetuned.pt2"
    assert (run_dir / "collapsed_finetuned.onnx").is_file() and (run_dir / "collapsed.onnx").is_file()
    assert set(c.latency_ms["onnxruntime"]) == {"kept", "bn_folded", "collapsed", "finetuned"}


def test_a_collapsed_network_keeps_its_zeros_while_it_fine_tunes():
    from nepenthe.pruning.masks import make_permanent, mask_zero_weights

    torch.manual_seed(0)
    net = ConvNet()
    with torch.no_grad():
        net.a.weight[:3] = 0.0  # three channels pruned away
    assert mask_zero_weights(net) == ["a"]  # only layers holding zeros are masked
    optimizer = torch.optim.SGD(net.parameters(), lr=0.5)
    net(torch.randn(4, 3, 10, 10)).pow(2).sum().backward()
    optimizer.step()
    make_permanent(net)
    assert int((net.a.weight == 0).sum()) == 3 * 3 * 9 and not hasattr(net.a, "weight_orig")
    assert bool((net.b.weight != 0).all())  # the others trained freely
