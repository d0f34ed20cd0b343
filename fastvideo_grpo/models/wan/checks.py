"""Wan's own rules on a config (`ModelFamily.config_problems`), read before any model is
built: its video tokens must split evenly over the sequence-parallel ranks, and the experts'
guidance scales both guide or neither."""

from __future__ import annotations

from functools import partial

from fastvideo_grpo.config import Config
from fastvideo_grpo.models.token_split import TokenGeometry, folder_configs
from fastvideo_grpo.models.token_split import sequence_split_problems as split_problems

# Wan2.1's VAE compresses time by 4 and space by 8, its transformer cuts 1x2x2 patches; the
# tiny model keeps them.
WAN21_TOKEN_GEOMETRY = TokenGeometry(temporal=4, spatial=8, patch_t=1, patch_h=2, patch_w=2)


def token_geometry(cfg: Config, tiny: TokenGeometry = WAN21_TOKEN_GEOMETRY) -> TokenGeometry | None:
    """The VAE compression and patch sizes of model.path's configs, `tiny` for the tiny
    model; None when they cannot be read."""
    if cfg.model.size == "tiny":
        return tiny
    configs = folder_configs(cfg)
    try:
        transformer, vae = configs
        patch_t, patch_h, patch_w = (int(p) for p in transformer["patch_size"])
        return TokenGeometry(int(vae.get("scale_factor_temporal", 4)), int(vae.get("scale_factor_spatial", 8)),
                             patch_t, patch_h, patch_w)
    except (KeyError, TypeError, ValueError):
        return None


def sequence_split_problems(cfg: Config, tiny: TokenGeometry = WAN21_TOKEN_GEOMETRY) -> list[str]:
    """`tiny`: the tiny model's geometry."""
    return split_problems(cfg, partial(token_geometry, tiny=tiny))


def guidance_problems(cfg: Config) -> list[str]:
    """model.cfg_scale_2 guides the low-noise expert when model.cfg_scale guides the other: a
    forward's rows per sample (CFG doubles them) are counted once for both."""
    m = cfg.model
    if not m.cfg_scale_2 or (m.cfg_scale_2 > 1) == (m.cfg_scale > 1):
        return []
    return [f"model.cfg_scale_2: {m.cfg_scale_2!r} is invalid with model.cfg_scale={m.cfg_scale!r}; expected both "
            "above 1 (each expert guided) or both 1 (no guidance; 0 takes model.cfg_scale)"]


def wan_problems(cfg: Config) -> list[str]:
    return sequence_split_problems(cfg) + guidance_problems(cfg)
