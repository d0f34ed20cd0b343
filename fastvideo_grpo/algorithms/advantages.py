"""Scores of a rollout -> advantages, for every algorithm: non-finite rewards caught, rewards
normalised per group (or over the global batch) and aggregated, and the samples that train
(best-of-N)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from fastvideo_grpo.config import Config
from fastvideo_grpo.metrics import IterationStats, masked_mean
from fastvideo_grpo.parallel import World, all_gather_dp
from fastvideo_grpo.rewards import RewardError


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


@dataclass
class Scores:
    rewards: dict[str, torch.Tensor]  # name -> [B] raw (or thresholded) reward
    normalized: dict[str, torch.Tensor]  # name -> [B] the reward normalised per group (or batch)
    advantages: torch.Tensor  # [B], aggregated over rewards and clipped
    zero_std_frac: float


def advantages_of(rewards: dict[str, torch.Tensor], cfg: Config, world: World) -> Scores:
    """Group advantages; with policy_update.advantage_mode=batch (the DDPO ablation) the
    statistics are those of the global batch, all data-parallel ranks' samples, as DDPO
    normalises. A collective."""
    group_size, mode = cfg.sampling.group_size, cfg.policy_update.advantage_mode
    if mode == "batch":
        count = len(next(iter(rewards.values())))
        mine = slice(world.dp_rank * count, (world.dp_rank + 1) * count)
        normalized = {name: normalize_rewards(all_gather_dp(r, world), group_size, mode)[mine]
                      for name, r in rewards.items()}
    else:
        normalized = {name: normalize_rewards(r, group_size, mode) for name, r in rewards.items()}
    advantages = aggregate_advantages(normalized, cfg.reward.weights, cfg.policy_update.adv_clip_max)
    total = sum(cfg.reward.weights[name] * r for name, r in rewards.items())
    return Scores(rewards, normalized, advantages, zero_std_fraction(total, group_size))


def kept_samples(advantages: torch.Tensor, cfg: Config) -> torch.Tensor:
    """[B] bool: the samples that train, all of them or policy_update.best_of of each group."""
    kept = torch.ones(len(advantages), dtype=torch.bool)
    if cfg.policy_update.best_of:
        kept = torch.zeros_like(kept)
        kept[best_of_indices(advantages, cfg.sampling.group_size, cfg.policy_update.best_of)] = True
    return kept


def nonfinite_groups(rewards: dict[str, torch.Tensor], prompts: list[str], cfg: Config,
                     first_sample: int) -> torch.Tensor:
    """[B] bool: the samples of every group in which some reward is NaN or inf. With
    reward.on_nonfinite=error the first such reward is an error naming the reward, the
    sample (its global index) and the prompt."""
    group_size = cfg.sampling.group_size
    bad = torch.zeros(len(prompts), dtype=torch.bool)
    for name, r in rewards.items():
        nonfinite = ~torch.isfinite(r)
        if nonfinite.any() and cfg.reward.on_nonfinite == "error":
            i = int(nonfinite.nonzero()[0])
            raise RewardError(f"reward {name!r} returned {float(r[i])} for sample {first_sample + i} "
                              f"(prompt {prompts[i]!r}); set reward.on_nonfinite=drop_group to leave such "
                              "groups out of the update instead")
        bad |= nonfinite
    return bad.view(-1, group_size).any(dim=1).repeat_interleave(group_size)


def record_scores(stats: IterationStats, scores: Scores, dropped: torch.Tensor, cfg: Config) -> None:
    """Rewards of the scored samples, dropped groups, and the advantages: their mean, std
    (population), max |A|, and per reward the mean |normalised reward| (how much advantage
    each reward contributes; 0 when all its groups are flat)."""
    scored = ~dropped
    total = sum(cfg.reward.weights[name] * r for name, r in scores.rewards.items())
    stats.mean("reward_mean", masked_mean(total, scored))
    for name, r in scores.rewards.items():
        stats.mean(f"reward/{name}", masked_mean(r, scored))
    stats.total("dropped_groups", dropped.sum() / cfg.sampling.group_size)
    a = scores.advantages
    stats.mean("advantage_abs_mean", a.abs().mean())
    stats.mean("zero_std_frac", scores.zero_std_frac)
    stats.mean("advantage_mean", a.mean())
    stats.mean("advantage_sq_mean", a.pow(2).mean())
    stats.max("advantage_abs_max", a.abs().max())
    for name, n in scores.normalized.items():
        stats.mean(f"reward_norm/{name}", n.abs().mean())
