"""HunyuanVideo-1.5's own rules on a config (`ModelFamily.config_problems`), read before any
model is built: its video tokens must split evenly over the sequence-parallel ranks."""

from __future__ import annotations

from functools import partial

from fastvideo_grpo.config import Config
from fastvideo_grpo.models.hunyuan_video.checks import token_geometry
from fastvideo_grpo.models.token_split import TokenGeometry
from fastvideo_grpo.models.token_split import sequence_split_problems as split_problems

# The released VAE compresses time by 4 and space by 16, the transformer cuts 1x1x1 patches;
# the tiny model keeps them. Its folders name them with HunyuanVideo's keys.
TOKEN_GEOMETRY = TokenGeometry(temporal=4, spatial=16, patch_t=1, patch_h=1, patch_w=1)


def sequence_split_problems(cfg: Config) -> list[str]:
    return split_problems(cfg, partial(token_geometry, tiny=TOKEN_GEOMETRY))
