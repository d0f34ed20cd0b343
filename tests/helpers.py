"""Shared builders for tests: the tiny policy and its conditioning; waiting on a run; mp4 bytes."""

import json
import time
from pathlib import Path

import torch

from fastvideo_grpo.models import build_policy
from fastvideo_grpo.models.tiny.hashing_text_encoder import TinyTextEncoder


def tiny_policy(cfg):
    return build_policy(cfg.model, torch.device("cpu"), cfg.model.tiny_text_dim, cfg.model.tiny_pooled_dim)


def tiny_conditioning(cfg, prompts, group_size):
    encoder = TinyTextEncoder(cfg.model.tiny_text_dim, cfg.model.tiny_pooled_dim, cfg.data.max_text_tokens)
    return encoder(prompts).repeat_interleave(group_size)


def tiny_rollout(cfg, policy, cond, batch_size, seed_parts=(0, 0, 0), shared_noise=True, plan=None):
    import dataclasses

    from fastvideo_grpo.rollout import rollout

    s = dataclasses.replace(cfg.sampling, rollout_batch_size=batch_size, shared_noise=shared_noise)
    shape = policy.latent_shape(s.num_frames, s.height, s.width)
    return rollout(policy, cond, s, shape, seed_parts, torch.device("cpu"), plan=plan)


def wait_for_lines(path, count: int, timeout_s: float = 120, poll_s: float = 0.2) -> None:
    """Wait until the file at `path` (a run's metrics.jsonl) holds `count` complete lines,
    or `timeout_s` passes; the caller's assertions then say what went wrong."""
    deadline = time.time() + timeout_s
    while time.time() < deadline and not (path.exists() and path.read_text().count("\n") >= count):
        time.sleep(poll_s)


def run_update(policy, optimizer, scheduler, ro, cond, advantages, plan, cfg) -> dict:
    """One update_policy call in this process; its statistics, reduced."""
    from fastvideo_grpo.metrics import IterationStats
    from fastvideo_grpo.parallel import World
    from fastvideo_grpo.update import Learner, update_policy

    stats = IterationStats()
    learner = Learner(policy=policy, reference=None, optimizer=optimizer, scheduler=scheduler)
    update_policy(learner, ro, cond, advantages, plan, cfg, stats)
    return stats.reduce(World(0, 1, torch.device("cpu"), None))


# mp4 in memory with imageio-ffmpeg, for a reward that needs an encoded file (a VLM
# processor, an external tool). Not decord (the reference's reader): decord 0.6.0 fails on
# frames whose width is not a multiple of 32 (a 48-pixel-wide video: "The size must exactly match").
def encode_mp4(frames, fps: int) -> bytes:
    """uint8 [T, H, W, 3] -> H.264 mp4 bytes, without touching the disk."""
    import imageio.v3 as iio

    return iio.imwrite("<bytes>", frames.numpy(), extension=".mp4", fps=fps, codec="libx264", macro_block_size=1)


def decode_mp4(data: bytes):
    """mp4 bytes -> (uint8 [T, H, W, 3], frames per second)."""
    import imageio.v3 as iio
    import numpy as np

    fps = float(iio.immeta(data, extension=".mp4").get("fps", 0.0))
    return torch.from_numpy(np.ascontiguousarray(iio.imread(data, extension=".mp4", index=None))), fps


def read_jsonl(path) -> list[dict]:
    """The records of a JSONL file (metrics.jsonl, eval.jsonl, manifests), in order."""
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
