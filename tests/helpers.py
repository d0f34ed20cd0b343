"""Shared builders for tests: the tiny policy and its conditioning; waiting on a run."""

import time

import torch

from fastvideo_grpo.models import build_policy
from fastvideo_grpo.models.tiny_text_encoder import TinyTextEncoder


def tiny_policy(cfg):
    return build_policy(cfg.model, torch.device("cpu"), cfg.model.tiny_text_dim, cfg.model.tiny_pooled_dim)


def tiny_conditioning(cfg, prompts, group_size):
    encoder = TinyTextEncoder(cfg.model.tiny_text_dim, cfg.model.tiny_pooled_dim, cfg.data.max_text_tokens)
    return encoder(prompts).repeat_interleave(group_size)


def tiny_rollout(cfg, policy, cond, batch_size, seed_parts=(0, 0, 0), shared_noise=True):
    from fastvideo_grpo.rollout import rollout

    s = cfg.sampling
    shape = policy.latent_shape(s.num_frames, s.height, s.width)
    return rollout(policy, cond, s.group_size, shape, s.num_steps, s.shift, s.eta, s.sde_type, batch_size,
                   seed_parts, torch.device("cpu"), shared_noise=shared_noise)


def wait_for_lines(path, count: int, timeout_s: float = 120, poll_s: float = 0.2) -> None:
    """Wait until the file at `path` (a run's metrics.jsonl) holds `count` complete lines,
    or `timeout_s` passes; the caller's assertions then say what went wrong."""
    deadline = time.time() + timeout_s
    while time.time() < deadline and not (path.exists() and path.read_text().count("\n") >= count):
        time.sleep(poll_s)
