"""Samplers: built once from `SamplingConfig` for a model family, as diffusers' schedulers
are. A sampler owns the noise levels, `eta` and the SDE type; rollout, training and
evaluation step through it, and the model adapter keeps only what the network knows.

Noise levels are sigmas from 1 to 0 for rectified flow and DDIM timesteps for Stable
Diffusion, noisiest first; a step goes from `levels[j]` to `levels[j + 1]` of the levels a
step plan visits (`step_plan.StepPlan.schedule`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Protocol, Sequence

import torch

from fastvideo_grpo.sampling.sde import StepResult, ddim_ode_step, ddim_step, ode_step, sde_step, time_shift


class Sampler(Protocol):
    # The N+1 levels of the full schedule, noisiest first.
    levels: torch.Tensor

    def levels_at(self, positions: Sequence[float]) -> torch.Tensor:
        """The noise levels at `positions` along `levels` (`step_plan.StepPlan.visited`):
        levels[p] at an integer position; a fractional one (`sampling.post_window_spacing:
        even_t`) lies between two levels, evenly in the schedule's own time."""

    def sde_step(self, output: torch.Tensor, x: torch.Tensor, levels: torch.Tensor, j: int,
                 noise: torch.Tensor | None = None, prev_sample: torch.Tensor | None = None) -> StepResult:
        """Stochastic step j and the log-prob of its result (Gaussian; for CPS as
        `sampling.cps_log_prob` says): rollout passes `noise`, training the stored
        `prev_sample` (see `sde.sample_or_replay`)."""

    def ode_step(self, output: torch.Tensor, x: torch.Tensor, levels: torch.Tensor, j: int) -> torch.Tensor:
        """Deterministic first-order step j: no noise, no log-prob."""

    def pred_original(self, output: torch.Tensor, x: torch.Tensor, levels: torch.Tensor, j: int) -> torch.Tensor:
        """The clean prediction x0_hat from the network output at levels[j]."""

    def noise_level(self, levels: torch.Tensor, j: int) -> tuple[float, float]:
        """(alpha, sigma) of x = alpha * x0 + sigma * noise at levels[j] (higher-order solvers)."""

    def scored_latents(self, last: StepResult) -> torch.Tensor:
        """What the reward scores after a trajectory that ends with the SDE step `last`."""


@dataclass
class RectifiedFlowSampler:
    """The network predicts the velocity v = noise - data; x0_hat = x - sigma * v."""

    levels: torch.Tensor  # sigmas, sde.sigma_schedule(N, shift)
    eta: float
    sde_type: str  # "dance", "flow_grpo" or "cps"
    cps_log_prob: str = "gaussian"  # sampling.cps_log_prob
    # The shift of `levels`, for levels between them (`levels_at`); None: integer positions only.
    shift: float | None = None

    def levels_at(self, positions) -> torch.Tensor:
        """A fractional position p is time_shift(1 - p / N): evenly in unshifted time, as
        sigma_schedule places the levels (MixGRPO-Flash's post-window levels)."""
        fractional = [p for p in positions if not float(p).is_integer()]
        if fractional and self.shift is None:
            raise ValueError(f"levels at fractional positions {fractional} need the schedule's shift")
        n = len(self.levels) - 1
        return torch.stack([self.levels[int(p)] if float(p).is_integer()
                            else time_shift(torch.tensor(1 - p / n, dtype=self.levels.dtype), self.shift)
                            for p in positions])

    def sde_step(self, output, x, levels, j, noise=None, prev_sample=None) -> StepResult:
        return sde_step(output, x, levels, j, self.eta, self.sde_type, prev_sample=prev_sample, noise=noise,
                        cps_log_prob=self.cps_log_prob)

    def ode_step(self, output, x, levels, j) -> torch.Tensor:
        return ode_step(output, x, levels, j)

    def pred_original(self, output, x, levels, j) -> torch.Tensor:
        return x - float(levels[j]) * output

    def noise_level(self, levels, j) -> tuple[float, float]:
        sigma = float(levels[j])
        return 1.0 - sigma, sigma

    def scored_latents(self, last: StepResult) -> torch.Tensor:
        """x0_hat = x_{N-1} - sigma_{N-1} * v, as DanceGRPO decodes: the SDE's x_N still carries
        the last step's noise (std eta * sqrt(sigma_{N-1})), which no trained step produced."""
        return last.pred_original


@dataclass
class DDIMSampler:
    """The network predicts the noise eps; the DDIM step with eta > 0 is Gaussian."""

    levels: torch.Tensor  # DDIM timesteps, sde.ddim_timesteps(N, ...), the last one negative
    eta: float
    alphas_cumprod: torch.Tensor
    # alpha_bar past the last timestep (set_alpha_to_one=False: alpha_bar_0).
    final_alpha_cumprod: float

    def levels_at(self, positions) -> torch.Tensor:
        fractional = [p for p in positions if not float(p).is_integer()]
        if fractional:
            raise ValueError(f"positions {fractional} lie between DDIM timesteps, which are integers: "
                             "sampling.post_window_spacing=even_t is for rectified flow; use 'grid'")
        return self.levels[[int(p) for p in positions]]

    def sde_step(self, output, x, levels, j, noise=None, prev_sample=None) -> StepResult:
        return ddim_step(output, x, levels, j, self.eta, self.alphas_cumprod, self.final_alpha_cumprod,
                         prev_sample=prev_sample, noise=noise)

    def ode_step(self, output, x, levels, j) -> torch.Tensor:
        return ddim_ode_step(output, x, levels, j, self.alphas_cumprod, self.final_alpha_cumprod)

    def alpha_bar(self, levels: torch.Tensor, j: int) -> float:
        t = int(levels[j])
        return float(self.alphas_cumprod[t]) if t >= 0 else self.final_alpha_cumprod

    def pred_original(self, output, x, levels, j) -> torch.Tensor:
        alpha_bar = self.alpha_bar(levels, j)
        return (x - math.sqrt(1 - alpha_bar) * output) / math.sqrt(alpha_bar)

    def noise_level(self, levels, j) -> tuple[float, float]:
        alpha_bar = self.alpha_bar(levels, j)
        return math.sqrt(alpha_bar), math.sqrt(1 - alpha_bar)

    def scored_latents(self, last: StepResult) -> torch.Tensor:
        """x_N, the DDIM step's sample into alpha_bar_0: what DanceGRPO's SD pipeline (and
        diffusers' StableDiffusionPipeline) decodes."""
        return last.prev_sample
