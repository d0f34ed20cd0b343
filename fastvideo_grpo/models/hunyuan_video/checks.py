"""HunyuanVideo's own rules on a config (`ModelFamily.config_problems`), read before any
model is built: its video tokens must split evenly over the sequence-parallel ranks."""

from __future__ import annotations

import json
from pathlib import Path

from fastvideo_grpo.config import Config

# HunyuanVideo's VAE compresses time by 4 and space by 8, its transformer cuts 2x2 patches.
HUNYUAN_VIDEO_TOKEN_GEOMETRY = {"temporal": 4, "spatial": 8, "patch": 2, "patch_t": 1}


def token_geometry(cfg: Config) -> dict[str, int] | None:
    """HunyuanVideo's VAE compression and patch sizes: model.path's vae/ and transformer/
    config.json, read before any model is built (the tiny model keeps the real ones); None
    when they cannot be read (the model builder then names what is missing)."""
    if cfg.model.size == "tiny":
        return dict(HUNYUAN_VIDEO_TOKEN_GEOMETRY)
    try:
        transformer, vae = (json.loads((Path(cfg.model.path) / part / "config.json").read_text())
                            for part in ("transformer", "vae"))
        return {"temporal": int(vae["temporal_compression_ratio"]), "spatial": int(vae["spatial_compression_ratio"]),
                "patch": int(transformer["patch_size"]), "patch_t": int(transformer["patch_size_t"])}
    except (OSError, ValueError, KeyError, TypeError):
        return None


def video_tokens(geometry: dict[str, int], frames: int, height: int, width: int) -> int:
    """Video tokens of one sample: latent frames, rows and columns, each cut into patches."""
    g = geometry
    return (((frames - 1) // g["temporal"] + 1) // g["patch_t"] * (height // g["spatial"] // g["patch"])
            * (width // g["spatial"] // g["patch"]))


def sequence_split_problems(cfg: Config) -> list[str]:
    """HunyuanVideo's video tokens of a sample split evenly over parallel.sp_size ranks, or a
    problem naming the sizes and the nearest that split: the model itself would fail only at
    its first forward, after loading."""
    s, sp = cfg.sampling, cfg.parallel.sp_size
    geometry = token_geometry(cfg) if sp > 1 else None
    if geometry is None or video_tokens(geometry, s.num_frames, s.height, s.width) % sp == 0:
        return []
    sizes = {"num_frames": s.num_frames, "height": s.height, "width": s.width}
    pixel_step = geometry["spatial"] * geometry["patch"]
    nearest = []
    for key, step in (("height", pixel_step), ("width", pixel_step),
                      ("num_frames", geometry["temporal"] * geometry["patch_t"])):
        first = 1 if key == "num_frames" else step  # a frame count is 1 + a multiple of the compression

        def splits(value: int) -> bool:
            size = {**sizes, key: value}
            return video_tokens(geometry, size["num_frames"], size["height"], size["width"]) % sp == 0

        base = first + (sizes[key] - first) // step * step
        below = next((v for v in range(base, first - 1, -step) if v != sizes[key] and splits(v)), None)
        above = next((v for v in range(base + step, base + step * (sp + 1), step) if splits(v)), None)
        found = " or ".join(str(v) for v in (below, above) if v is not None)
        if found:
            nearest.append(f"sampling.{key} {found}")
    tokens = video_tokens(geometry, s.num_frames, s.height, s.width)
    return [f"parallel.sp_size: {sp} is invalid for sampling.height={s.height} x sampling.width={s.width} x "
            f"sampling.num_frames={s.num_frames}: {tokens} video tokens per sample, which {sp} does not divide "
            f"(sequence parallelism splits them evenly over the sp ranks); nearest sizes that split: "
            f"{', '.join(nearest)}"]
