"""Reading existing video files for scoring: uint8 frames [T, H, W, 3], with PyAV.

PyAV decodes the same frames as imageio-ffmpeg, bit for bit, on odd sizes (33x17, 97x61)
and widths that are not multiples of 32, in 0.10-0.47 of its time, the fastest of the
decoders measured on a 480x480x53 video, and ships its own FFmpeg in its wheel
(bench/video_decoders.py, bench/RESULTS.md; docs/evaluation.md says why not decord2 or torchcodec).
"""

from __future__ import annotations

import glob
from pathlib import Path

import numpy as np
import torch

# Suffixes a --videos folder is searched for; a glob pattern takes whatever it matches.
VIDEO_SUFFIXES = (".mp4", ".mov", ".mkv", ".webm", ".avi", ".m4v")
PYAV_PIN = "av==18.1.0"


class VideoReadError(ValueError):
    """A file that is not a readable video, or holds no frames: names the file."""


def _av():
    try:
        import av
    except ImportError as e:
        raise ImportError(f"reading video files needs PyAV: pip install {PYAV_PIN}") from e
    return av


def read_video(path: str | Path) -> torch.Tensor:
    """All frames of the first video stream of `path`: uint8 [T, H, W, 3], RGB."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such video file")
    av = _av()
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise VideoReadError(f"{path}: no video stream (streams: {list(container.streams)})")
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"  # frame threads: the same frames, faster
            frames = [frame.to_ndarray(format="rgb24") for frame in container.decode(stream)]
    except av.FFmpegError as e:
        raise VideoReadError(f"{path}: not a readable video: {e}") from e
    if not frames:
        raise VideoReadError(f"{path}: the video stream has zero frames")
    shapes = sorted({f.shape for f in frames})
    if len(shapes) > 1:
        raise VideoReadError(f"{path}: frame size changes within the video ({shapes}); expected one size")
    return torch.from_numpy(np.stack(frames))


def video_fps(path: str | Path) -> float:
    """The average frame rate the first video stream of `path` declares (0.0 if none)."""
    av = _av()
    try:
        with av.open(str(path)) as container:
            rate = container.streams.video[0].average_rate if container.streams.video else None
    except av.FFmpegError as e:
        raise VideoReadError(f"{path}: not a readable video: {e}") from e
    return float(rate) if rate else 0.0


def list_videos(spec: str) -> list[Path]:
    """The videos `spec` names, sorted: a folder's files with a video suffix, or the files a
    glob pattern (`**` recursive) or a single path matches."""
    if Path(spec).is_dir():
        paths = [p for p in Path(spec).iterdir() if p.is_file() and p.suffix.lower() in VIDEO_SUFFIXES]
        if not paths:
            raise FileNotFoundError(f"--videos {spec}: no files ending in {', '.join(VIDEO_SUFFIXES)} in this folder")
    else:
        paths = [Path(p) for p in glob.glob(spec, recursive=True) if Path(p).is_file()]
        if not paths:
            raise FileNotFoundError(f"--videos {spec}: matches no file; expected a folder or a glob pattern")
    return sorted(paths)
