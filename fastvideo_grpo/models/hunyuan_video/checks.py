"""HunyuanVideo's own rules on a config (`ModelFamily.config_problems`), read before any
model is built: its video tokens must split evenly over the sequence-parallel ranks."""

from __future__ import annotations

from fastvideo_grpo.config import Config
from fastvideo_grpo.models.token_split import TokenGeometry, folder_configs
from fastvideo_grpo.models.token_split import sequence_split_problems as split_problems

# HunyuanVideo's VAE compresses time by 4 and space by 8, its transformer cuts 1x2x2 patches;
# the tiny model keeps them.
HUNYUAN_VIDEO_TOKEN_GEOMETRY = TokenGeometry(temporal=4, spatial=8, patch_t=1, patch_h=2, patch_w=2)


def token_geometry(cfg: Config, tiny: TokenGeometry = HUNYUAN_VIDEO_TOKEN_GEOMETRY) -> TokenGeometry | None:
    """The VAE compression and patch sizes of model.path's configs (HunyuanVideo's and
    HunyuanVideo-1.5's keys), `tiny` for the tiny model; None when they cannot be read."""
    if cfg.model.size == "tiny":
        return tiny
    configs = folder_configs(cfg)
    try:
        transformer, vae = configs
        patch = int(transformer["patch_size"])
        return TokenGeometry(int(vae["temporal_compression_ratio"]), int(vae["spatial_compression_ratio"]),
                             int(transformer["patch_size_t"]), patch, patch)
    except (KeyError, TypeError, ValueError):
        return None


def sequence_split_problems(cfg: Config) -> list[str]:
    return split_problems(cfg, token_geometry)
