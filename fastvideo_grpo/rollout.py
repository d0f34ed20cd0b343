"""Grouped SDE sampling: G samples per prompt from one shared initial noise."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from fastvideo_grpo.models.base import Policy, TextConditioning


@dataclass
class Rollout:
    latents: torch.Tensor  # [B, N+1, *latent]: x_0 (noise) ... x_N (clean), fp32
    log_probs: torch.Tensor  # [B, N], fp32: log pi(x_{k+1} | x_k)
    schedule: torch.Tensor  # [N+1]: the noise levels visited, policy.schedule(N, shift)
    batches: list[slice]  # the rollout batches; training micro-batches mirror them
    # [B, *latent]: what is decoded and scored, `policy.scored_latents` of the last step
    # (rectified flow: its clean prediction x0_hat, not the still noisy x_N).
    scored_latents: torch.Tensor

    @property
    def final_latents(self) -> torch.Tensor:
        return self.latents[:, -1]


def make_generator(*seed_parts: int) -> torch.Generator:
    """A CPU generator seeded from a tuple of ints, e.g. (seed, iteration, dp_rank, sample)."""
    seed = int(np.random.SeedSequence([int(p) for p in seed_parts]).generate_state(1, dtype=np.uint64)[0])
    return torch.Generator().manual_seed(seed % (2**63))


def batch_slices(total: int, batch_size: int) -> list[slice]:
    return [slice(start, min(start + batch_size, total)) for start in range(0, total, batch_size)]


def decode_videos(policy: Policy, latents: torch.Tensor, batch_size: int) -> torch.Tensor:
    """uint8 [B, T, H, W, 3] on CPU."""
    return torch.cat([policy.decode(latents[b]) for b in batch_slices(latents.shape[0], batch_size)])


@torch.no_grad()
def rollout(
    policy: Policy,
    cond: TextConditioning,
    group_size: int,
    latent_shape: tuple[int, ...],
    num_steps: int,
    shift: float,
    eta: float,
    sde_type: str,
    batch_size: int,
    seed_parts: tuple[int, ...],
    device: torch.device,
    first_sample: int = 0,
    shared_noise: bool = True,
    on_batch: Callable[[slice, torch.Tensor], None] | None = None,
) -> Rollout:
    """Sample len(cond) // group_size groups; `cond` holds one row per sample, grouped.

    Noise comes from CPU generators seeded by `seed_parts` and the sample's global index
    (`first_sample` + row): one per group for the initial noise (one per sample when not
    `shared_noise`), one per sample for the SDE noise. So results depend neither on `batch_size` nor on how the global batch is split
    over data-parallel ranks, and sequence-parallel ranks draw the same noise.
    `on_batch(batch, scored_latents)` is called as soon as a rollout batch is done.
    """
    total = cond.prompt_embeds.shape[0]
    num_groups = total // group_size
    schedule = policy.schedule(num_steps, shift)
    if shared_noise:
        initial = torch.stack([
            torch.randn(latent_shape, generator=make_generator(*seed_parts, 0, first_sample // group_size + group))
            for group in range(num_groups)
        ]).repeat_interleave(group_size, dim=0)
    else:
        initial = torch.stack([torch.randn(latent_shape, generator=make_generator(*seed_parts, 3, first_sample + sample))
                               for sample in range(total)])
    step_noise = [make_generator(*seed_parts, 1, first_sample + sample) for sample in range(total)]

    latents = torch.empty(total, num_steps + 1, *latent_shape, device=device)
    log_probs = torch.empty(total, num_steps, device=device)
    scored = torch.empty(total, *latent_shape, device=device)
    batches = batch_slices(total, batch_size)
    for batch in batches:
        x = initial[batch].to(device)
        batch_cond = cond.select(batch)
        latents[batch, 0] = x
        for k in range(num_steps):
            output = policy.predict(x, float(schedule[k]), batch_cond)
            noise = torch.stack([torch.randn(latent_shape, generator=g) for g in step_noise[batch]])
            step = policy.step(output, x, schedule, k, eta, sde_type, noise=noise.to(device))
            x = step.prev_sample
            latents[batch, k + 1] = x
            log_probs[batch, k] = step.log_prob
        scored[batch] = policy.scored_latents(step)
        if on_batch is not None:
            on_batch(batch, scored[batch])
    return Rollout(latents=latents, log_probs=log_probs, schedule=schedule, batches=batches, scored_latents=scored)


@torch.no_grad()
def sample_ode(policy: Policy, cond, initial: torch.Tensor, num_steps: int, shift: float) -> torch.Tensor:
    """Deterministic sampling with the policy's ODE step (Euler for rectified flow, DDIM eta 0)."""
    schedule = policy.schedule(num_steps, shift)
    x = initial
    for k in range(num_steps):
        x = policy.ode_step(policy.predict(x, float(schedule[k]), cond), x, schedule, k)
    return x
