"""GRPO math: group advantages, best-of-N selection, timestep subsets, clipped loss."""

from __future__ import annotations

from typing import Sequence

import torch

# A group whose rewards differ by less than this carries no preference signal.
ZERO_STD = 1e-6


def normalize_rewards(rewards: torch.Tensor, group_size: int, mode: str = "group") -> torch.Tensor:
    """(r - mean) / (std + 1e-8) within each group of `group_size` consecutive samples.

    `mode="batch"` normalises over the whole batch instead (DDPO-style). A group (or batch)
    whose std is ~0 gets advantage 0, never NaN or a rounding artefact.
    """
    if rewards.numel() % group_size:
        raise ValueError(f"{rewards.numel()} rewards do not split into groups of {group_size}")
    r = rewards.double().view(-1, group_size) if mode == "group" else rewards.double().view(1, -1)
    mean = r.mean(dim=1, keepdim=True)
    std = r.std(dim=1, keepdim=True)
    adv = (r - mean) / (std + 1e-8)
    adv = torch.where(std < ZERO_STD, torch.zeros_like(adv), adv)
    return adv.reshape(-1).float()


def zero_std_fraction(rewards: torch.Tensor, group_size: int) -> float:
    return (rewards.double().view(-1, group_size).std(dim=1) < ZERO_STD).float().mean().item()


def aggregate_advantages(normalized: dict[str, torch.Tensor], weights: dict[str, float],
                         adv_clip_max: float) -> torch.Tensor:
    """clamp(sum_k w_k * A_k, +-adv_clip_max) of already normalised rewards A_k. [B]."""
    total = sum(weights[name] * normalized[name] for name in weights)
    return total.clamp(-adv_clip_max, adv_clip_max)


def best_of_indices(advantages: torch.Tensor, group_size: int, keep: int) -> torch.Tensor:
    """Indices (into the flat batch) of the keep/2 highest and keep/2 lowest of each group.

    Returned in ascending order so that kept samples stay grouped and ordered.
    """
    adv = advantages.view(-1, group_size)
    order = adv.argsort(dim=1, stable=True)
    half = keep // 2
    picked = torch.cat([order[:, :half], order[:, -half:]], dim=1)
    offsets = torch.arange(adv.shape[0]).unsqueeze(1) * group_size
    return (picked + offsets).reshape(-1).sort().values


def num_trained_timesteps(trainable: int, fraction: float) -> int:
    """int(trainable * fraction) of the trainable transitions, at least one."""
    return max(1, int(trainable * fraction))


def select_timesteps(trainable: Sequence[int], fraction: float, selection: str,
                     generator: torch.Generator | None = None) -> torch.Tensor:
    """The transitions to train, from `trainable` (DanceGRPO: 0..N-2, the last transition
    never; a windowed plan: the window), in the order they are trained."""
    count = num_trained_timesteps(len(trainable), fraction)
    trainable = torch.as_tensor(list(trainable), dtype=torch.long)
    if selection == "random":
        return trainable[torch.randperm(len(trainable), generator=generator)[:count]]
    if selection == "first":
        return trainable[:count]
    if selection == "last":
        return trainable[len(trainable) - count:]
    raise ValueError(f"timestep selection {selection!r} is not one of ['random', 'first', 'last']")


def clipped_loss(log_ratio: torch.Tensor, advantages: torch.Tensor,
                 clip_range: float) -> tuple[torch.Tensor, torch.Tensor]:
    """mean(max(-A * ratio, -A * clamp(ratio, 1-clip, 1+clip))) with ratio = exp(log_ratio), and the ratio."""
    ratio = torch.exp(log_ratio)
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1.0 - clip_range, 1.0 + clip_range)
    return torch.maximum(unclipped, clipped).mean(), ratio


def normalized_log_ratio(log_ratio: torch.Tensor, mean: torch.Tensor, old_mean: torch.Tensor,
                         std: torch.Tensor) -> torch.Tensor:
    """GRPO-Guard's ratio normalisation of one Gaussian step's log-ratio (per-element means,
    as the log-probs are). [B].

    With x' = mu_old + std * eps, log r = mean(eps * d) / std - mean(d^2) / (2 std^2), d =
    mu - mu_old: biased below 0 by the second term, and scaled by 1 / std, so the ratio
    spreads widely at low-noise steps and the clip range means something else at every step.
    std * log r + mean(d^2) / (2 std) = mean(eps * d) is unbiased (mean 0 under the old
    policy) and free of 1 / std. At d = 0 (the first update) it is exactly 0."""
    d2 = (mean.float() - old_mean.float()).pow(2).flatten(1).mean(dim=1)
    std = std.float()
    return std * log_ratio + d2 / (2 * std)


def step_gradient_scales(sampler, schedule: torch.Tensor, steps: Sequence[int], like: torch.Tensor,
                         ratio_norm: bool) -> dict[int, float]:
    """How strongly the trained log-ratio of each step responds to the network output:
    |d mean / d output| / std (|d mean / d output| with ratio normalisation, which removes
    the 1 / std). Every sampler's step mean is affine in the output, so the slope is the
    difference of two evaluations; `like` gives the latent shape (one row)."""
    zeros, ones = torch.zeros_like(like, dtype=torch.float64), torch.ones_like(like, dtype=torch.float64)
    scales = {}
    for j in steps:
        at_one = sampler.sde_step(ones, zeros, schedule, j, prev_sample=zeros)
        at_zero = sampler.sde_step(zeros, zeros, schedule, j, prev_sample=zeros)
        slope = (at_one.mean - at_zero.mean).abs().mean().item()
        scales[j] = slope if ratio_norm else slope / float(at_one.std)
    return scales


def step_weights(scales: dict[int, float]) -> dict[int, float]:
    """GRPO-Guard's per-step gradient reweighting: weights inversely proportional to the
    steps' gradient scales, normalised to mean 1 over the trainable steps, so that every
    noise level contributes a gradient of the same scale and the learning rate keeps its meaning."""
    inverse = {j: 1.0 / s for j, s in scales.items()}
    mean = sum(inverse.values()) / len(inverse)
    return {j: w / mean for j, w in inverse.items()}


def linear_kl_weight(start: float, final: float, iteration: int, iterations: int) -> float:
    """From `start` at iteration 0 to `final` at the last iteration."""
    return start + (final - start) * iteration / max(iterations - 1, 1)


def adaptive_kl_weight(weight: float, kl: float, target: float) -> float:
    """PPO's adaptive KL coefficient (Schulman et al. 2017): doubled when the observed KL is
    above 1.5 * target, halved when below target / 1.5, else kept."""
    if kl > 1.5 * target:
        return weight * 2.0
    if kl < target / 1.5:
        return weight / 2.0
    return weight


def kl_to_reference(mean: torch.Tensor, ref_mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """KL between the policy's and the reference's Gaussian steps (same std), per sample. [B]."""
    sq = (mean.float() - ref_mean.float()) ** 2
    return sq.mean(dim=tuple(range(1, sq.ndim))) / (2 * std.float() ** 2)
