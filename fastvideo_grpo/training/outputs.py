"""What a run writes besides checkpoints: metrics.jsonl, sample videos and grids, reward curves."""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import imageio
import numpy as np
import torch

from fastvideo_grpo.config import Config

logger = logging.getLogger(__name__)


def finite_or_none(value):
    """JSON has no NaN or inf: a non-finite number is written as null (strict parsers reject
    the bare NaN that json.dumps writes by default)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: finite_or_none(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite_or_none(v) for v in value]
    return value


def append_metrics(path: Path, record: dict) -> None:
    append_rows(path, [record])


def append_rows(path: Path, records: list[dict]) -> None:
    """Append JSONL records in one write."""
    try:
        with path.open("a") as f:
            f.write("".join(json.dumps(finite_or_none(r), allow_nan=False) + "\n" for r in records))
    except OSError as e:
        raise OSError(e.errno, e.strerror, str(path)) from e  # a failed write or flush names no file


def read_metrics(path: Path) -> list[dict]:
    """The records of a JSONL log. A last line cut short by a crash mid-write is dropped
    with a warning; any other bad line is an error naming the file and the line."""
    if not path.exists():
        return []
    lines = path.read_text().splitlines()
    records = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as e:
            if number == len(lines):
                logger.warning("%s: dropping its last line, cut short (%s): %.80r", path, e, line)
                continue
            raise ValueError(f"{path}, line {number}: not valid JSON ({e}): {line[:80]!r}") from e
    return records


def write_video(path: Path, frames: torch.Tensor, fps: int) -> None:
    """uint8 [T, H, W, 3] -> mp4 (H.264, yuv420p wants even sides: pad by edge repeat)."""
    array = frames.numpy()
    pad_h, pad_w = array.shape[1] % 2, array.shape[2] % 2
    if pad_h or pad_w:
        array = np.pad(array, ((0, 0), (0, pad_h), (0, pad_w), (0, 0)), mode="edge")
    imageio.mimwrite(path, list(array), fps=fps, macro_block_size=1)


def moving_average(values: list[float], window: int) -> np.ndarray:
    """Trailing mean over up to `window` previous values (the first points average fewer)."""
    values = np.asarray(values, dtype=np.float64)
    cumsum = np.concatenate([[0.0], np.cumsum(values)])
    starts = np.maximum(np.arange(len(values)) + 1 - window, 0)
    return (cumsum[1:] - cumsum[starts]) / (np.arange(len(values)) + 1 - starts)


def tile_videos(videos: torch.Tensor, columns: int = 0) -> torch.Tensor:
    """uint8 [B, T, H, W, 3] -> one video [T, rows*H, columns*W, 3], row-major, black padding.

    `columns` 0 picks ceil(sqrt(B)).
    """
    b, t, h, w, c = videos.shape
    columns = columns or math.ceil(math.sqrt(b))
    rows = -(-b // columns)
    padded = torch.zeros(rows * columns, t, h, w, c, dtype=videos.dtype)
    padded[:b] = videos
    return padded.view(rows, columns, t, h, w, c).permute(2, 0, 3, 1, 4, 5).reshape(t, rows * h, columns * w, c)


def shrink_video(video: torch.Tensor, max_side: int) -> torch.Tensor:
    """uint8 [T, H, W, 3] -> [T, H // f, W // f, 3], the means of f x f pixel blocks, with the
    least whole f that brings the longer side to at most `max_side` (0: unchanged)."""
    factor = math.ceil(max(video.shape[1:3]) / max_side) if max_side else 1
    if factor <= 1:
        return video
    blocks = torch.nn.functional.avg_pool2d(video.permute(0, 3, 1, 2).float(), factor)
    return blocks.round().to(torch.uint8).permute(0, 2, 3, 1).contiguous()


def draw_reward_curves(ax, runs: dict[str, list[dict]], key: str = "reward_mean", window: int = 10) -> None:
    """Raw values faintly, their trailing moving average (as the paper plots rewards) on top."""
    for label, records in runs.items():
        records = [r for r in records if key in r]
        steps = [r["iteration"] for r in records]
        values = [r[key] for r in records]
        line, = ax.plot(steps, values, alpha=0.25)
        ax.plot(steps, moving_average(values, window), color=line.get_color(), label=f"{label} (avg {window})")
    ax.set_xlabel("iteration")
    ax.set_ylabel(key)
    ax.legend(fontsize="small")
    ax.grid(alpha=0.3)


def plot_reward_curve(runs: dict[str, list[dict]], path: Path, key: str = "reward_mean", window: int = 10) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    draw_reward_curves(ax, runs, key, window)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def save_samples(out: Path, iteration: int, videos: torch.Tensor, prompts: list[str],
                 rewards: dict[str, torch.Tensor], cfg: Config) -> None:
    folder = out / "samples"
    folder.mkdir(exist_ok=True)
    for i in range(min(cfg.train.num_saved_samples, videos.shape[0])):
        write_video(folder / f"iter_{iteration:06d}_{i}.mp4", videos[i], cfg.sampling.fps)
        scores = {name: round(float(r[i]), 6) for name, r in rewards.items()}
        append_metrics(folder / "index.jsonl", {"iteration": iteration, "file": f"iter_{iteration:06d}_{i}.mp4",
                                                "prompt": prompts[i], **scores})
