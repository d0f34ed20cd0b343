"""Reward registry: a reward is looked up by the name used in `reward.weights`."""

from __future__ import annotations

from typing import Callable

import torch

from fastvideo_grpo.config import RewardConfig
from fastvideo_grpo.rewards.base import RewardFn, binary, check_videos
from fastvideo_grpo.rewards.rules import color_reward, motion_reward

REGISTRY: dict[str, Callable[[], RewardFn]] = {
    "color": lambda: color_reward,
    "motion": lambda: motion_reward,
}

Scorer = Callable[[torch.Tensor, list[str]], dict[str, torch.Tensor]]


def build_scorer(cfg: RewardConfig) -> Scorer:
    """One callable that scores a batch with every configured reward."""
    rewards: dict[str, RewardFn] = {}
    for name in cfg.weights:
        if name not in REGISTRY:
            raise ValueError(f"reward.weights.{name}: unknown reward; available: {sorted(REGISTRY)}")
        reward = REGISTRY[name]()
        if name in cfg.binary_thresholds:
            reward = binary(reward, cfg.binary_thresholds[name])
        rewards[name] = reward

    def score(videos: torch.Tensor, prompts: list[str]) -> dict[str, torch.Tensor]:
        check_videos(videos, prompts)
        return {name: reward(videos, prompts).float() for name, reward in rewards.items()}

    return score


__all__ = ["REGISTRY", "RewardFn", "Scorer", "binary", "build_scorer"]
