"""The shapes world's GenEval-style reward: the detector's six scores of a video against its
caption (fastvideo_grpo.shapes.detect), one model giving all of them from one pass."""

from __future__ import annotations

from fastvideo_grpo.rewards.registry import RewardModel, register_reward
from fastvideo_grpo.shapes.detect import SCORES, shapes_scores

register_reward(RewardModel("shapes", SCORES, lambda cfg, section: shapes_scores))
