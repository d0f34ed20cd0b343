"""GRPO (DanceGRPO) on the SDE rollout's log-probs: its math (timestep subsets, the clipped
loss, GRPO-Guard's ratio normalisation and step reweighting, the KL schedules), the
micro-batch plan of an iteration's optimizer steps, and the update over it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import torch

from fastvideo_grpo.algorithms.learner import Learner, num_trained_timesteps, optimizer_step, reset_to_policy
from fastvideo_grpo.config import Config, GRPOConfig
from fastvideo_grpo.algorithms.ema import update_ema
from fastvideo_grpo.algorithms.ratio_stats import declare_ratio_stats, record_ratio
from fastvideo_grpo.metrics import IterationStats
from fastvideo_grpo.models import Policy, TextConditioning
from fastvideo_grpo.parallel.fsdp import set_gradient_sync
from fastvideo_grpo.algorithms.planner_trace import MicroBatchTrace, as_numbers
from fastvideo_grpo.sampling.rollout import Rollout, rows_per_sample
from fastvideo_grpo.sampling.seeding import Purpose, make_generator
from fastvideo_grpo.sampling.step_plan import StepPlan

def select_timesteps(trainable: Sequence[int], fraction: float, selection: str,
                     generator: torch.Generator | None = None) -> torch.Tensor:
    """The transitions to train, from `trainable` (DanceGRPO: 0..N-2, the last transition
    never; a windowed plan: the window), in the order they are trained."""
    count = num_trained_timesteps(len(trainable), fraction)
    trainable = torch.as_tensor(list(trainable), dtype=torch.long)
    if selection == "random":
        return trainable[torch.randperm(len(trainable), generator=generator)[:count]]
    if selection == "first":
        return trainable[:count]
    if selection == "last":
        return trainable[len(trainable) - count:]
    raise ValueError(f"timestep selection {selection!r} is not one of ['random', 'first', 'last']")


def clipped_loss(log_ratio: torch.Tensor, advantages: torch.Tensor,
                 clip_range: float) -> tuple[torch.Tensor, torch.Tensor]:
    """mean(max(-A * ratio, -A * clamp(ratio, 1-clip, 1+clip))) with ratio = exp(log_ratio), and the ratio."""
    ratio = torch.exp(log_ratio)
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1.0 - clip_range, 1.0 + clip_range)
    return torch.maximum(unclipped, clipped).mean(), ratio


def normalized_log_ratio(log_ratio: torch.Tensor, mean: torch.Tensor, old_mean: torch.Tensor,
                         std: torch.Tensor) -> torch.Tensor:
    """GRPO-Guard's ratio normalisation of one Gaussian step's log-ratio (per-element means,
    as the log-probs are). [B].

    With x' = mu_old + std * eps, log r = mean(eps * d) / std - mean(d^2) / (2 std^2), d =
    mu - mu_old: biased below 0 by the second term, and scaled by 1 / std, so the ratio
    spreads widely at low-noise steps and the clip range means something else at every step.
    std * log r + mean(d^2) / (2 std) = mean(eps * d) is unbiased (mean 0 under the old
    policy) and free of 1 / std. At d = 0 (the first update) it is exactly 0."""
    d2 = (mean.float() - old_mean.float()).pow(2).flatten(1).mean(dim=1)
    std = std.float()
    return std * log_ratio + d2 / (2 * std)


def step_gradient_scales(sampler, schedule: torch.Tensor, steps: Sequence[int], like: torch.Tensor,
                         ratio_norm: bool) -> dict[int, float]:
    """How strongly the trained log-ratio of each step responds to the network output:
    |d mean / d output| / std (|d mean / d output| with ratio normalisation, which removes
    the 1 / std). Every sampler's step mean is affine in the output, so the slope is the
    difference of two evaluations; `like` gives the latent shape (one row)."""
    zeros, ones = torch.zeros_like(like, dtype=torch.float64), torch.ones_like(like, dtype=torch.float64)
    scales = {}
    for j in steps:
        at_one = sampler.sde_step(ones, zeros, schedule, j, prev_sample=zeros)
        at_zero = sampler.sde_step(zeros, zeros, schedule, j, prev_sample=zeros)
        slope = (at_one.mean - at_zero.mean).abs().mean().item()
        scales[j] = slope if ratio_norm else slope / float(at_one.std)
    return scales


def step_weights(scales: dict[int, float]) -> dict[int, float]:
    """GRPO-Guard's per-step gradient reweighting: weights inversely proportional to the
    steps' gradient scales, normalised to mean 1 over the trainable steps, so that every
    noise level contributes a gradient of the same scale and the learning rate keeps its meaning."""
    inverse = {j: 1.0 / s for j, s in scales.items()}
    mean = sum(inverse.values()) / len(inverse)
    return {j: w / mean for j, w in inverse.items()}


def linear_kl_weight(start: float, final: float, iteration: int, iterations: int) -> float:
    """From `start` at iteration 0 to `final` at the last iteration."""
    return start + (final - start) * iteration / max(iterations - 1, 1)


def adaptive_kl_weight(weight: float, kl: float, target: float) -> float:
    """PPO's adaptive KL coefficient (Schulman et al. 2017): doubled when the observed KL is
    above 1.5 * target, halved when below target / 1.5, else kept."""
    if kl > 1.5 * target:
        return weight * 2.0
    if kl < target / 1.5:
        return weight / 2.0
    return weight


def kl_to_reference(mean: torch.Tensor, ref_mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """KL between the policy's and the reference's Gaussian steps (same std), per sample. [B]."""
    sq = (mean.float() - ref_mean.float()) ** 2
    return sq.mean(dim=tuple(range(1, sq.ndim))) / (2 * std.float() ** 2)


@dataclass
class MicroBatchLoss:
    loss: torch.Tensor  # the clipped loss (times the step's weight), plus the KL term with a reference
    ratio: torch.Tensor  # [B] pi / pi_old of the stored next latents
    log_prob: torch.Tensor  # [B] the policy's log-prob of them, with autograd
    kl: torch.Tensor | None  # the mean KL to the reference's step, with a reference


def micro_batch_loss(policy: Policy, reference: Policy | None, sampler, schedule, k: int, x: torch.Tensor,
                     x_next: torch.Tensor, old_log_prob: torch.Tensor, advantages: torch.Tensor,
                     cond: TextConditioning, clip_range: float, kl_weight: float = 0.0,
                     old_mean: torch.Tensor | None = None, weight: float | None = None) -> MicroBatchLoss:
    """One micro-batch at transition k: the policy's SDE step from the stored x to the stored
    x_next, its log-ratio to the rollout's log-prob (normalised with GRPO-Guard when the old
    step's mean is given), the clipped loss, and the reference's step without autograd."""
    t_k = float(schedule[k])
    step = sampler.sde_step(policy.predict(x, t_k, cond), x, schedule, k, prev_sample=x_next)
    log_ratio = step.log_prob - old_log_prob
    if old_mean is not None:
        log_ratio = normalized_log_ratio(log_ratio, step.mean, old_mean, step.std)
    loss, ratio = clipped_loss(log_ratio, advantages, clip_range)
    if weight is not None:
        loss = loss * weight
    kl = None
    if reference is not None:
        with torch.no_grad():
            ref = sampler.sde_step(reference.predict(x, t_k, cond), x, schedule, k, prev_sample=x_next)
        kl = kl_to_reference(step.mean, ref.mean, step.std).mean()
        loss = loss + kl_weight * kl
    return MicroBatchLoss(loss, ratio, step.log_prob, kl)


@dataclass
class MicroBatch:
    samples: torch.Tensor  # indices into the rollout's batch dim
    step: int  # the trained transition k: sigmas[k] -> sigmas[k+1]


def plan_micro_batches(ro: Rollout, kept: torch.Tensor, cfg: Config, seed_parts: tuple[int, ...],
                       first_sample: int = 0) -> list[list[MicroBatch]]:
    """The optimizer steps of an iteration, each a list of micro-batches.

    As in the released scripts, `train.gradient_accumulation_steps` counts samples: each
    optimizer step takes that many kept samples (in order; the last step takes the rest),
    each with all its trained transitions, so a sample never straddles two steps and the
    step count, ceil(kept / gradient_accumulation_steps), is the same on every rank.
    Within a step, a micro-batch is the step's samples of one rollout batch at one trained
    transition: when it is the whole rollout batch, its forward is bit-identical to the
    rollout's, so the stored log-probs are the old policy's and none is recomputed.
    A rollout batch's timesteps are drawn from a generator seeded by its first global sample index.
    """
    steps_of_batch = {}
    for batch in ro.batches:
        generator = make_generator(*seed_parts, Purpose.TRAINED_TIMESTEPS, first_sample + batch.start)
        steps_of_batch[batch.start] = select_timesteps(ro.plan.trainable, cfg.policy_update.timestep_fraction,
                                                       cfg.grpo.timestep_selection, generator).tolist()
    kept_samples = torch.nonzero(kept).flatten()
    per_step = cfg.train.gradient_accumulation_steps
    plan = []
    for start in range(0, len(kept_samples), per_step):
        window = kept_samples[start:start + per_step]
        micro_batches = []
        for batch in ro.batches:
            samples = window[(window >= batch.start) & (window < batch.stop)]
            if len(samples):
                micro_batches += [MicroBatch(samples, k) for k in steps_of_batch[batch.start]]
        plan.append(micro_batches)
    return plan


def update_policy(learner: Learner, ro: Rollout, cond: TextConditioning, advantages: torch.Tensor,
                  plan: list[list[MicroBatch]], cfg: Config, stats: IterationStats) -> None:
    """One optimizer step per entry of the plan; its loss is the mean over its (sample,
    trained transition) pairs, as the reference's 1 / (gradient_accumulation_steps * T).
    The EMA follows every optimizer step (train.ema_update=optimizer_step) or the update.

    A step whose gradient norm (global over ranks, so every rank decides alike) is NaN or inf
    is skipped: weights, optimizer state, LR schedule and EMA stay as they were. `stats`
    counts skipped steps (`nonfinite_steps`); `learner.nonfinite_streak` counts the run of
    them, and the update stops when it reaches train.max_nonfinite_steps."""
    g, t = cfg.grpo, cfg.train
    policy, reference = learner.policy, learner.reference
    device = ro.scored_latents.device  # the training device, wherever the trajectory is kept
    advantages = advantages.to(device)
    weights = {}
    if g.step_reweight:
        scales = step_gradient_scales(ro.sampler, ro.schedule, ro.plan.trainable, ro.latents[:1, 0].to(device),
                                      g.ratio_norm)
        weights = step_weights(scales)
    stats.max("ratio_dev_first_update", 0.0)
    stats.max("logprob_drift_first_update", 0.0)
    declare_ratio_stats(stats)
    steps = skipped = 0
    # Rows through the transformer per forward call: CFG doubles the batch.
    rows_each = rows_per_sample(policy)
    forward_rows = 0
    for step_index, chunk in enumerate(plan):
        window_samples = sum(len(mb.samples) for mb in chunk)
        for position, mb in enumerate(chunk):
            set_gradient_sync(policy.transformer,
                              position == len(chunk) - 1 or cfg.parallel.reduce_grads_every_micro_batch)
            idx, rows = mb.samples.to(device), mb.samples.to(ro.latents.device)
            x, x_next = ro.latents[rows, mb.step].to(device), ro.latents[rows, mb.step + 1].to(device)
            old_log_prob = ro.log_probs[rows, mb.step].to(device)
            old_mean = ro.old_mean(rows, mb.step).to(device) if g.ratio_norm else None
            step = micro_batch_loss(policy, reference, ro.sampler, ro.schedule, mb.step, x, x_next, old_log_prob,
                                    advantages[idx], cond.select(mb.samples), g.clip_range, learner.kl_weight,
                                    old_mean, weights.get(mb.step))
            forward_rows += len(idx) * rows_each * (1 if reference is None else 2)
            if step.kl is not None:
                stats.mean("kl", step.kl)
            (step.loss * len(mb.samples) / window_samples).backward()
            deviation = (step.ratio.detach() - 1).abs()
            stats.mean("loss", step.loss)
            stats.mean("ratio_mean", step.ratio.mean())
            stats.max("ratio_max_dev", deviation.max())
            if step_index == 0:
                stats.max("ratio_dev_first_update", deviation.max())
                stats.max("logprob_drift_first_update", (step.log_prob.detach() - old_log_prob).abs().max())
            record_ratio(stats, step.ratio, mb.step, ro.plan.num_transitions, g.clip_range)
            stats.mean("clip_frac", (deviation > g.clip_range).float().mean())
        stepped = optimizer_step(learner, cfg, stats, step_index)
        steps, skipped = steps + stepped, skipped + (not stepped)
        if learner.nonfinite_streak >= t.max_nonfinite_steps:
            break  # every rank sees the same global norm, so all stop here together
        if learner.ema is not None and t.ema_update == "optimizer_step" and stepped:
            update_ema(learner.ema, policy.transformer, t.ema_decay)
    if learner.ema is not None and t.ema_update == "iteration" and steps > 0:
        update_ema(learner.ema, policy.transformer, t.ema_decay)
    stats.total("transformer_forwards_train", forward_rows)
    stats.mean("optimizer_steps", steps)
    stats.mean("nonfinite_steps", skipped)


def follow_kl(learner: Learner, g: GRPOConfig, iteration: int, kl: float | None) -> bool:
    """After an iteration with a KL reference: the adaptive weight follows the iteration's
    mean KL, and the reference resets to the policy every g.reference_reset_every
    iterations or once the KL exceeds g.reference_reset_kl. Returns whether it reset."""
    if g.kl_schedule == "adaptive" and kl is not None:
        learner.kl_weight = adaptive_kl_weight(learner.kl_weight, kl, g.kl_target)
    every, limit = g.reference_reset_every, g.reference_reset_kl
    reset = (every > 0 and (iteration + 1) % every == 0) or (limit > 0 and kl is not None and kl > limit)
    if reset:
        reset_to_policy(learner.reference, learner.policy)
    return reset


def update(learner: Learner, ro: Rollout, cond: TextConditioning, advantages: torch.Tensor, kept: torch.Tensor,
           cfg: Config, stats: IterationStats, iteration: int, seed_parts: tuple[int, ...], first_sample: int) -> None:
    """The iteration's KL weight (grpo.kl_schedule=linear), then the clipped steps over the
    kept samples' planned micro-batches."""
    g = cfg.grpo
    if g.kl_schedule == "linear":
        learner.kl_weight = linear_kl_weight(g.kl_weight, g.kl_weight_final, iteration, cfg.train.iterations)
    update_policy(learner, ro, cond, advantages, plan_micro_batches(ro, kept, cfg, seed_parts, first_sample), cfg,
                  stats)


def resets_reference(cfg: Config) -> bool:
    """Whether the KL reference follows the policy (and so is checkpointed with the run)."""
    g = cfg.grpo
    return g.kl_weight > 0 and (g.reference_reset_every > 0 or g.reference_reset_kl > 0)


def iteration_metrics(learner: Learner) -> dict[str, float]:
    """With a reference, the KL weight the iteration trained with."""
    return {"kl_weight": learner.kl_weight} if learner.reference is not None else {}


def end_iteration(learner: Learner, cfg: Config, iteration: int, metrics: dict) -> None:
    """With a reference, the KL weight follows the iteration's KL (`follow_kl`), and
    `reference_reset` records whether the reference was reset."""
    if learner.reference is None:
        return
    reset = follow_kl(learner, cfg.grpo, iteration, metrics.get("kl"))
    if resets_reference(cfg):
        metrics["reference_reset"] = int(reset)


def trained_timesteps(cfg: Config, plan: StepPlan) -> int:
    """Transitions each kept sample trains at, drawn from the plan's trainable ones."""
    return num_trained_timesteps(len(plan.trainable), cfg.policy_update.timestep_fraction)


def planner_micro_batch(cfg: Config, policy: Policy, old: Policy | None, plan: StepPlan, samples: int,
                        latent_shape: tuple[int, ...],
                        conditioning: Callable[[int], TextConditioning]) -> MicroBatchTrace:
    """The update's micro-batch through `micro_batch_loss`, for the planner's tracer: predict
    at the first trained transition, the SDE step to the stored next latent, the clipped
    loss. The KL reference's forward is left out, as NFT's (its weights are estimated)."""
    s = cfg.sampling
    sampler = as_numbers(policy.sampler(s))
    schedule = plan.schedule(policy.sampler(s)).tolist()
    step = plan.trainable[0]

    def inputs():
        return (torch.randn(samples, 2, *latent_shape), torch.randn(samples), torch.randn(samples),
                conditioning(samples))

    def loss(trajectory, old_log_prob, advantages, cond):
        x, x_next = trajectory[:, 0].clone(), trajectory[:, 1].clone()  # the trainer indexes the store: copies
        return micro_batch_loss(policy, None, sampler, schedule, step, x, x_next, old_log_prob, advantages,
                                cond.select(slice(0, samples)), cfg.grpo.clip_range).loss

    return MicroBatchTrace(inputs, loss)

