"""Rewards that exercise the reward process in tests: delays, failures, slow scoring."""

from __future__ import annotations

import os
import random
import time

import torch


def echo_reward(videos: torch.Tensor, prompts: list[str]) -> torch.Tensor:
    """The mean pixel value, after a random delay of up to 30 ms: replies arrive out of order."""
    time.sleep(random.random() * 0.03)
    return videos.float().mean(dim=(1, 2, 3, 4))


def failing_reward(videos: torch.Tensor, prompts: list[str]) -> torch.Tensor:
    raise RuntimeError("this reward always fails")


def sleep_reward(videos: torch.Tensor, prompts: list[str]) -> torch.Tensor:
    """Sleeps FVGRPO_TEST_SLEEP seconds per call, then scores like echo."""
    time.sleep(float(os.environ.get("FVGRPO_TEST_SLEEP", "0.1")))
    return videos.float().mean(dim=(1, 2, 3, 4))
