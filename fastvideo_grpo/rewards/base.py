"""The reward interface: uint8 videos [B, T, H, W, 3] + prompts -> float scores [B]."""

from __future__ import annotations

from typing import Callable

import torch

# One score: what a rule reward, or a plugin's simple reward, computes.
RewardFn = Callable[[torch.Tensor, list[str]], torch.Tensor]


def check_videos(videos: torch.Tensor, prompts: list[str]) -> None:
    if videos.dtype != torch.uint8 or videos.ndim != 5 or videos.shape[-1] != 3:
        raise ValueError(f"videos must be uint8 [B, T, H, W, 3], got {videos.dtype} {tuple(videos.shape)}")
    if videos.shape[0] != len(prompts):
        raise ValueError(f"{videos.shape[0]} videos but {len(prompts)} prompts")
