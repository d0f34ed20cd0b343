"""The reward interface: uint8 videos [B, T, H, W, 3] + prompts -> named float scores [B]."""

from __future__ import annotations

from typing import Callable

import torch

RewardFn = Callable[[torch.Tensor, list[str]], torch.Tensor]


def binary(reward: RewardFn, threshold: float) -> RewardFn:
    """1.0 where the wrapped reward exceeds `threshold`, else 0.0."""

    def thresholded(videos: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        return (reward(videos, prompts) > threshold).float()

    return thresholded


def check_videos(videos: torch.Tensor, prompts: list[str]) -> None:
    if videos.dtype != torch.uint8 or videos.ndim != 5 or videos.shape[-1] != 3:
        raise ValueError(f"videos must be uint8 [B, T, H, W, 3], got {videos.dtype} {tuple(videos.shape)}")
    if videos.shape[0] != len(prompts):
        raise ValueError(f"{videos.shape[0]} videos but {len(prompts)} prompts")
