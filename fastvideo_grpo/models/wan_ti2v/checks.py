"""Wan2.2-TI2V's rules on a config, as Wan's (models/wan/checks.py), on its token geometry."""

from __future__ import annotations

from fastvideo_grpo.config import Config
from fastvideo_grpo.models.token_split import TokenGeometry
from fastvideo_grpo.models.wan.checks import sequence_split_problems as wan_sequence_split_problems

# The Wan2.2 VAE compresses time by 4 and space by 16, the transformer cuts 1x2x2 patches;
# the tiny model keeps them.
WAN22_TOKEN_GEOMETRY = TokenGeometry(temporal=4, spatial=16, patch_t=1, patch_h=2, patch_w=2)


def sequence_split_problems(cfg: Config) -> list[str]:
    return wan_sequence_split_problems(cfg, WAN22_TOKEN_GEOMETRY)
