"""The training engine's options: epoch callbacks that resume exactly, device-resident batches, torch.compile."""

import pytest
import torch
from torch.nn.utils import prune

from nepenthe.data.loader import ArrayLoader, ImageSplit
from nepenthe.engine import fit
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


OPTIONS = dict(lr=0.05, schedule="cosine", device=torch.device("cpu"))


def test_fit_resumed_from_an_epoch_callback_ends_where_an_uninterrupted_fit_ends():
    reference = pruned_cnn()
    expected = fit(reference, loader(), 3, **OPTIONS)

    saved = []
    model = pruned_cnn()
    fit(model, loader(), 3, on_epoch_end=lambda state: saved.append((state, {k: v.clone() for k, v in
                                                                             model.state_dict().items()})), **OPTIONS)
    assert [s["epoch"] for s, _ in saved] == [1, 2, 3] and all(s["epochs"] == 3 for s, _ in saved)
    state, weights = saved[0]  # a fresh process after epoch 1: model state and fit state from the checkpoint
    torch.manual_seed(12345)  # whatever the global streams are now, the saved ones are restored
    resumed = pruned_cnn()
    resumed.load_state_dict(weights)
    result = fit(resumed, loader(), 3, resume=state, **OPTIONS)
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
def test_compiled_training_matches_eager_and_leaves_the_module_as_it_was():
    eager, compiled = pruned_cnn(), pruned_cnn()
    expected = fit(eager, loader(), 1, **OPTIONS)
    got = fit(compiled, loader(), 1, compile_model=True, **OPTIONS)
    assert got["train_loss"] == pytest.approx(expected["train_loss"], rel=1e-4)
    assert list(compiled.state_dict()) == list(eager.state_dict())  # no _orig_mod. prefix: checkpoints unchanged
    for name, m in compiled.named_modules():
        if hasattr(m, "weight_mask"):
            assert not bool((m.weight[m.weight_mask == 0]).any())  # pruned weights stayed zero through compile
            torch.testing.assert_close(m.weight, dict(eager.named_modules())[name].weight, rtol=1e-3, atol=1e-4)
