import train
from nepenthe.config import RunConfig
from nepenthe.pruning.methods import PruningPlan


def records(*val_k):
    return [{"round": i, "val_acc": v, "k": k} for i, (v, k) in enumerate(val_k)]


def config(max_drop=1.0, max_rounds=10, target=None):
    cfg = RunConfig()
    cfg.stop.max_drop, cfg.stop.max_rounds, cfg.stop.target_zero_units = max_drop, max_rounds, target
    return cfg


def test_stop_on_accuracy_drop_keeps_the_last_round_within_max_drop():
    rs = records((90.0, 0), (89.5, 0), (89.1, 1), (88.9, 2))  # round 3 is 1.1 points below dense
    assert train.stop_reason(config(), rs, PruningPlan({"a": 1})) == "accuracy_drop"
    assert train.kept_round(rs, 1.0) == 2
    assert train.kept_round(rs, 0.6) == 1
    assert train.kept_round(records((90.0, 0), (80.0, 0)), 1.0) == 0


def test_stop_on_target_rounds_and_nothing_to_prune():
    rs = records((90.0, 0), (90.0, 2))
    assert train.stop_reason(config(target=2), rs, PruningPlan({"a": 1})) == "target_zero_units"
    assert train.stop_reason(config(target=3), rs, PruningPlan({"a": 1})) is None
    assert train.stop_reason(config(max_rounds=1), rs, None) == "max_rounds"
    assert train.stop_reason(config(), rs, PruningPlan({"a": 0})) == "nothing_to_prune"
