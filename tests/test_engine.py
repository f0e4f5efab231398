"""The training engine's options: epoch callbacks that resume exactly, device-resident batches, torch.compile."""

import signal
from dataclasses import replace

import pytest
import torch
from torch.nn.utils import prune

from nepenthe.data.loader import ArrayLoader, ImageSplit
from nepenthe import interrupt
from nepenthe.config import TrainConfig
from nepenthe.engine import TrainingPlan, fit
from nepenthe.models import create_model


def pruned_cnn():
    torch.manual_seed(0)
    model = create_model("compact_cnn", 10, 1, width=8)
    for m in model.modules():
        if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear)):
            prune.l1_unstructured(m, "weight", amount=0.5)
    return model


def loader():
    g = torch.Generator().manual_seed(1)
    split = ImageSplit(torch.randint(0, 256, (96, 1, 28, 28), dtype=torch.uint8, generator=g),
                       torch.randint(0, 10, (96,), generator=g))
    return ArrayLoader(split, 32, (0.5,), (0.25,), shuffle=True, augment=("crop", "flip"), seed=3)


PLAN = TrainingPlan(TrainConfig(epochs=3, lr=0.05, schedule="cosine"), device=torch.device("cpu"))


def test_fit_resumed_from_an_epoch_callback_ends_where_an_uninterrupted_fit_ends():
    reference = pruned_cnn()
    expected = fit(reference, loader(), PLAN)

    saved = []
    model = pruned_cnn()
    fit(model, loader(), PLAN, on_epoch_end=lambda state: saved.append((state, {k: v.clone() for k, v in
                                                                               model.state_dict().items()})))
    assert [s["epoch"] for s, _ in saved] == [1, 2, 3] and all(s["epochs"] == 3 for s, _ in saved)
    state, weights = saved[0]  # a fresh process after epoch 1: model state and fit state from the checkpoint
    torch.manual_seed(12345)  # whatever the global streams are now, the saved ones are restored
    resumed = pruned_cnn()
    resumed.load_state_dict(weights)
    result = fit(resumed, loader(), PLAN, resume=state)
    assert result == expected
    assert all(torch.equal(a, b) for a, b in zip(resumed.state_dict().values(), reference.state_dict().values()))


def test_device_resident_loader_yields_the_same_batches():
    source = loader()
    resident = ArrayLoader(source.split, 32, (0.5,), (0.25,), shuffle=True, augment=("crop", "flip"), seed=3,
                           device="cpu")
    for epoch in (0, 1):
        source.set_epoch(epoch)
        resident.set_epoch(epoch)
        assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(source, resident))


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_compiled_training_matches_eager_and_leaves_the_module_as_it_was():
    eager, compiled = pruned_cnn(), pruned_cnn()
    one = TrainingPlan(TrainConfig(epochs=1, lr=0.05, schedule="cosine"), device=torch.device("cpu"))
    expected = fit(eager, loader(), one)
    got = fit(compiled, loader(), replace(one, compile=True))
    assert got["train_loss"] == pytest.approx(expected["train_loss"], rel=1e-4)
    assert list(compiled.state_dict()) == list(eager.state_dict())  # no _orig_mod. prefix: checkpoints unchanged
    for name, m in compiled.named_modules():
        if hasattr(m, "weight_mask"):
            assert not bool((m.weight[m.weight_mask == 0]).any())  # pruned weights stayed zero through compile
            torch.testing.assert_close(m.weight, dict(eager.named_modules())[name].weight, rtol=1e-3, atol=1e-4)


def test_a_loss_term_is_added_to_every_batch_and_reported():
    class Constant:
        """A loss term worth 0.25 on every batch: the training loss grows by exactly that."""

        attached = detached = 0

        def attach(self, model):
            Constant.attached += 1

        def detach(self):
            Constant.detached += 1

        def __call__(self):
            return torch.tensor(0.25)

    class Scaled(Constant):
        def __call__(self):
            return torch.tensor(0.5)

    plain = fit(pruned_cnn(), loader(), PLAN)
    with_terms = fit(pruned_cnn(), loader(), PLAN, loss_terms={"a": Constant(), "b": Scaled()})
    # constants add nothing to the gradients: the same weights, the loss 0.75 higher, each part reported apart
    assert with_terms["train_loss"] == pytest.approx(plain["train_loss"] + 0.75, abs=1e-6)
    assert with_terms["train_ce_loss"] == pytest.approx(plain["train_loss"], abs=1e-6)
    assert with_terms["train_terms"] == pytest.approx({"a": 0.25, "b": 0.5}) and plain["train_terms"] == {}
    assert plain["train_ce_loss"] == plain["train_loss"]
    assert Constant.attached == Constant.detached == 2


def test_the_nan_hint_suggests_fp32_only_to_bf16_runs():
    from nepenthe.engine import _precision_hint

    assert _precision_hint(None) == "" and _precision_hint(torch.bfloat16) == " or use hardware.precision=fp32"


class StopAfter:
    """A loader that asks training to stop (as a signal handler does) once ``after`` batches of ``epoch`` are out."""

    def __init__(self, loader, epoch, after, signum):
        self.loader, self.epoch, self.after, self.signum, self.current = loader, epoch, after, signum, 0

    def set_epoch(self, epoch):
        self.current = epoch
        self.loader.set_epoch(epoch)

    def __len__(self):
        return len(self.loader)

    def __iter__(self):
        for i, batch in enumerate(self.loader):
            if self.current == self.epoch and i == self.after:
                interrupt.request(self.signum)
            yield batch


def test_a_signal_stops_training_at_a_batch_boundary_and_the_rest_of_the_epoch_resumes_exactly():
    reference = pruned_cnn()
    expected = fit(reference, loader(), PLAN)

    saved = []
    model = pruned_cnn()
    stopping = StopAfter(loader(), epoch=1, after=1, signum=signal.SIGUSR2)  # during the 2nd batch of epoch 2
    with pytest.raises(interrupt.StopRequested, match=r"stopped by SIGUSR2 in fit at epoch 2/3, batch 2/3"):
        fit(model, stopping, PLAN, on_epoch_end=lambda state: saved.append(
            (state, {k: v.clone() for k, v in model.state_dict().items()})))
    assert [(s["epoch"], s.get("batch")) for s, _ in saved] == [(1, None), (1, 2)]  # the epoch, then the stop
    assert interrupt.requested() is None  # the request was honoured once
    state, weights = saved[-1]
    resumed = pruned_cnn()
    resumed.load_state_dict(weights)
    torch.manual_seed(999)  # whatever the streams are now: the saved ones come back
    assert fit(resumed, loader(), PLAN, resume=state) == expected
    assert all(torch.equal(a, b) for a, b in zip(resumed.state_dict().values(), reference.state_dict().values()))
