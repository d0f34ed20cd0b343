"""The check every sequence-parallel video family runs before any model is built: a sample's
video tokens must split evenly over parallel.sp_size ranks, or the network fails only at its
first forward, after loading. A family says only how its tokens are cut (`TokenGeometry`),
read from model.path's configs or, for the tiny model, its released geometry."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from fastvideo_grpo.config import Config


@dataclass(frozen=True)
class TokenGeometry:
    temporal: int  # the VAE's time compression (latent frames: 1 + (frames - 1) / temporal)
    spatial: int  # the VAE's space compression
    patch_t: int  # the transformer's patch, in latent frames, rows and columns
    patch_h: int
    patch_w: int


def video_tokens(g: TokenGeometry, frames: int, height: int, width: int) -> int:
    """Video tokens of one sample: latent frames, rows and columns, each cut into patches."""
    return (((frames - 1) // g.temporal + 1) // g.patch_t * (height // g.spatial // g.patch_h)
            * (width // g.spatial // g.patch_w))


def folder_configs(cfg: Config) -> tuple[dict, dict] | None:
    """model.path's transformer/ and vae/ config.json; None when they cannot be read (the
    model builder then names what is missing)."""
    try:
        transformer, vae = (json.loads((Path(cfg.model.path) / part / "config.json").read_text())
                            for part in ("transformer", "vae"))
    except (OSError, ValueError):
        return None
    return transformer, vae


def sequence_split_problems(cfg: Config, geometry: Callable[[Config], TokenGeometry | None]) -> list[str]:
    """A problem naming the sizes and the nearest that split when parallel.sp_size does not
    divide a sample's video tokens; `geometry` is read only when sp_size > 1 (None: unknown)."""
    s, sp = cfg.sampling, cfg.parallel.sp_size
    g = geometry(cfg) if sp > 1 else None
    if g is None or video_tokens(g, s.num_frames, s.height, s.width) % sp == 0:
        return []
    sizes = {"num_frames": s.num_frames, "height": s.height, "width": s.width}
    nearest = []
    for key, step in (("height", g.spatial * g.patch_h), ("width", g.spatial * g.patch_w),
                      ("num_frames", g.temporal * g.patch_t)):
        first = 1 if key == "num_frames" else step  # a frame count is 1 + a multiple of the compression

        def splits(value: int) -> bool:
            size = {**sizes, key: value}
            return video_tokens(g, size["num_frames"], size["height"], size["width"]) % sp == 0

        base = first + (sizes[key] - first) // step * step
        below = next((v for v in range(base, first - 1, -step) if v != sizes[key] and splits(v)), None)
        above = next((v for v in range(base + step, base + step * (sp + 1), step) if splits(v)), None)
        found = " or ".join(str(v) for v in (below, above) if v is not None)
        if found:
            nearest.append(f"sampling.{key} {found}")
    tokens = video_tokens(g, s.num_frames, s.height, s.width)
    return [f"parallel.sp_size: {sp} is invalid for sampling.height={s.height} x sampling.width={s.width} x "
            f"sampling.num_frames={s.num_frames}: {tokens} video tokens per sample, which {sp} does not divide "
            f"(sequence parallelism splits them evenly over the sp ranks); nearest sizes that split: "
            f"{', '.join(nearest)}"]
