"""Rewards that exercise the reward process in tests: delays, failures, slow scoring.

A reward plugin, as a user's would be: tests name this file in reward.plugins
(conftest.REWARD_PLUGINS), so that the reward process imports it too.
"""

from __future__ import annotations

import os
import random
import time

import torch

from fastvideo_grpo.rewards import register_reward, rule_reward


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


def sleep_per_video_reward(videos: torch.Tensor, prompts: list[str]) -> torch.Tensor:
    """Sleeps FVGRPO_TEST_SLEEP seconds per video, then scores like echo: a reward whose
    cost grows with the videos scored, so that how requests are batched leaves it the same."""
    time.sleep(len(videos) * float(os.environ.get("FVGRPO_TEST_SLEEP", "0.1")))
    return videos.float().mean(dim=(1, 2, 3, 4))


register_reward(rule_reward("test_echo", echo_reward))
register_reward(rule_reward("test_fail", failing_reward))
register_reward(rule_reward("test_sleep", sleep_reward))
register_reward(rule_reward("test_sleep_per_video", sleep_per_video_reward))


def constant_reward(videos: torch.Tensor, prompts: list[str]) -> torch.Tensor:
    """The same score for every sample: no group can be told apart."""
    return torch.zeros(len(videos))


def flatness_reward(videos: torch.Tensor, prompts: list[str]) -> torch.Tensor:
    """Minus the pixel spread of each video: a hackable reward, highest for a flat grey
    frame, which every sample of a group can converge to."""
    return -videos.float().std(dim=(1, 2, 3, 4)) / 128


register_reward(rule_reward("test_constant", constant_reward))
register_reward(rule_reward("test_flatness", flatness_reward))


_rising_calls = [0]


def rising_reward(videos: torch.Tensor, prompts: list[str]) -> torch.Tensor:
    """A score that rises with every call (a run whose reward climbs), separating the samples
    of a call by their mean pixel value: with collapsing diversity, reward hacking's signature."""
    _rising_calls[0] += 1
    return _rising_calls[0] + videos.float().mean(dim=(1, 2, 3, 4)) / 255


register_reward(rule_reward("test_rising", rising_reward))


def grad_reward(videos: torch.Tensor, prompts: list[str]) -> torch.Tensor:
    """Like echo, but a leaf that requires grad (as a score made with torch.tensor(...,
    requires_grad=True) is, even under torch.no_grad())."""
    return videos.float().mean(dim=(1, 2, 3, 4)).requires_grad_()


register_reward(rule_reward("test_grad", grad_reward))
