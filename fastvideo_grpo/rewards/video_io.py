"""Video bytes for rewards that need an encoded file (VLM processors, external tools):
mp4 written and read in memory with imageio-ffmpeg.

decord (the reference's reader) is not used: decord 0.6.0 fails on frames whose width is
not a multiple of 32 (a 48-pixel-wide test video: "The size must exactly match")."""

from __future__ import annotations

import imageio.v3 as iio
import numpy as np
import torch


def encode_mp4(frames: torch.Tensor, fps: int) -> bytes:
    """uint8 [T, H, W, 3] -> H.264 mp4 bytes, without touching the disk."""
    return iio.imwrite("<bytes>", frames.numpy(), extension=".mp4", fps=fps, codec="libx264", macro_block_size=1)


def decode_mp4(data: bytes) -> tuple[torch.Tensor, float]:
    """mp4 bytes -> (uint8 [T, H, W, 3], frames per second)."""
    fps = float(iio.immeta(data, extension=".mp4").get("fps", 0.0))
    return torch.from_numpy(np.ascontiguousarray(iio.imread(data, extension=".mp4", index=None))), fps
