"""The step plan of an iteration: which transitions of the sampling trajectory are
stochastic (SDE, with a log-prob) and may be trained, and which noise levels are visited.

With `sampling.sde_window_size: 0` (DanceGRPO) every one of the N steps is an SDE step
and the first N-1 are trainable. With a window of w steps (MixGRPO, Flow-GRPO-Fast) only
the window is stochastic and trained; the steps before it are deterministic and, since a
group shares its initial noise, the same for all G samples (the rollout computes them once
per group); the steps after it run the ODE solver, on `sampling.post_window_steps` noise
levels resampled from the rest of the schedule when set (MixGRPO-Flash). Every plan ends at
the schedule's last level, fully denoised. DiffusionNFT's rollout (`train.algorithm: nft`)
is deterministic throughout: `ode_plan`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from fastvideo_grpo.config import Config, SamplingConfig
from fastvideo_grpo.sampling.samplers import Sampler
from fastvideo_grpo.sampling.seeding import Purpose, make_generator


@dataclass(frozen=True)
class StepPlan:
    # Positions on the full (N+1)-level schedule, in the order visited; transition j goes
    # from level visited[j] to visited[j+1]. Integers are the schedule's levels; fractional
    # positions (`sampling.post_window_spacing: even_t`) lie between two of them.
    visited: tuple[float, ...]
    # The stochastic transitions j, ascending.
    sde_steps: tuple[int, ...]
    # The transitions the update may train (a subset of sde_steps).
    trainable: tuple[int, ...]

    @property
    def num_transitions(self) -> int:
        return len(self.visited) - 1

    @property
    def prefix_steps(self) -> int:
        """The deterministic transitions before the first SDE step: the same for every sample
        of a group that shares its initial noise (all of them in an SDE-free plan)."""
        return self.sde_steps[0] if self.sde_steps else self.num_transitions

    def schedule(self, sampler: Sampler) -> torch.Tensor:
        """The visited noise levels of the policy's sampler."""
        return sampler.levels_at(self.visited)


def random_start_bound(s: SamplingConfig) -> int:
    """The largest start `sampling.sde_window_schedule: random` draws (from 0, inclusive):
    `sampling.window_start_range` full N-1-w, mixgrpo N-2-w, flow_grpo_fast N//2-w."""
    n, w = s.num_steps, s.sde_window_size
    return {"full": n - 1 - w, "mixgrpo": n - 2 - w, "flow_grpo_fast": n // 2 - w}[s.window_start_range]


def window_start(s: SamplingConfig, iteration: int, generator: torch.Generator | None = None) -> int:
    """The first step of the SDE window in `iteration`.

    progressive (MixGRPO): starts 0, stride, 2 * stride, ... while they are trainable
    (<= N-2), then back to 0; a window that would pass N-2 is cut there
    (`build_step_plan`), so a cycle puts every trainable step in some window whatever the
    stride (<= w). random: drawn on [0, `random_start_bound`]."""
    if s.sde_window_schedule == "fixed":
        return s.sde_window_start
    if s.sde_window_schedule == "progressive":
        positions = (s.num_steps - 2) // s.sde_window_stride + 1
        return (iteration // s.sde_window_every) % positions * s.sde_window_stride
    if generator is None:
        raise ValueError("sampling.sde_window_schedule=random needs the iteration's generator")
    return int(torch.randint(random_start_bound(s) + 1, (1,), generator=generator))


def resample(levels: list[int], steps: int, spacing: str = "grid") -> list[float]:
    """`steps` + 1 positions from the first to the last of `levels` (consecutive schedule
    indices), evenly spaced: the coarser trajectory of MixGRPO-Flash after its window.
    "grid" rounds them to levels of the schedule; "even_t" keeps them fractional, evenly
    spaced in the schedule's unshifted time as MixGRPO-Flash places them
    (`Sampler.levels_at`)."""
    if steps <= 0 or steps >= len(levels) - 1:
        return levels
    positions = torch.linspace(0, len(levels) - 1, steps + 1, dtype=torch.float64)
    if spacing == "grid":
        return [levels[p] for p in positions.round().long().tolist()]
    return [levels[0] + (int(p) if p.is_integer() else p) for p in positions.tolist()]


def build_step_plan(s: SamplingConfig, iteration: int, generator: torch.Generator | None = None) -> StepPlan:
    n = s.num_steps
    if s.sde_window_size == 0:
        return StepPlan(tuple(range(n + 1)), tuple(range(n)), tuple(range(n - 1)))
    start = window_start(s, iteration, generator)
    after = min(start + s.sde_window_size, n - 1)  # the last transition, into the clean sample, is never trained
    visited = list(range(after)) + resample(list(range(after, n + 1)), s.post_window_steps, s.post_window_spacing)
    window = tuple(range(start, after))
    return StepPlan(tuple(visited), window, window)


def ode_plan(num_steps: int) -> StepPlan:
    """Every step deterministic: nothing is stochastic, nothing replayed."""
    return StepPlan(tuple(range(num_steps + 1)), (), ())


def iteration_plan(cfg: Config, iteration: int) -> StepPlan:
    """The sampling section's SDE window for iteration `iteration`'s rollout, drawn from the
    iteration's own generator (GRPO's plan; an algorithm may follow another)."""
    return build_step_plan(cfg.sampling, iteration, make_generator(cfg.train.seed, iteration, Purpose.STEP_PLAN))
