"""Grouped SDE sampling: G samples per prompt from one shared initial noise."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from fastvideo_grpo.config import SamplingConfig
from fastvideo_grpo.models.base import Policy, TextConditioning
from fastvideo_grpo.sampling.samplers import Sampler
from fastvideo_grpo.sampling.seeding import Purpose, make_generator
from fastvideo_grpo.sampling.solvers import make_solver
from fastvideo_grpo.sampling.step_plan import StepPlan, build_step_plan


@dataclass
class Rollout:
    # [B, S+1, *latent]: x at every visited level, noise first, fp32; None when the rollout
    # kept only what it scored (keep_trajectory=False: DiffusionNFT trains on nothing else).
    latents: torch.Tensor | None
    log_probs: torch.Tensor | None  # [B, S], fp32: log pi(x_{j+1} | x_j) at SDE steps, NaN at ODE steps
    schedule: torch.Tensor  # [S+1]: the visited noise levels, plan.schedule(sampler)
    batches: list[slice]  # the rollout batches; training micro-batches mirror them
    # [B, *latent]: what is decoded and scored: `policy.scored_latents` of the last step when
    # it is an SDE step (rectified flow: its clean prediction x0_hat, not the still noisy
    # x_N), else the ODE trajectory's end.
    scored_latents: torch.Tensor
    plan: StepPlan
    sampler: Sampler  # the policy's, for these sampling settings: training steps through it too
    # Rows through the transformer (CFG's doubled batch counted), for transformer_forwards_rollout.
    forward_rows: int = 0
    # [B, len(plan.sde_steps), *mean]: each SDE step's Gaussian mean, kept only when asked
    # (`keep_means`: GRPO-Guard's ratio normalisation needs the old policy's).
    means: torch.Tensor | None = None

    def old_mean(self, rows: torch.Tensor, j: int) -> torch.Tensor:
        if self.means is None:
            raise ValueError("the rollout kept no step means (rollout(..., keep_means=True))")
        return self.means[rows, self.plan.sde_steps.index(j)]

    @property
    def final_latents(self) -> torch.Tensor:
        if self.latents is None:
            raise ValueError("the rollout kept no trajectory (rollout(..., keep_trajectory=False))")
        return self.latents[:, -1]


def batch_slices(total: int, batch_size: int) -> list[slice]:
    return [slice(start, min(start + batch_size, total)) for start in range(0, total, batch_size)]


def decode_videos(policy: Policy, latents: torch.Tensor, batch_size: int) -> torch.Tensor:
    """uint8 [B, T, H, W, 3] on CPU."""
    return torch.cat([policy.decode(latents[b]) for b in batch_slices(latents.shape[0], batch_size)])


def initial_noise(s: SamplingConfig, total: int, latent_shape: tuple[int, ...], seed_parts: tuple[int, ...],
                  first_sample: int) -> torch.Tensor:
    """x_0 of every sample: one draw per group (shared_noise), else one per sample, each from a
    generator seeded by its global index, so no split over batches or ranks changes it."""
    g = s.group_size
    if s.shared_noise:
        groups = [make_generator(*seed_parts, Purpose.SHARED_INITIAL_NOISE, first_sample // g + group)
                  for group in range(total // g)]
        return torch.stack([torch.randn(latent_shape, generator=gen) for gen in groups]).repeat_interleave(g, dim=0)
    samples = [make_generator(*seed_parts, Purpose.INITIAL_NOISE, first_sample + sample) for sample in range(total)]
    return torch.stack([torch.randn(latent_shape, generator=gen) for gen in samples])


class Deterministic:
    """The ODE steps of a trajectory: `sampling.ode_solver` (the family's first-order step,
    or DPM-Solver++(2M), which keeps its history), and before the SDE window
    `sampling.prefix_solver`; `took_other_step` tells it where another step was taken."""

    def __init__(self, sampler: Sampler, s: SamplingConfig, plan: StepPlan):
        self.sampler, self.keep_history = sampler, s.solver_history == "keep"
        self.solver = make_solver(s.ode_solver) if s.ode_solver != "euler" else None
        # Only a plan with a window has steps before it (an SDE-free plan is all ode_solver).
        self.prefix_steps = plan.prefix_steps if plan.sde_steps and s.prefix_solver == "euler" else 0

    def step(self, output: torch.Tensor, x: torch.Tensor, schedule: torch.Tensor, j: int) -> torch.Tensor:
        if self.solver is None:
            return self.sampler.ode_step(output, x, schedule, j)
        x0 = self.sampler.pred_original(output, x, schedule, j)
        if j < self.prefix_steps:
            self.took_other_step(x0, schedule, j)
            return self.sampler.ode_step(output, x, schedule, j)
        return self.solver.step(x, x0, self.sampler.noise_level(schedule, j), self.sampler.noise_level(schedule, j + 1))

    def took_other_step(self, x0_hat: torch.Tensor, schedule: torch.Tensor, j: int) -> None:
        """Step j, from the clean prediction `x0_hat`, was not the solver's (an SDE or Euler
        step): its history ends there ("reset"), or records it as its own ("keep")."""
        if self.solver is None:
            return
        if self.keep_history:
            self.solver.record(x0_hat, self.sampler.noise_level(schedule, j), self.sampler.noise_level(schedule, j + 1))
        else:
            self.solver.reset()


def rows_per_sample(policy: Policy) -> int:
    """Network batch rows per sample of a forward: classifier-free guidance doubles them."""
    return 2 if getattr(policy, "cfg_scale", 1.0) > 1 else 1


@torch.no_grad()
def rollout(
    policy: Policy,
    cond: TextConditioning,
    s: SamplingConfig,
    latent_shape: tuple[int, ...],
    seed_parts: tuple[int, ...],
    device: torch.device,
    first_sample: int = 0,
    plan: StepPlan | None = None,
    on_batch: Callable[[slice, torch.Tensor], None] | None = None,
    keep_means: bool = False,
    keep_trajectory: bool = True,
) -> Rollout:
    """Sample len(cond) // group_size groups along `plan` (default: the plan of iteration 0);
    `cond` holds one row per sample, grouped; rollout batches of s.rollout_batch_size rows.

    Noise comes from CPU generators seeded by `seed_parts` and the sample's global index
    (`first_sample` + row): the initial noise (`initial_noise`), then one draw per SDE step
    and sample. So results depend neither on the batch size nor on how the global batch is
    split over data-parallel ranks, and sequence-parallel ranks draw the same noise. With
    shared noise the plan's deterministic prefix runs once per group, not per sample.
    `on_batch(batch, scored_latents)` is called as soon as a rollout batch is done.
    `keep_means` keeps each SDE step's mean too, beside the trajectory; without
    `keep_trajectory` only the scored latents are kept, not every level and log-prob.
    """
    plan = plan or build_step_plan(s, 0, make_generator(*seed_parts, Purpose.STEP_PLAN))
    total, g = cond.prompt_embeds.shape[0], s.group_size
    sampler = policy.sampler(s)
    schedule = plan.schedule(sampler)
    steps, sde = plan.num_transitions, set(plan.sde_steps)
    initial = initial_noise(s, total, latent_shape, seed_parts, first_sample)
    step_noise = [make_generator(*seed_parts, Purpose.STEP_NOISE, first_sample + sample) for sample in range(total)]
    forward_rows, per_sample = 0, rows_per_sample(policy)

    def predict(x, j, c):
        nonlocal forward_rows
        forward_rows += x.shape[0] * per_sample
        return policy.predict(x, float(schedule[j]), c)

    store = torch.device("cpu") if s.trajectory_device == "cpu" else device
    latents = log_probs = None
    if keep_trajectory:
        latents = torch.empty(total, steps + 1, *latent_shape, device=store)
        log_probs = torch.full((total, steps), float("nan"), device=store)
    scored = torch.empty(total, *latent_shape, device=device)
    means = None  # allocated at the first SDE step: a sampler's mean may cover part of the latent
    prefix = plan.prefix_steps if s.shared_noise else 0
    if prefix:
        # One row per group: its samples share x_0 and the prompt, so the deterministic steps
        # before the window are the same for all of them.
        firsts = torch.arange(0, total, g)
        x, group_cond, solver = initial[firsts].to(device), cond.select(firsts), Deterministic(sampler, s, plan)
        path = [x]
        for j in range(prefix):
            x = solver.step(predict(x, j, group_cond), x, schedule, j)
            path.append(x)
        if latents is not None:
            latents[:, :prefix + 1] = torch.stack(path, dim=1).repeat_interleave(g, dim=0).to(store)
            prefix_end = latents[:, prefix]
        else:
            prefix_end = x.float().repeat_interleave(g, dim=0)
    batches = batch_slices(total, s.rollout_batch_size)
    for batch in batches:
        batch_cond, solver, last = cond.select(batch), Deterministic(sampler, s, plan), None
        x = (prefix_end if prefix else initial)[batch].to(device)
        if latents is not None and not prefix:
            latents[batch, 0] = x
        for j in range(prefix, steps):
            output = predict(x, j, batch_cond)
            if j in sde:
                noise = torch.stack([torch.randn(latent_shape, generator=gen) for gen in step_noise[batch]])
                last = sampler.sde_step(output, x, schedule, j, noise=noise.to(device))
                x = last.prev_sample
                if log_probs is not None:
                    log_probs[batch, j] = last.log_prob
                if keep_means:
                    if means is None:
                        means = torch.empty(total, len(plan.sde_steps), *last.mean.shape[1:], device=store)
                    means[batch, plan.sde_steps.index(j)] = last.mean.float().to(store)
                solver.took_other_step(last.pred_original, schedule, j)
            else:
                x = solver.step(output, x, schedule, j)
                last = None
            if latents is not None:
                latents[batch, j + 1] = x
        scored[batch] = sampler.scored_latents(last) if last is not None else x
        if on_batch is not None:
            on_batch(batch, scored[batch])
    return Rollout(latents=latents, log_probs=log_probs, schedule=schedule, batches=batches, scored_latents=scored,
                   plan=plan, sampler=sampler, forward_rows=forward_rows, means=means)


@torch.no_grad()
def sample_ode(policy: Policy, cond, initial: torch.Tensor, sampler: Sampler) -> torch.Tensor:
    """Deterministic sampling over all of `sampler`'s levels with its first-order ODE step
    (Euler for rectified flow, DDIM eta 0): no log-prob is computed."""
    levels = sampler.levels
    x = initial
    for k in range(len(levels) - 1):
        x = sampler.ode_step(policy.predict(x, float(levels[k]), cond), x, levels, k)
    return x
