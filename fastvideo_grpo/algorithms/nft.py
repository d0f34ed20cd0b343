"""DiffusionNFT (arXiv 2509.16117), the second training algorithm (`train.algorithm: nft`).

Rollouts are deterministic ODE trajectories of the *old* policy, a slow copy of the trained
weights; only each sample's clean latent and reward are kept. Training noises the clean
latents afresh, x_t = alpha_t x0 + sigma_t eps, at timesteps drawn from the sampler's
levels, and pulls an implicit positive policy toward the samples with high advantage and an
implicit negative one toward those with low:

    v+ = beta v + (1 - beta) v_old,    v- = (1 + beta) v_old - beta v
    x0+ = x0_hat(v+),  x0- = x0_hat(v-)                (the sampler's clean prediction)
    r = clamp(A / adv_clip_max / 2 + 1/2, 0, 1)
    loss = adv_clip_max * mean(r ||x0+ - x0||^2 / w+ + (1 - r) ||x0- - x0||^2 / w-) / beta

with adaptive weights w = mean |x0_hat - x0| (no gradient, at least 1e-5), plus
nft.kl_weight * ||v - v_ref||^2 to the frozen initial policy. After each iteration
old <- d old + (1 - d) theta, d from the reference's decay schedules (`return_decay`).
The network output may be a velocity (rectified flow) or a noise prediction (DDIM): x0_hat
is affine in it either way, so the same combination of outputs gives the same loss.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from fastvideo_grpo.algorithms.learner import (Learner, num_trained_timesteps, optimizer_step, trained_levels,
                                               trained_weights)
from fastvideo_grpo.config import Config, NFTConfig
from fastvideo_grpo.algorithms.ema import update_ema
from fastvideo_grpo.metrics import IterationStats
from fastvideo_grpo.models import Policy, TextConditioning
from fastvideo_grpo.parallel.fsdp import set_gradient_sync
from fastvideo_grpo.algorithms.planner_trace import MicroBatchTrace, as_numbers
from fastvideo_grpo.sampling.rollout import Rollout, batch_slices, rows_per_sample
from fastvideo_grpo.sampling.samplers import Sampler
from fastvideo_grpo.sampling.seeding import Purpose, make_generator
from fastvideo_grpo.sampling.step_plan import StepPlan, ode_plan

# decay type -> (flat iterations, increase per optimizer step, ceiling), as the reference's.
DECAYS = {0: (0, 0.0, 0.0), 1: (0, 0.001, 0.5), 2: (75, 0.0075, 0.999)}


def return_decay(step: int, decay_type: int) -> float:
    """The old policy's EMA decay after `step` optimizer steps: 0 during the flat part, then
    rising linearly to the ceiling (type 0: always 0, the old policy is the last one)."""
    flat, rate, ceiling = DECAYS[decay_type]
    return 0.0 if step < flat else min((step - flat) * rate, ceiling)


def nft_loss(output: torch.Tensor, old_output: torch.Tensor, x_t: torch.Tensor, x0: torch.Tensor,
             advantages: torch.Tensor, to_x0, beta: float, adv_clip_max: float) -> torch.Tensor:
    """Per-sample NFT loss [B]; `to_x0(output)` is the sampler's clean prediction at x_t."""
    old_output = old_output.detach()
    positive = to_x0(beta * output + (1 - beta) * old_output)
    negative = to_x0((1 + beta) * old_output - beta * output)
    dims = tuple(range(1, x0.ndim))

    def weighted(prediction):
        with torch.no_grad():
            weight = (prediction.double() - x0.double()).abs().mean(dim=dims, keepdim=True).clamp(min=1e-5)
        return ((prediction - x0) ** 2 / weight).mean(dim=dims)

    r = (advantages.clamp(-adv_clip_max, adv_clip_max) / adv_clip_max / 2 + 0.5).clamp(0, 1)
    return adv_clip_max * (r * weighted(positive) + (1 - r) * weighted(negative)) / beta


def micro_batch_samples(cfg: Config) -> int:
    """Samples per training micro-batch: nft.micro_batch_size, else the rollout's batch."""
    return cfg.nft.micro_batch_size or cfg.sampling.rollout_batch_size


@dataclass
class MicroBatchLoss:
    loss: torch.Tensor  # the micro-batch's mean NFT loss, plus the KL term with a reference
    output: torch.Tensor  # the policy's, with autograd
    old_output: torch.Tensor
    kl: torch.Tensor | None  # ||v - v_ref||^2, with a reference


def micro_batch_loss(policy: Policy, old: Policy, reference: Policy | None, sampler: Sampler, levels, j: int,
                     x0: torch.Tensor, eps: torch.Tensor, advantages: torch.Tensor, cond: TextConditioning,
                     n: NFTConfig, adv_clip_max: float) -> MicroBatchLoss:
    """One micro-batch at levels[j]: the clean latents noised afresh, x_t = alpha x0 + sigma eps,
    the policy's prediction there and the old policy's (and the reference's) without autograd."""
    alpha, sigma = sampler.noise_level(levels, j)
    x_t = alpha * x0 + sigma * eps
    level = float(levels[j])
    output = policy.predict(x_t, level, cond)
    with torch.no_grad():
        old_output = old.predict(x_t, level, cond)
    loss = nft_loss(output, old_output, x_t, x0, advantages, lambda out: sampler.pred_original(out, x_t, levels, j),
                    n.beta, adv_clip_max).mean()
    kl = None
    if reference is not None:
        with torch.no_grad():
            ref_output = reference.predict(x_t, level, cond)
        kl = (output - ref_output).pow(2).mean()
        loss = loss + n.kl_weight * kl
    return MicroBatchLoss(loss, output, old_output, kl)


def nft_update(learner: Learner, old: Policy, ro: Rollout, cond: TextConditioning, advantages: torch.Tensor,
               kept: torch.Tensor, cfg: Config, stats: IterationStats, seed_parts: tuple[int, ...],
               first_sample: int) -> None:
    """One optimizer step per train.gradient_accumulation_steps kept samples. A micro-batch
    is nft.micro_batch_size samples at one timestep (its samples share it, so one forward
    serves them); each sample trains int(N * policy_update.timestep_fraction) of the N levels (of
    those the policy trains, `trained_levels`), drawn per micro-batch from a generator seeded by
    its first global sample index."""
    n, u, t = cfg.nft, cfg.policy_update, cfg.train
    policy, reference, sampler = learner.policy, learner.reference, ro.sampler
    device = ro.scored_latents.device
    levels = sampler.levels
    candidates = trained_levels(policy, levels)
    count = num_trained_timesteps(len(candidates), u.timestep_fraction)
    samples = torch.nonzero(kept).flatten()
    advantages = advantages.to(device)
    size = micro_batch_samples(cfg)
    rows_each = rows_per_sample(policy)
    forward_rows = steps = skipped = 0
    for start in range(0, len(samples), t.gradient_accumulation_steps):
        window = samples[start:start + t.gradient_accumulation_steps]
        chunks = [window[b] for b in batch_slices(len(window), size)]
        for c_index, chunk in enumerate(chunks):
            gen = make_generator(*seed_parts, Purpose.NFT_TIMESTEPS_AND_NOISE, first_sample + int(chunk[0]))
            for position, drawn in enumerate(torch.randperm(len(candidates), generator=gen)[:count].tolist()):
                j = candidates[drawn]
                set_gradient_sync(policy.transformer, (c_index == len(chunks) - 1 and position == count - 1)
                                  or cfg.parallel.reduce_grads_every_micro_batch)
                x0 = ro.scored_latents[chunk.to(device)]
                eps = torch.randn(x0.shape, generator=gen).to(device)
                step = micro_batch_loss(policy, old, reference, sampler, levels, j, x0, eps,
                                        advantages[chunk.to(device)], cond.select(chunk), n, u.adv_clip_max)
                forward_rows += len(chunk) * rows_each * (3 if reference is not None else 2)
                if step.kl is not None:
                    stats.mean("kl", step.kl)
                (step.loss * len(chunk) / (len(window) * count)).backward()
                stats.mean("loss", step.loss)
                stats.mean("old_deviation", (step.output.detach() - step.old_output).pow(2).mean())
        stepped = optimizer_step(learner, cfg, stats, start // t.gradient_accumulation_steps)
        steps, skipped = steps + stepped, skipped + (not stepped)
        if learner.nonfinite_streak >= t.max_nonfinite_steps:
            break
    if learner.ema is not None and steps > 0:
        update_ema(learner.ema, policy.transformer, t.ema_decay)
    stats.total("transformer_forwards_train", forward_rows)
    stats.mean("optimizer_steps", steps)
    stats.mean("nonfinite_steps", skipped)


@torch.no_grad()
def update_old(old: Policy, policy: Policy, optimizer_steps: int, decay_type: int) -> float:
    """old <- d * old + (1 - d) * theta over the trained weights; returns d."""
    decay = return_decay(optimizer_steps, decay_type)
    current = dict(policy.transformer.named_parameters())
    for name, p in trained_weights(old, policy).items():
        p.lerp_(current[name].detach(), 1.0 - decay)
    return decay


def update(learner: Learner, ro: Rollout, cond: TextConditioning, advantages: torch.Tensor, kept: torch.Tensor,
           cfg: Config, stats: IterationStats, iteration: int, seed_parts: tuple[int, ...], first_sample: int) -> None:
    """The iteration's update, then the old policy's step toward the policy (`old_decay`)."""
    nft_update(learner, learner.old, ro, cond, advantages, kept, cfg, stats, seed_parts, first_sample)
    stats.mean("old_decay", update_old(learner.old, learner.policy, learner.scheduler.last_epoch, cfg.nft.decay_type))


def step_plan(cfg: Config, iteration: int) -> StepPlan:
    """The old policy samples deterministic trajectories: every step an ODE step."""
    return ode_plan(cfg.sampling.num_steps)


def trained_timesteps(cfg: Config, plan: StepPlan) -> int:
    """Levels each kept sample trains at, drawn from all the sampler's N levels."""
    return num_trained_timesteps(cfg.sampling.num_steps, cfg.policy_update.timestep_fraction)


def planner_micro_batch(cfg: Config, policy: Policy, old: Policy, plan: StepPlan, samples: int,
                        latent_shape: tuple[int, ...],
                        conditioning: Callable[[int], TextConditioning]) -> MicroBatchTrace:
    """nft_update's micro-batch through `micro_batch_loss`, for the planner's tracer: the
    stored clean latents noised at one level, the policy's predict, the old policy's without
    autograd, the NFT loss. The KL reference's forward is left out, as GRPO's (its weights are
    estimated)."""
    sampler = as_numbers(policy.sampler(cfg.sampling))
    level = (trained_levels(policy, sampler.levels) or [0])[0]  # through a trained network

    def inputs():
        return torch.randn(samples, *latent_shape), torch.randn(samples), conditioning(samples)

    def loss(scored, advantages, cond):
        x0 = scored.clone()  # the trainer indexes the rollout's scored latents: a copy
        eps = torch.randn_like(x0)
        return micro_batch_loss(policy, old, None, sampler, sampler.levels, level, x0, eps, advantages,
                                cond.select(slice(0, samples)), cfg.nft, cfg.policy_update.adv_clip_max).loss

    return MicroBatchTrace(inputs, loss)


def memory_knobs(cfg: Config) -> list[str]:
    """Overrides that lower a rank's memory under NFT alone: its micro-batches are free of the
    rollout's batches."""
    return ["nft.micro_batch_size=1"] if micro_batch_samples(cfg) > 1 else []

