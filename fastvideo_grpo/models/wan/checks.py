"""Wan's own rules on a config (`ModelFamily.config_problems`), read before any model is
built: its video tokens must split evenly over the sequence-parallel ranks, and the experts'
guidance scales both guide or neither."""

from __future__ import annotations

import json
from pathlib import Path

from fastvideo_grpo.config import Config

# Wan2.1's VAE compresses time by 4 and space by 8, its transformer cuts 1x2x2 patches; the
# tiny model keeps them.
WAN21_TOKEN_GEOMETRY = {"temporal": 4, "spatial": 8, "patch": (1, 2, 2)}


def token_geometry(cfg: Config, tiny: dict = WAN21_TOKEN_GEOMETRY) -> dict | None:
    """model.path's vae/ and transformer/ config.json (`tiny`, the released geometry, for the
    tiny model); None when they cannot be read (the model builder then names what is missing)."""
    if cfg.model.size == "tiny":
        return tiny
    try:
        transformer, vae = (json.loads((Path(cfg.model.path) / part / "config.json").read_text())
                            for part in ("transformer", "vae"))
        return {"temporal": int(vae.get("scale_factor_temporal", 4)),
                "spatial": int(vae.get("scale_factor_spatial", 8)), "patch": tuple(transformer["patch_size"])}
    except (OSError, ValueError, KeyError, TypeError):
        return None


def video_tokens(geometry: dict, frames: int, height: int, width: int) -> int:
    pt, ph, pw = geometry["patch"]
    return (((frames - 1) // geometry["temporal"] + 1) // pt * (height // geometry["spatial"] // ph)
            * (width // geometry["spatial"] // pw))


def sequence_split_problems(cfg: Config, tiny: dict = WAN21_TOKEN_GEOMETRY) -> list[str]:
    """A sample's video tokens split evenly over parallel.sp_size ranks, or a problem naming
    the sizes: the network would fail only at its first forward, after loading. `tiny`: the
    tiny model's geometry."""
    s, sp = cfg.sampling, cfg.parallel.sp_size
    geometry = token_geometry(cfg, tiny) if sp > 1 else None
    if geometry is None:
        return []
    tokens = video_tokens(geometry, s.num_frames, s.height, s.width)
    if tokens % sp == 0:
        return []
    return [f"parallel.sp_size: {sp} is invalid for sampling.height={s.height} x sampling.width={s.width} x "
            f"sampling.num_frames={s.num_frames}: {tokens} video tokens per sample, which {sp} does not divide "
            "(sequence parallelism splits them evenly over the sp ranks)"]


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
