"""Rectified-flow sampling: sigma schedule, SDE steps with Gaussian log-probs, ODE step.

Notation: a step goes from sigma (noisier) to sigma_next (cleaner); v is the network's
velocity prediction (noise - data), so x0_hat = x - sigma * v.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch


def time_shift(s: torch.Tensor, shift: float) -> torch.Tensor:
    """sigma = shift * s / (1 + (shift - 1) * s)."""
    return shift * s / (1 + (shift - 1) * s)


def sigma_schedule(num_steps: int, shift: float) -> torch.Tensor:
    """N+1 sigmas from 1 to 0: time_shift(linspace(1, 0, N+1)). [N+1], float64."""
    return time_shift(torch.linspace(1.0, 0.0, num_steps + 1, dtype=torch.float64), shift)


@dataclass
class StepResult:
    prev_sample: torch.Tensor  # x_{k+1}
    log_prob: torch.Tensor  # [B], fp32
    mean: torch.Tensor
    std: torch.Tensor  # scalar or broadcastable to mean


def gaussian_log_prob(x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor | float) -> torch.Tensor:
    """log N(x; mean, std^2) averaged over all but the batch dim, in fp32. [B]."""
    x, mean = x.float(), mean.float()
    std = torch.as_tensor(std, dtype=torch.float32, device=mean.device)
    log_density = -((x - mean) ** 2) / (2 * std**2) - torch.log(std) - 0.5 * math.log(2 * math.pi)
    return log_density.mean(dim=tuple(range(1, log_density.ndim)))


def dance_mean_std(v: torch.Tensor, x: torch.Tensor, sigma: float, sigma_next: float, eta: float):
    """DanceGRPO reverse SDE: mean = x + dsigma*v - eta^2/2 * score * dsigma, std = eta*sqrt(-dsigma)."""
    dsigma = sigma_next - sigma
    x0_hat = x - sigma * v
    score = -(x - (1 - sigma) * x0_hat) / sigma**2
    mean = x + dsigma * v - 0.5 * eta**2 * score * dsigma
    std = eta * math.sqrt(sigma - sigma_next)
    return mean, torch.tensor(std, dtype=torch.float32)


def flow_grpo_mean_std(v: torch.Tensor, x: torch.Tensor, sigma: float, sigma_next: float,
                       eta: float, sigma_max: float):
    """Flow-GRPO marginal-preserving SDE with std_t = eta*sqrt(sigma/(1-sigma)).

    At sigma = 1 the ratio is evaluated at sigma_max (the first sigma below 1), as in Flow-GRPO.
    """
    dt = sigma_next - sigma
    std_t = eta * math.sqrt(sigma / (1 - (sigma_max if sigma == 1 else sigma)))
    mean = x * (1 + std_t**2 / (2 * sigma) * dt) + v * (1 + std_t**2 * (1 - sigma) / (2 * sigma)) * dt
    std = std_t * math.sqrt(-dt)
    return mean, torch.tensor(std, dtype=torch.float32)


def sde_step(
    v: torch.Tensor,
    x: torch.Tensor,
    sigmas: torch.Tensor,
    k: int,
    eta: float,
    sde_type: str = "dance",
    prev_sample: torch.Tensor | None = None,
    noise: torch.Tensor | None = None,
) -> StepResult:
    """One stochastic step k (sigmas[k] -> sigmas[k+1]) and the log-prob of its result.

    Rollout passes `noise` and gets x_{k+1} = mean + std * noise; training passes the
    stored `prev_sample` to re-evaluate its log-prob under the current policy.
    """
    sigma, sigma_next = float(sigmas[k]), float(sigmas[k + 1])
    if sde_type == "dance":
        mean, std = dance_mean_std(v, x, sigma, sigma_next, eta)
    elif sde_type == "flow_grpo":
        mean, std = flow_grpo_mean_std(v, x, sigma, sigma_next, eta, float(sigmas[1]))
    else:
        raise ValueError(f"sde_type {sde_type!r} is not one of ['dance', 'flow_grpo']")
    if prev_sample is None:
        if noise is None:
            raise ValueError("sde_step needs either prev_sample or noise")
        prev_sample = mean + std.to(mean.dtype) * noise.to(mean.dtype)
    log_prob = gaussian_log_prob(prev_sample.detach(), mean, std)
    return StepResult(prev_sample=prev_sample, log_prob=log_prob, mean=mean, std=std)


def ode_step(v: torch.Tensor, x: torch.Tensor, sigmas: torch.Tensor, k: int) -> torch.Tensor:
    """Euler step of the probability-flow ODE: x + (sigma_next - sigma) * v."""
    return x + (float(sigmas[k + 1]) - float(sigmas[k])) * v
