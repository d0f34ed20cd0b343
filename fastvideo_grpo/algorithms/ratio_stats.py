"""GRPO's importance ratio, per third of the schedule (the "early", "middle" and "late"
transitions): its mean, std, min, max and clip fraction, which the health monitor reads."""

from __future__ import annotations

import torch

from fastvideo_grpo.metrics import IterationStats

BUCKETS = ("early", "middle", "late")


def timestep_bucket(j: int, num_transitions: int) -> str:
    """The third of the trajectory transition j lies in."""
    return BUCKETS[min(3 * j // num_transitions, 2)]


def declare_ratio_stats(stats: IterationStats) -> None:
    """Every third exists on every rank, whichever timesteps a rank trains."""
    for bucket in BUCKETS:
        for suffix in ("mean", "sq_mean", "clip_frac"):
            stats.declare(f"ratio/{bucket}_{suffix}", "pooled")
        stats.declare(f"ratio/{bucket}_min", "min")
        stats.declare(f"ratio/{bucket}_max", "max")


def record_ratio(stats: IterationStats, ratio: torch.Tensor, j: int, num_transitions: int, clip_range: float) -> None:
    """The ratio's distribution per third of the schedule: mean, std, min, max and clip
    fraction over all the (sample, transition) pairs trained there on every rank."""
    r = ratio.detach().double()
    name = f"ratio/{timestep_bucket(j, num_transitions)}"
    stats.pooled(f"{name}_mean", r.sum(), r.numel())
    stats.pooled(f"{name}_sq_mean", r.pow(2).sum(), r.numel())
    stats.min(f"{name}_min", r.min())
    stats.max(f"{name}_max", r.max())
    stats.pooled(f"{name}_clip_frac", ((r - 1).abs() > clip_range).sum(), r.numel())
