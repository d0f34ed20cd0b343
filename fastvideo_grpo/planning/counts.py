"""An iteration's counts on one rank, as the trainer makes them: samples kept and trained,
micro-batches, the network's forwards and the rollout store's bytes."""

from __future__ import annotations

import math

import torch

from fastvideo_grpo.algorithms.registry import algorithm_of
from fastvideo_grpo.config import Config
from fastvideo_grpo.flops import frozen_forwards
from fastvideo_grpo.models import Policy
from fastvideo_grpo.planning.policy import text_shape
from fastvideo_grpo.sampling.step_plan import StepPlan


def kept_per_prompt(cfg: Config) -> int:
    """Samples of a group that train: policy_update.best_of of them, else the whole group."""
    return cfg.policy_update.best_of or cfg.sampling.group_size


def trained_timesteps(cfg: Config, plan: StepPlan) -> int:
    """Timesteps each kept sample trains at: NFT draws them from all the sampler's levels,
    GRPO from the plan's trainable transitions."""
    return algorithm_of(cfg).trained_timesteps(cfg, plan)


def samples_per_step(cfg: Config) -> int:
    """Kept samples of one optimizer step (train.gradient_accumulation_steps counts samples)."""
    return min(cfg.train.gradient_accumulation_steps, cfg.train.prompts_per_iteration * kept_per_prompt(cfg))


def micro_batch_limit(cfg: Config) -> int:
    """Most samples of one micro-batch of a step: GRPO's mirror the rollout batches (a stored
    log-prob matches only the same batch's forward); NFT's are nft.micro_batch_size."""
    return algorithm_of(cfg).micro_batch_samples(cfg)


def micro_batch_size(cfg: Config) -> int:
    """Samples of the largest training micro-batch: one optimizer step's samples of one
    rollout batch (GRPO) or of one NFT micro-batch."""
    return min(micro_batch_limit(cfg), samples_per_step(cfg))


def forwards_per_prompt(cfg: Config, plan: StepPlan) -> tuple[int, int]:
    """(rollout, training) sample-forwards per prompt: the rollout's steps for G samples, the
    deterministic prefix once per group when the group shares its noise (NFT: all of its
    steps, none when each sample has its own noise, as NFT configs must); the kept samples at
    each trained timestep."""
    s = cfg.sampling
    prefix = plan.prefix_steps if s.shared_noise else 0
    rollout = prefix + s.group_size * (plan.num_transitions - prefix)
    return rollout, kept_per_prompt(cfg) * trained_timesteps(cfg, plan)


def logged_forwards(cfg: Config, plan: StepPlan, rows: int) -> dict[str, int]:
    """Rows through the network per rank and iteration, as the trainer counts them in
    transformer_forwards_rollout / _train: CFG's `rows` per sample, and in training one row
    per frozen network's forward beside each trained one (KL reference, NFT's old policy)."""
    rollout, trained = forwards_per_prompt(cfg, plan)
    prompts = cfg.train.prompts_per_iteration
    return {"rollout": prompts * rollout * rows, "train": prompts * trained * rows * (1 + frozen_forwards(cfg))}


def micro_batches_per_step(cfg: Config, plan: StepPlan) -> int:
    return trained_timesteps(cfg, plan) * math.ceil(samples_per_step(cfg) / micro_batch_limit(cfg))


def trajectory_bytes(cfg: Config, policy: Policy, plan: StepPlan) -> tuple[int, int]:
    """(device, host) bytes of an iteration's rollout store on one rank: latents at every
    visited level and log-probs (fp32, where sampling.trajectory_device says; none under
    NFT, which trains on the scored latents alone), the scored latents and the conditioning
    of every sample (on the device)."""
    s = cfg.sampling
    samples = cfg.train.prompts_per_iteration * s.group_size
    latent = math.prod(policy.latent_shape(s.num_frames, s.height, s.width))
    steps = plan.num_transitions
    stored = samples * ((steps + 1) * latent + steps) * 4 if algorithm_of(cfg).keep_trajectory else 0
    tokens, dim, pooled, dtype = text_shape(cfg, policy)
    per_cond = (tokens * dim + pooled) * torch.finfo(dtype).bits // 8 + tokens * 8
    resident = samples * (latent * 4 + per_cond * (2 if cfg.model.cfg_scale > 1 else 1))
    if s.trajectory_device == "cpu":
        return resident, stored
    return resident + stored, 0
