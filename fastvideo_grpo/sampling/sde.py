"""Sampling steps with Gaussian log-probs.

Rectified flow: sigma schedule, SDE steps, ODE step. A step goes from sigma (noisier) to
sigma_next (cleaner); v is the network's velocity prediction (noise - data), so
x0_hat = x - sigma * v.

Diffusion (eps-prediction, Stable Diffusion): DDIM timesteps and the DDIM step with eta > 0,
whose transition is Gaussian. alpha_bar is the cumulative product of (1 - beta).
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
    # The step's clean prediction x0_hat (data the network points at from x_k).
    pred_original: torch.Tensor | None = None


def gaussian_log_prob(x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor | float) -> torch.Tensor:
    """log N(x; mean, std^2) averaged over all but the batch dim, in fp32. [B]."""
    x, mean = x.float(), mean.float()
    std = torch.as_tensor(std, dtype=torch.float32, device=mean.device)
    log_density = -((x - mean) ** 2) / (2 * std**2) - torch.log(std) - 0.5 * math.log(2 * math.pi)
    return log_density.mean(dim=tuple(range(1, log_density.ndim)))


def squared_error_log_prob(x: torch.Tensor, mean: torch.Tensor) -> torch.Tensor:
    """-(x - mean)^2 averaged over all but the batch dim, in fp32: Flow-GRPO's CPS log-prob,
    the Gaussian log-density times 2 std^2 less its constants. [B]."""
    return -((x.float() - mean.float()) ** 2).mean(dim=tuple(range(1, x.ndim)))


def dance_mean_std(v: torch.Tensor, x: torch.Tensor, sigma: float, sigma_next: float, eta: float):
    """DanceGRPO reverse SDE: mean = x + dsigma*v - eta^2/2 * score * dsigma, std = eta*sqrt(-dsigma)."""
    dsigma = sigma_next - sigma
    x0_hat = x - sigma * v
    score = -(x - (1 - sigma) * x0_hat) / sigma**2
    mean = x + dsigma * v - 0.5 * eta**2 * score * dsigma
    std = eta * math.sqrt(sigma - sigma_next)
    return mean, torch.tensor(std, dtype=torch.float32)


def flow_grpo_mean_std(v: torch.Tensor, x: torch.Tensor, sigma: float, sigma_next: float,
                       eta: float, sigma_max: float, first_step: bool):
    """Flow-GRPO marginal-preserving SDE with std_t = eta*sqrt(sigma/(1-sigma)).

    The first step starts at sigma = 1, where the ratio is infinite; there it is evaluated at
    sigma_max (the second sigma), as in Flow-GRPO. Decided by position, not by `sigma == 1`:
    time_shift rounds the first sigma to 1 - 1e-16 for some shifts.
    """
    dt = sigma_next - sigma
    std_t = eta * math.sqrt(sigma / (1 - (sigma_max if first_step else sigma)))
    mean = x * (1 + std_t**2 / (2 * sigma) * dt) + v * (1 + std_t**2 * (1 - sigma) / (2 * sigma)) * dt
    std = std_t * math.sqrt(-dt)
    return mean, torch.tensor(std, dtype=torch.float32)


def cps_mean_std(v: torch.Tensor, x: torch.Tensor, sigma: float, sigma_next: float, eta: float):
    """CPS (arXiv 2509.05952): mean = (1-sigma_next)*x0_hat + sqrt(sigma_next^2 - std^2)*eps_hat,
    std = sigma_next*sin(eta*pi/2), with x0_hat = x - sigma*v and eps_hat = x + (1-sigma)*v.

    x_next = mean + std * noise keeps the coefficients of x_t = (1-t)*x0 + t*eps: data
    (1-sigma_next), noise sigma_next in total (deterministic part and fresh noise in quadrature).
    """
    if not 0 <= eta <= 1:
        raise ValueError(f"sampling.eta={eta} is outside [0, 1], the range of sde_type='cps' "
                         "(std = sigma_next * sin(eta * pi / 2))")
    std = sigma_next * math.sin(eta * math.pi / 2)
    x0_hat = x - sigma * v
    eps_hat = x + (1 - sigma) * v
    mean = (1 - sigma_next) * x0_hat + math.sqrt(sigma_next**2 - std**2) * eps_hat
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
    cps_log_prob: str = "gaussian",
) -> StepResult:
    """One stochastic step k (sigmas[k] -> sigmas[k+1]) and the log-prob of its result.

    Rollout passes `noise` and gets x_{k+1} = mean + std * noise; training passes the
    stored `prev_sample` to re-evaluate its log-prob under the current policy.

    The log-prob is the full Gaussian log-density for every sde_type, unless CPS is asked
    for Flow-GRPO's `cps_log_prob="flow_grpo"`: -(x - mean)^2, which drops the 1 / (2 std^2)
    factor and so scales log-ratios by 2 std^2 (`squared_error_log_prob`). CPS's last step
    (sigma_next = 0) has std = 0: it lands on x0_hat, and its log-prob is set to 0; that
    step is never trained.
    """
    sigma, sigma_next = float(sigmas[k]), float(sigmas[k + 1])
    if sde_type == "dance":
        mean, std = dance_mean_std(v, x, sigma, sigma_next, eta)
    elif sde_type == "flow_grpo":
        mean, std = flow_grpo_mean_std(v, x, sigma, sigma_next, eta, float(sigmas[1]), first_step=k == 0)
    elif sde_type == "cps":
        mean, std = cps_mean_std(v, x, sigma, sigma_next, eta)
        if sigma_next == 0:
            return StepResult(prev_sample=mean if prev_sample is None else prev_sample,
                              log_prob=torch.zeros(x.shape[0], dtype=torch.float32, device=x.device),
                              mean=mean, std=std, pred_original=x - sigma * v)
        if cps_log_prob not in ("gaussian", "flow_grpo"):
            raise ValueError(f"sampling.cps_log_prob={cps_log_prob!r} is not one of ['gaussian', 'flow_grpo']")
        return sample_or_replay(mean, std, prev_sample, noise, pred_original=x - sigma * v,
                                gaussian=cps_log_prob == "gaussian")
    else:
        raise ValueError(f"sde_type {sde_type!r} is not one of ['dance', 'flow_grpo', 'cps']")
    return sample_or_replay(mean, std, prev_sample, noise, pred_original=x - sigma * v)


def sample_or_replay(mean: torch.Tensor, std: torch.Tensor, prev_sample: torch.Tensor | None,
                     noise: torch.Tensor | None, pred_original: torch.Tensor | None = None,
                     gaussian: bool = True) -> StepResult:
    """x_{k+1} = mean + std * noise (rollout) or the stored `prev_sample` (training), and its
    log-prob: the Gaussian log-density, or without `gaussian` Flow-GRPO's CPS -(x - mean)^2."""
    if prev_sample is None:
        if noise is None:
            raise ValueError("a stochastic step needs either prev_sample or noise")
        prev_sample = mean + std.to(mean.dtype) * noise.to(mean.dtype)
    if gaussian:
        log_prob = gaussian_log_prob(prev_sample.detach(), mean, std)
    else:
        log_prob = squared_error_log_prob(prev_sample.detach(), mean)
    return StepResult(prev_sample=prev_sample, log_prob=log_prob, mean=mean, std=std, pred_original=pred_original)


def ode_step(v: torch.Tensor, x: torch.Tensor, sigmas: torch.Tensor, k: int) -> torch.Tensor:
    """Euler step of the probability-flow ODE: x + (sigma_next - sigma) * v."""
    return x + (float(sigmas[k + 1]) - float(sigmas[k])) * v


def scaled_linear_alphas_cumprod(beta_start: float = 0.00085, beta_end: float = 0.012,
                                 num_train_timesteps: int = 1000) -> torch.Tensor:
    """alpha_bar_t = prod_{s<=t} (1 - beta_s), beta = linspace(sqrt(beta_start), sqrt(beta_end), T)^2. [T], float64."""
    betas = torch.linspace(beta_start**0.5, beta_end**0.5, num_train_timesteps, dtype=torch.float64) ** 2
    return torch.cumprod(1.0 - betas, dim=0)


def ddim_timesteps(num_steps: int, num_train_timesteps: int = 1000, steps_offset: int = 1) -> torch.Tensor:
    """DDIM timesteps with "leading" spacing: t_k = (N-1-k) * (T // N) + offset, then the final
    t_N = t_{N-1} - T // N (negative: the step into it uses the final alpha_bar). [N+1], float64."""
    ratio = num_train_timesteps // num_steps
    return torch.arange(num_steps - 1, -2, -1, dtype=torch.float64) * ratio + steps_offset


def ddim_mean_std(eps: torch.Tensor, x: torch.Tensor, alpha_bar: float, alpha_bar_prev: float, eta: float):
    """DDIM: std = eta*sqrt((1-ab_prev)/(1-ab)*(1-ab/ab_prev)),
    mean = sqrt(ab_prev)*x0_hat + sqrt(1-ab_prev-std^2)*eps, x0_hat = (x - sqrt(1-ab)*eps)/sqrt(ab).
    Returns (mean, std, x0_hat)."""
    std = eta * math.sqrt((1 - alpha_bar_prev) / (1 - alpha_bar) * (1 - alpha_bar / alpha_bar_prev))
    x0_hat = (x - math.sqrt(1 - alpha_bar) * eps) / math.sqrt(alpha_bar)
    mean = math.sqrt(alpha_bar_prev) * x0_hat + math.sqrt(1 - alpha_bar_prev - std**2) * eps
    return mean, torch.tensor(std, dtype=torch.float32), x0_hat


def ddim_alphas(timesteps: torch.Tensor, k: int, alphas_cumprod: torch.Tensor,
                final_alpha_cumprod: float) -> tuple[float, float]:
    """alpha_bar at timesteps[k] and timesteps[k+1]; a negative timesteps[k+1] (past the
    last) uses `final_alpha_cumprod`, as diffusers' DDIMScheduler."""
    t, t_prev = int(timesteps[k]), int(timesteps[k + 1])
    return float(alphas_cumprod[t]), float(alphas_cumprod[t_prev]) if t_prev >= 0 else final_alpha_cumprod


def ddim_step(
    eps: torch.Tensor,
    x: torch.Tensor,
    timesteps: torch.Tensor,
    k: int,
    eta: float,
    alphas_cumprod: torch.Tensor,
    final_alpha_cumprod: float,
    prev_sample: torch.Tensor | None = None,
    noise: torch.Tensor | None = None,
) -> StepResult:
    """DDIM step k (timesteps[k] -> timesteps[k+1]) and the log-prob of its result."""
    alpha_bar, alpha_bar_prev = ddim_alphas(timesteps, k, alphas_cumprod, final_alpha_cumprod)
    mean, std, x0_hat = ddim_mean_std(eps, x, alpha_bar, alpha_bar_prev, eta)
    return sample_or_replay(mean, std, prev_sample, noise, pred_original=x0_hat)


def ddim_ode_step(eps: torch.Tensor, x: torch.Tensor, timesteps: torch.Tensor, k: int,
                  alphas_cumprod: torch.Tensor, final_alpha_cumprod: float) -> torch.Tensor:
    """Deterministic DDIM (eta = 0): sqrt(ab_prev)*x0_hat + sqrt(1-ab_prev)*eps."""
    alpha_bar, alpha_bar_prev = ddim_alphas(timesteps, k, alphas_cumprod, final_alpha_cumprod)
    x0_hat = (x - math.sqrt(1 - alpha_bar) * eps) / math.sqrt(alpha_bar)
    return math.sqrt(alpha_bar_prev) * x0_hat + math.sqrt(1 - alpha_bar_prev) * eps
