import pytest
import torch

from fastvideo_grpo.config import RewardConfig
from fastvideo_grpo.rewards import build_scorer
from fastvideo_grpo.rewards.rules import color_reward, motion_reward


def solid_video(rgb, frames=3, size=4):
    return torch.tensor(rgb, dtype=torch.uint8).view(1, 1, 1, 1, 3).expand(1, frames, size, size, 3).clone()


def test_color_reward_depends_on_the_prompt():
    red = solid_video([230, 20, 20])
    assert color_reward(red, ["a red car"]).item() == pytest.approx(1.0, abs=1e-3)
    assert color_reward(red, ["a cyan car"]).item() == pytest.approx(-1.0, abs=1e-3)
    # chroma of (0.9, 0.5, 0.5) vs red's: cosine of identical directions
    pinkish = solid_video([230, 128, 128])
    assert color_reward(pinkish, ["a red car"]).item() == pytest.approx(1.0, abs=1e-3)
    # green vs red: chroma (-1/3, 2/3, -1/3) . (2/3, -1/3, -1/3) / (|.|^2 = 2/3) = -1/2
    green = solid_video([0, 255, 0])
    assert color_reward(green, ["a red car"]).item() == pytest.approx(-0.5, abs=1e-3)


def test_color_reward_without_colour_word_is_an_error():
    with pytest.raises(ValueError, match="a plain car"):
        color_reward(solid_video([1, 2, 3]), ["a plain car"])


def test_motion_reward_counts_frame_differences_and_still_prompts():
    video = torch.zeros(2, 3, 4, 4, 3, dtype=torch.uint8)
    video[:, 1] = 255  # frame 0 -> 1 changes fully, 1 -> 2 changes fully
    scores = motion_reward(video, ["a car racing", "a still lake"])
    assert scores.tolist() == [1.0, -1.0]


def test_scorer_applies_binary_threshold_and_checks_input():
    scorer = build_scorer(RewardConfig(weights={"color": 1.0, "motion": 0.5}, binary_thresholds={"color": 0.5}))
    videos = torch.cat([solid_video([230, 20, 20]), solid_video([20, 20, 230])])
    scores = scorer(videos, ["a red car", "a red car"])
    assert scores["color"].tolist() == [1.0, 0.0]
    assert scores["motion"].tolist() == [0.0, 0.0]
    with pytest.raises(ValueError, match="uint8"):
        scorer(videos.float(), ["a", "b"])
    with pytest.raises(ValueError, match="2 videos but 1 prompts"):
        scorer(videos, ["a red car"])


def test_unknown_reward_is_named():
    with pytest.raises(ValueError, match="reward.weights.hps"):
        build_scorer(RewardConfig(weights={"hps": 1.0}))
