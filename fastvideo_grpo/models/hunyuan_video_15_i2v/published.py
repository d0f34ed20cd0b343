"""HunyuanVideo-1.5 image-to-video's released architecture, for the planner
(`ModelFamily.published`, `ModelFamily.image_tokens`)."""

from __future__ import annotations

import json
from pathlib import Path

from fastvideo_grpo.config import Config
from fastvideo_grpo.models.hunyuan_video_15.published import HUNYUAN_VIDEO_15_480P_T2V
from fastvideo_grpo.models.hunyuan_video_15.tiny import IMAGE_DIM
from fastvideo_grpo.models.hunyuan_video_15_i2v.tiny import IMAGE_PATCH, IMAGE_SIZE

# hunyuanvideo-community/HunyuanVideo-1.5-480p_i2v transformer/config.json: the text-to-video
# architecture (diffusers' conversion writes both from the same defaults, target_size 640,
# task_type "i2v").
HUNYUAN_VIDEO_15_480P_I2V = {**HUNYUAN_VIDEO_15_480P_T2V, "task_type": "i2v"}
# Its image_encoder/: SigLIP so400m at 384 x 384 in 14 x 14 patches, 27 x 27 tokens of 1152.
IMAGE_TOKENS = (729, 1152)


def image_tokens(cfg: Config) -> tuple[int, int]:
    """(tokens, width) of one image's SigLIP tokens: the tiny SigLIP's, model.path's
    image_encoder/config.json's, or the released model's."""
    if cfg.model.size == "tiny":
        return (IMAGE_SIZE // IMAGE_PATCH) ** 2, IMAGE_DIM
    config = Path(cfg.model.path) / "image_encoder" / "config.json" if cfg.model.path else None
    if config is None or not config.is_file():
        return IMAGE_TOKENS
    vision = json.loads(config.read_text())
    return (vision["image_size"] // vision["patch_size"]) ** 2, vision["hidden_size"]
