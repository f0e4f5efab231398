"""nepenthe.collapse.measure: latency of models timed side by side."""

import torch
from torch import nn

from nepenthe.collapse.measure import latency_ms, latency_stats


def test_latency_stats_pools_every_timed_block_of_every_round():
    small, large = nn.Linear(64, 64), nn.Sequential(*[nn.Linear(64, 64) for _ in range(8)])
    stats = latency_stats({"small": small, "large": large}, torch.randn(1, 64), (1, 4), min_run_time=0.01, rounds=3)
    assert set(stats) == {"small", "large"} and set(stats["small"]) == {"batch_1", "batch_4"}
    for per_batch in stats.values():
        for s in per_batch.values():
            assert 0 < s["p25"] <= s["median"] <= s["p75"] and s["n"] >= 3  # at least one block per round
    assert latency_ms({"small": small}, torch.randn(1, 64), (2,), min_run_time=0.01, rounds=1)["small"]["batch_2"] > 0
