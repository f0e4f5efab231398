from nepenthe.config import StopConfig
from nepenthe.loop import kept_round, stop_reason
from nepenthe.pruning.methods import PruningPlan
from nepenthe.records import RoundRecord


def records(*val_k):
    return [RoundRecord(round=i, val_acc=v, k=k) for i, (v, k) in enumerate(val_k)]


def config(max_drop=1.0, max_rounds=10, target=None):
    return StopConfig(max_drop=max_drop, max_rounds=max_rounds, target_zero_units=target)


def test_stop_on_accuracy_drop_keeps_the_last_round_within_max_drop():
    rs = records((90.0, 0), (89.5, 0), (89.1, 1), (88.9, 2))  # round 3 is 1.1 points below dense
    assert stop_reason(config(), rs, PruningPlan({"a": 1})) == "accuracy_drop"
    assert kept_round(rs, 1.0) == 2
    assert kept_round(rs, 0.6) == 1
    assert kept_round(records((90.0, 0), (80.0, 0)), 1.0) == 0


def test_stop_on_target_rounds_and_nothing_to_prune():
    rs = records((90.0, 0), (90.0, 2))
    assert stop_reason(config(target=2), rs, PruningPlan({"a": 1})) == "target_zero_units"
    assert stop_reason(config(target=3), rs, PruningPlan({"a": 1})) is None
    assert stop_reason(config(max_rounds=1), rs, None) == "max_rounds"
    assert stop_reason(config(), rs, PruningPlan({"a": 0})) == "nothing_to_prune"
