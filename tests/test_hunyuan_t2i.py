"""HunyuanVideo as a text-to-image model: one latent frame, decoded as a one-frame video.
Training (the reward sees one-frame videos), export and LoRA: test_families.py."""

import torch

from conftest import ROOT
from fastvideo_grpo.config import load_config
from fastvideo_grpo.models import build_policy

TINY = ROOT / "assets/configs/tiny_hunyuan_t2i.yaml"


def test_one_frame_latents_decode_to_one_frame_images():
    cfg = load_config(TINY)
    policy = build_policy(cfg.model, torch.device("cpu"), 32, 32)
    shape = policy.latent_shape(1, 64, 64)
    assert shape == (16, 1, 8, 8)
    images = policy.decode(torch.randn(2, *shape))
    assert images.dtype == torch.uint8 and images.shape == (2, 1, 64, 64, 3)


def test_paper_config_plans_the_released_hunyuan_video_on_one_frame_latents():
    from fastvideo_grpo.planning.policy import load_plan_config, planned_policy
    from fastvideo_grpo.rewards import check_reward_config

    cfg = load_plan_config(ROOT / "assets/configs/hunyuan_t2i.yaml", ["reward.models.hps.path=/hps.pt"])
    check_reward_config(cfg.reward)  # HPS's section, with its path set
    policy, source = planned_policy(cfg)
    assert "released" in source
    # One frame: one latent frame (the causal VAE keeps the first frame alone), 1/8 of the size.
    s = cfg.sampling
    assert policy.latent_shape(s.num_frames, s.height, s.width) == (16, 1, s.height // 8, s.width // 8)
