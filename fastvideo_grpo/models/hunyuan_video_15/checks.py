"""HunyuanVideo-1.5's own rules on a config (`ModelFamily.config_problems`), read before any
model is built: its video tokens must split evenly over the sequence-parallel ranks."""

from __future__ import annotations

import json
from pathlib import Path

from fastvideo_grpo.config import Config

# The released VAE compresses time by 4 and space by 16, the transformer cuts 1x1x1 patches;
# the tiny model keeps them.
TOKEN_GEOMETRY = {"temporal": 4, "spatial": 16, "patch": 1, "patch_t": 1}


def token_geometry(cfg: Config) -> dict[str, int] | None:
    """model.path's vae/ and transformer/ config.json (the released geometry for the tiny
    model); None when they cannot be read (the model builder then names what is missing)."""
    if cfg.model.size == "tiny":
        return TOKEN_GEOMETRY
    try:
        transformer, vae = (json.loads((Path(cfg.model.path) / part / "config.json").read_text())
                            for part in ("transformer", "vae"))
        return {"temporal": int(vae["temporal_compression_ratio"]), "spatial": int(vae["spatial_compression_ratio"]),
                "patch": int(transformer["patch_size"]), "patch_t": int(transformer["patch_size_t"])}
    except (OSError, ValueError, KeyError, TypeError):
        return None


def video_tokens(g: dict[str, int], frames: int, height: int, width: int) -> int:
    return (((frames - 1) // g["temporal"] + 1) // g["patch_t"] * (height // g["spatial"] // g["patch"])
            * (width // g["spatial"] // g["patch"]))


def sequence_split_problems(cfg: Config) -> list[str]:
    """A sample's video tokens split evenly over parallel.sp_size ranks, or a problem naming
    the sizes: the network would fail only at its first forward, after loading."""
    s, sp = cfg.sampling, cfg.parallel.sp_size
    geometry = token_geometry(cfg) if sp > 1 else None
    if geometry is None:
        return []
    tokens = video_tokens(geometry, s.num_frames, s.height, s.width)
    if tokens % sp == 0:
        return []
    return [f"parallel.sp_size: {sp} is invalid for sampling.height={s.height} x sampling.width={s.width} x "
            f"sampling.num_frames={s.num_frames}: {tokens} video tokens per sample, which {sp} does not divide "
            "(sequence parallelism splits them evenly over the sp ranks)"]
