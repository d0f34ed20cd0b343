"""Reward registry: a reward is looked up by the name used in `reward.weights`."""

from __future__ import annotations

from typing import Callable

import torch

from fastvideo_grpo.config import RewardConfig
from fastvideo_grpo.rewards.base import RewardFn, binary, check_videos
from fastvideo_grpo.rewards.rules import color_reward, motion_reward
from fastvideo_grpo.rewards.testing import echo_reward, failing_reward, sleep_reward

def _clip_score(cfg: RewardConfig) -> RewardFn:
    from fastvideo_grpo.rewards.clip_score import ClipScore

    return ClipScore(cfg.clip_path, cfg.device, cfg.frame_stride)


def _hps(cfg: RewardConfig) -> RewardFn:
    from fastvideo_grpo.rewards.hps import HPSv21

    return HPSv21(cfg.hps_path, cfg.hps_model, cfg.device, cfg.frame_stride)


def _videoalign(dimension: str) -> Callable[[RewardConfig], RewardFn]:
    def build(cfg: RewardConfig) -> RewardFn:
        from fastvideo_grpo.rewards.videoalign import shared_videoalign

        model = shared_videoalign(cfg.videoalign_path, cfg.videoalign_base, cfg.device, cfg.video_fps,
                                  cfg.videoalign_use_norm, cfg.videoalign_dtype)
        return model.dimension(dimension)

    return build


# Name -> factory building the reward from the reward config (paths, device).
REGISTRY: dict[str, Callable[[RewardConfig], RewardFn]] = {
    "color": lambda cfg: color_reward,
    "motion": lambda cfg: motion_reward,
    "clip": _clip_score,
    "hps": _hps,
    "videoalign_vq": _videoalign("VQ"),
    "videoalign_mq": _videoalign("MQ"),
    "videoalign_ta": _videoalign("TA"),
    "test_echo": lambda cfg: echo_reward,
    "test_fail": lambda cfg: failing_reward,
    "test_sleep": lambda cfg: sleep_reward,
}

Scorer = Callable[[torch.Tensor, list[str]], dict[str, torch.Tensor]]


class RewardError(RuntimeError):
    """A reward could not score: names the reward and the requests."""


def check_reward_names(cfg: RewardConfig) -> None:
    """Raise ValueError if `reward.weights` names a reward that is not registered; builds
    nothing, so a typo fails before any model is loaded, here or in the reward process."""
    unknown = [name for name in cfg.weights if name not in REGISTRY]
    if unknown:
        keys = ", ".join(f"reward.weights.{name}" for name in unknown)
        raise ValueError(f"{keys}: unknown reward; available: {sorted(REGISTRY)}")


def build_rewards(cfg: RewardConfig) -> dict[str, RewardFn]:
    check_reward_names(cfg)
    rewards: dict[str, RewardFn] = {}
    for name in cfg.weights:
        reward = REGISTRY[name](cfg)
        if name in cfg.binary_thresholds:
            reward = binary(reward, cfg.binary_thresholds[name])
        rewards[name] = reward
    return rewards


def score_with(rewards: dict[str, RewardFn], videos: torch.Tensor, prompts: list[str],
               what: str = "a batch") -> dict[str, torch.Tensor]:
    check_videos(videos, prompts)
    scores = {}
    for name, reward in rewards.items():
        try:
            scores[name] = reward(videos, prompts).float()
        except Exception as e:
            raise RewardError(f"reward {name!r} failed on {what}: {type(e).__name__}: {e}") from e
    return scores


def build_scorer(cfg: RewardConfig) -> Scorer:
    """One callable that scores a batch with every configured reward, in this process."""
    rewards = build_rewards(cfg)
    return lambda videos, prompts: score_with(rewards, videos, prompts)


__all__ = ["REGISTRY", "RewardError", "RewardFn", "Scorer", "binary", "build_rewards", "build_scorer",
           "check_reward_names", "score_with"]
