"""An iteration's statistics: accumulated on the device, each with its declared reduction
over ranks, and reduced once at the end of the iteration.

Adding a value costs no host sync (a `.item()` per micro-batch stalls the GPU pipeline);
`reduce` does one all-reduce per reduction kind.
"""

from __future__ import annotations

import math

import torch
import torch.distributed as dist

from fastvideo_grpo.parallel import World


class IterationStats:
    """`mean(name, v)`: the rank's mean of what was added, then the mean over ranks (every
    rank adds the same number of values, so that is the global mean). `max(name, v)`: the
    maximum over everything on every rank. `total(name, v)`: the sum over every rank.

    Sums are float64, added in order, so one rank's mean equals Python's
    `sum(values) / len(values)` of the same float32 values bit for bit."""

    def __init__(self, device: torch.device | str = "cpu"):
        self.device = torch.device(device)
        self._means: dict[str, list] = {}  # name -> [sum, count]
        self._maxes: dict[str, torch.Tensor] = {}
        self._totals: dict[str, torch.Tensor] = {}

    def _value(self, value) -> torch.Tensor:
        if isinstance(value, torch.Tensor):
            return value.detach().to(self.device, torch.float64).reshape(())
        return torch.tensor(float(value), dtype=torch.float64, device=self.device)

    def mean(self, name: str, value) -> None:
        entry = self._means.setdefault(name, [None, 0])
        v = self._value(value)
        entry[0] = v if entry[0] is None else entry[0] + v
        entry[1] += 1

    def max(self, name: str, value) -> None:
        v = self._value(value)
        self._maxes[name] = v if name not in self._maxes else torch.maximum(self._maxes[name], v)

    def total(self, name: str, value) -> None:
        v = self._value(value)
        self._totals[name] = v if name not in self._totals else self._totals[name] + v

    def count(self, name: str) -> int:
        """How many values `mean(name, ...)` took on this rank."""
        return self._means[name][1] if name in self._means else 0

    def reduce(self, world: World) -> dict[str, float]:
        """Every statistic over all ranks, in the order first added: a collective, every rank
        calls it with the same names added in the same order."""
        names = list(self._means) + list(self._totals)
        summed = [self._means[n][0] / self._means[n][1] for n in self._means] + list(self._totals.values())
        maxes = list(self._maxes.values())
        if world.world_size > 1:
            summed, maxes = _all_reduce(summed, dist.ReduceOp.SUM, world), _all_reduce(maxes, dist.ReduceOp.MAX, world)
            summed = [v / world.world_size if i < len(self._means) else v for i, v in enumerate(summed)]
        values = dict(zip(names, (float(v) for v in summed)))
        values.update(zip(self._maxes, (float(v) for v in maxes)))
        return values


def _all_reduce(values: list[torch.Tensor], op, world: World) -> list[torch.Tensor]:
    if not values:
        return values
    stacked = torch.stack(values).to(world.device)
    dist.all_reduce(stacked, op=op)
    return list(stacked.cpu())


def masked_mean(values: torch.Tensor, mask: torch.Tensor) -> float:
    """Mean over the masked samples; NaN (null in metrics.jsonl) when there are none."""
    return values[mask].mean() if mask.any() else float("nan")


def population_std(mean: float, square_mean: float) -> float:
    return math.sqrt(max(square_mean - mean ** 2, 0.0))


def finish_iteration_stats(metrics: dict[str, float], world: World) -> None:
    """After the reduction: the advantage std from its moments, and dropped groups and
    transformer rows as counts (sequence-parallel ranks share their samples, so each was
    counted sp_size times)."""
    metrics["advantage_std"] = population_std(metrics["advantage_mean"], metrics.pop("advantage_sq_mean"))
    metrics["dropped_groups"] = round(metrics["dropped_groups"] / world.sp_size)
    for key in ("transformer_forwards_rollout", "transformer_forwards_train"):
        if key in metrics:
            metrics[key] = round(metrics[key] / world.sp_size)
