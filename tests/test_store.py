"""nepenthe.store: checkpoints that survive a killed job, refuse damage, and restore a model exactly."""

import pytest
import torch
from torch import nn

from nepenthe.errors import NepentheError
from nepenthe.pruning.methods import Uniform, apply_plan
from nepenthe.pruning.masks import remaining
from nepenthe.records import RoundRecord
from nepenthe.rundir import RunDir
from nepenthe.store import (DirStore, MemoryStore, compact_state, load_checkpoint, load_compact_state,
                            restore_model, save_checkpoint)
from test_methods import TwoUnitNet


def small_model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 64, 3), nn.ReLU(), nn.Conv2d(64, 64, 3))


def test_a_checkpoint_with_4kb_zeroed_inside_a_weight_is_refused_naming_the_fallback(tmp_path):
    model = small_model()
    save_checkpoint(tmp_path, 0, model, [RoundRecord(round=0)], {})
    path = save_checkpoint(tmp_path, 1, model, [RoundRecord(round=0), RoundRecord(round=1)], {})
    data = bytearray(path.read_bytes())
    start = data.find(model[2].weight.detach().numpy().tobytes()[:64])
    assert start > 0
    size = len(data)
    data[start + 1024:start + 1024 + 4096] = bytes(4096)
    path.write_bytes(bytes(data))
    assert path.stat().st_size == size  # right size, still unpickles: only the hash tells
    with pytest.raises(NepentheError) as info:
        load_checkpoint(path)
    assert str(info.value) == (f"checkpoint {path} is corrupt (its content does not match its SHA-256); delete it and "
                               f"re-run the command to resume from round_000.pt (the round before)")
    assert load_checkpoint(RunDir(tmp_path).checkpoint(0)).round == 0


def test_compact_checkpoint_state_round_trips_masks_and_outputs():
    model = TwoUnitNet()
    apply_plan(model, Uniform(0.5).plan(model, model.units(), {}))
    state, masks = compact_state(model)
    assert set(masks) == {"fc1", "fc2"} and masks["fc1"].dtype == torch.bool
    fresh = load_compact_state(TwoUnitNet(), state, masks)
    x = torch.randn(5, 4)
    assert torch.equal(fresh(x), model(x))
    assert remaining(fresh.fc2) == 32


@pytest.mark.parametrize("store_kind", ["dir", "memory"])
def test_both_stores_restore_a_round_with_its_masks_and_identity_swaps(tmp_path, store_kind):
    model = TwoUnitNet()
    apply_plan(model, Uniform(0.5).plan(model, model.units(), {}))
    model.act2 = nn.Identity()
    records = [RoundRecord(round=0, val_acc=50.0), RoundRecord(round=1, val_acc=49.0, replaced_by_identity=["act2"])]
    store = DirStore(tmp_path) if store_kind == "dir" else MemoryStore()
    store.save(1, model, records, {"seed": 0})
    ckpt = store.load(1)
    assert ckpt.round == 1 and ckpt.records == records and ckpt.config == {"seed": 0}
    fresh = restore_model(TwoUnitNet(), ckpt)
    x = torch.randn(4, 4)
    assert isinstance(fresh.act2, nn.Identity) and remaining(fresh.fc2) == 32 and torch.equal(fresh(x), model(x))
    epochs = store.epoch_checkpoints(1, {"seed": 0})
    epochs.save(model, {"epoch": 1, "epochs": 3})
    restored = epochs.restore(model)  # the round in progress: the same (pruned) model
    assert restored == ({"epoch": 1, "epochs": 3} if store_kind == "dir" else None)  # memory: nothing to resume
    assert (store.latest() is not None) == (store_kind == "dir")


def test_a_schema_1_checkpoint_still_loads(tmp_path):
    """Checkpoints written before typed records hold plain dicts (``linearized``): they load and upgrade."""
    import hashlib, io, json  # noqa: E401

    from nepenthe.store import content_hash

    model = TwoUnitNet()
    state, masks = compact_state(model)
    meta = {"round": 0, "records": [{"round": 0, "val_acc": 50.0, "linearized": ["act1"]}], "config": {"seed": 0}}
    buffer = io.BytesIO()
    torch.save({**meta, "state": state, "masks": masks, "sha256": content_hash(state, masks, meta)}, buffer)
    RunDir(tmp_path).checkpoint(0).parent.mkdir(parents=True)
    RunDir(tmp_path).checkpoint(0).write_bytes(buffer.getvalue())
    ckpt = load_checkpoint(RunDir(tmp_path).checkpoint(0))
    assert ckpt.records[0].replaced_by_identity == ["act1"] and ckpt.records[0].val_acc == 50.0
