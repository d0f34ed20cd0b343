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
    rank adds the same number of values, so that is the global mean). `max(name, v)` and
    `min(name, v)`: over everything on every rank. `total(name, v)`: the sum over every rank.

    Sums are float64, added in order, so one rank's mean equals Python's
    `sum(values) / len(values)` of the same float32 values bit for bit."""

    def __init__(self, device: torch.device | str = "cpu"):
        self.device = torch.device(device)
        self._means: dict[str, list] = {}  # name -> [sum, count]
        self._maxes: dict[str, torch.Tensor] = {}
        self._totals: dict[str, torch.Tensor] = {}
        self._pooled: dict[str, list[torch.Tensor]] = {}  # name -> [sum, count]

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

    def min(self, name: str, value) -> None:
        # The minimum is the negated maximum of the negated values: one MAX reduction for both.
        self.max(f"-{name}", -self._value(value))

    def pooled(self, name: str, value_sum, count) -> None:
        """Sum over every rank of `value_sum` / sum of `count`: a mean over values that ranks
        hold different numbers of (NaN where there are none)."""
        entry = self._pooled.setdefault(name, [self._value(0.0), self._value(0.0)])
        entry[0] = entry[0] + self._value(value_sum)
        entry[1] = entry[1] + self._value(count)

    def declare(self, name: str, kind: str) -> None:
        """Add `name` with no value (`pooled`, `max` or `min`), so that it exists on every rank
        even where this rank adds nothing to it; an empty max or min reduces to NaN."""
        if kind == "pooled":
            self._pooled.setdefault(name, [self._value(0.0), self._value(0.0)])
        elif kind in ("max", "min"):
            key = name if kind == "max" else f"-{name}"
            self._maxes.setdefault(key, self._value(-math.inf))
        else:
            raise ValueError(f"kind {kind!r} is not one of ['pooled', 'max', 'min']")

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
        summed += [v for entry in self._pooled.values() for v in entry]
        maxes = list(self._maxes.values())
        if world.world_size > 1:
            summed, maxes = _all_reduce(summed, dist.ReduceOp.SUM, world), _all_reduce(maxes, dist.ReduceOp.MAX, world)
            summed = [v / world.world_size if i < len(self._means) else v for i, v in enumerate(summed)]
        pooled = summed[len(names):]
        values = dict(zip(names, (float(v) for v in summed[:len(names)])))
        for i, name in enumerate(self._pooled):
            total, count = float(pooled[2 * i]), float(pooled[2 * i + 1])
            values[name] = total / count if count > 0 else math.nan
        for name, v in zip(self._maxes, maxes):
            v = float(v) if math.isfinite(float(v)) else math.nan  # declared, never added
            if name.startswith("-"):
                values[name[1:]] = -v
            else:
                values[name] = v
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
    """After the reduction: stds from their moments (<name>_mean and <name>_sq_mean), and
    dropped groups and transformer rows as counts (sequence-parallel ranks share their
    samples, so each was counted sp_size times)."""
    for key in [k for k in metrics if k.endswith("_sq_mean")]:  # advantage, ratio/<third>
        base = key[:-len("_sq_mean")]
        metrics[f"{base}_std"] = population_std(metrics[f"{base}_mean"], metrics.pop(key))
    metrics["dropped_groups"] = round(metrics["dropped_groups"] / world.sp_size)
    for key in ("transformer_forwards_rollout", "transformer_forwards_train"):
        if key in metrics:
            metrics[key] = round(metrics[key] / world.sp_size)
