"""Model adapters. Adding a family means one more adapter file and one entry here."""

from __future__ import annotations

import torch

from fastvideo_grpo.config import ModelConfig
from fastvideo_grpo.models.base import Policy, TextConditioning
from fastvideo_grpo.models.flux import build_flux
from fastvideo_grpo.models.hunyuan_video import build_hunyuan_video
from fastvideo_grpo.models.hunyuan_video_i2v import build_hunyuan_video_i2v
from fastvideo_grpo.models.stable_diffusion import build_stable_diffusion

BUILDERS = {"hunyuan_video": build_hunyuan_video, "hunyuan_video_i2v": build_hunyuan_video_i2v,
            "flux": build_flux, "stable_diffusion": build_stable_diffusion}


def build_policy(cfg: ModelConfig, device: torch.device, text_dim: int, pooled_dim: int) -> Policy:
    return BUILDERS[cfg.family](cfg, device, text_dim, pooled_dim)


__all__ = ["Policy", "TextConditioning", "build_policy"]
