"""The policy update of an iteration: the optimizer, the micro-batch plan of its optimizer
steps, and the clipped GRPO steps over it, with non-finite steps skipped."""

from __future__ import annotations

import copy
import logging
import math
from dataclasses import dataclass

import torch
from torch import nn
from torch.distributed.tensor import DTensor

from fastvideo_grpo import grpo
from fastvideo_grpo.config import Config, GRPOConfig
from fastvideo_grpo.ema import update_ema
from fastvideo_grpo.health import declare_ratio_stats, record_ratio
from fastvideo_grpo.metrics import IterationStats
from fastvideo_grpo.models import Policy, TextConditioning
from fastvideo_grpo.models.lora import adapter_weights
from fastvideo_grpo.parallel.fsdp import clip_grad_norm, reshard, set_gradient_sync
from fastvideo_grpo.rollout import Rollout, rows_per_sample
from fastvideo_grpo.seeding import make_generator

logger = logging.getLogger(__name__)


class NonFiniteTraining(RuntimeError):
    """Too many optimizer steps in a row had a NaN or inf gradient."""


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
        generator = make_generator(*seed_parts, 2, first_sample + batch.start)
        steps_of_batch[batch.start] = grpo.select_timesteps(ro.plan.trainable, cfg.grpo.timestep_fraction,
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


@dataclass(kw_only=True)
class Learner:
    """What an update changes: the policy, its optimizer and LR schedule, the EMA (and NFT's
    old policy), and the count of non-finite optimizer steps in a row (it runs on across
    iterations)."""

    policy: Policy
    reference: Policy | None  # frozen initial policy of the KL penalty
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    ema: dict[str, torch.Tensor] | None = None
    nonfinite_streak: int = 0
    old: Policy | None = None  # DiffusionNFT's old policy: it samples, and moves slowly toward the policy
    kl_weight: float = 0.0  # GRPO's KL weight now (grpo.kl_schedule moves it)


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
        scales = grpo.step_gradient_scales(ro.sampler, ro.schedule, ro.plan.trainable, ro.latents[:1, 0].to(device),
                                           g.ratio_norm)
        weights = grpo.step_weights(scales)
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
            mb_cond = cond.select(mb.samples)
            t_k = float(ro.schedule[mb.step])
            step = ro.sampler.sde_step(policy.predict(x, t_k, mb_cond), x, ro.schedule, mb.step, prev_sample=x_next)
            forward_rows += len(idx) * rows_each * (1 if reference is None else 2)
            log_ratio = step.log_prob - old_log_prob
            if g.ratio_norm:
                old_mean = ro.old_mean(rows, mb.step).to(device)
                log_ratio = grpo.normalized_log_ratio(log_ratio, step.mean, old_mean, step.std)
            loss, ratio = grpo.clipped_loss(log_ratio, advantages[idx], g.clip_range)
            if weights:
                loss = loss * weights[mb.step]
            if reference is not None:
                with torch.no_grad():
                    ref = ro.sampler.sde_step(reference.predict(x, t_k, mb_cond), x, ro.schedule, mb.step,
                                              prev_sample=x_next)
                kl = grpo.kl_to_reference(step.mean, ref.mean, step.std).mean()
                loss = loss + learner.kl_weight * kl
                stats.mean("kl", kl)
            (loss * len(mb.samples) / window_samples).backward()
            deviation = (ratio.detach() - 1).abs()
            stats.mean("loss", loss)
            stats.mean("ratio_mean", ratio.mean())
            stats.max("ratio_max_dev", deviation.max())
            if step_index == 0:
                stats.max("ratio_dev_first_update", deviation.max())
                stats.max("logprob_drift_first_update", (step.log_prob.detach() - old_log_prob).abs().max())
            record_ratio(stats, ratio, mb.step, ro.plan.num_transitions, g.clip_range)
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


def optimizer_step(learner: Learner, cfg: Config, stats: IterationStats, step_index: int) -> bool:
    """Clip and apply the accumulated gradient, or skip the step when its global norm is NaN
    or inf (weights, optimizer and LR schedule untouched; the streak counts it). Returns
    whether the step was taken; the gradient is cleared either way."""
    t = cfg.train
    grad_norm = clip_grad_norm(learner.policy.transformer, t.grad_clip)
    finite = math.isfinite(grad_norm)
    if finite:
        stats.mean("grad_norm", grad_norm)  # before clipping
        stats.mean("grad_clipped_frac", float(grad_norm > t.grad_clip))
        learner.optimizer.step()
        learner.scheduler.step()
        learner.nonfinite_streak = 0
    else:
        learner.nonfinite_streak += 1
        logger.warning("optimizer step %d: gradient norm %s, step skipped (%d in a row)", step_index, grad_norm,
                       learner.nonfinite_streak)
    learner.optimizer.zero_grad(set_to_none=True)
    return finite


def build_optimizer(policy: Policy, cfg: Config):
    t = cfg.train
    params = [p for p in policy.transformer.parameters() if p.requires_grad]
    kernels = {"fused": {"fused": True}, "foreach": {"foreach": True}, "for_loop": {"foreach": False}}
    optimizer = torch.optim.AdamW(params, lr=t.lr, betas=(t.adam_beta1, t.adam_beta2), eps=t.adam_eps,
                                  weight_decay=t.weight_decay, **kernels[t.adam_implementation])
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: warmup_factor(step, t.lr_warmup_steps))
    return optimizer, scheduler


def set_base_lr(scheduler: torch.optim.lr_scheduler.LambdaLR, lr: float) -> None:
    """Make a schedule restored from a checkpoint (whose base lr torch keeps) follow `lr`, from
    its current step on: a resumed run trains with its own train.lr (and warmup, the schedule's
    function being this run's). With the checkpoint's lr it sets the value the schedule holds."""
    scheduler.base_lrs = [lr] * len(scheduler.base_lrs)
    for group, factor in zip(scheduler.optimizer.param_groups, scheduler.lr_lambdas):
        group["initial_lr"] = lr
        group["lr"] = lr * factor(scheduler.last_epoch)
    scheduler._last_lr = [group["lr"] for group in scheduler.optimizer.param_groups]


def warmup_factor(step: int, warmup: int) -> float:
    """lr multiplier before optimizer step `step` (from 0): step / warmup during the warmup,
    then 1. The first step trains at lr 0, as diffusers' constant_with_warmup schedule (the
    one DanceGRPO's scripts use) does."""
    return step / warmup if step < warmup else 1.0


def frozen_copy(policy: Policy) -> Policy:
    """A frozen copy of the policy's network as it is now (the KL reference, NFT's old
    policy), on the meta device: shapes, no storage. It shares everything but the network.
    Made before sharding, it is sharded like the policy and then filled shard to shard by
    `fill_frozen`, so that no rank ever holds a whole copy of the network."""
    network = policy.transformer
    memo = {id(p): nn.Parameter(torch.empty_like(p, device="meta"), requires_grad=False)
            for p in network.parameters()}
    memo.update({id(b): torch.empty_like(b, device="meta") for b in network.buffers()})
    frozen = copy.copy(policy)
    frozen.transformer = copy.deepcopy(network, memo).requires_grad_(False).eval()
    return frozen


def _without_base_layer(name: str) -> str:
    """LoRA moves a wrapped linear's weight to `<linear>.base_layer.weight`: a copy taken
    before the adapter was added names it `<linear>.weight`."""
    return name.replace(".base_layer.", ".")


@torch.no_grad()
def fill_frozen(frozen: Policy, policy: Policy) -> None:
    """Storage for a `frozen_copy` where the policy's weights are, and their values: each
    rank's local shard into the copy's local shard when both are sharded alike (parallelize
    the copy first), the whole tensor when neither is."""
    source = {_without_base_layer(name): t for name, t in
              (*policy.transformer.named_parameters(), *policy.transformer.named_buffers())}
    device = next(iter(source.values())).device  # a DTensor's is its local shard's
    frozen.transformer.to_empty(device=device)
    for name, t in (*frozen.transformer.named_parameters(), *frozen.transformer.named_buffers()):
        key = _without_base_layer(name)
        if key not in source:
            raise RuntimeError(f"frozen copy of {type(policy.transformer).__name__}: the policy has no {key!r} "
                               "to fill it from")
        if isinstance(t, DTensor) != isinstance(source[key], DTensor):
            raise RuntimeError(f"frozen copy: {name} and the policy's {key} are not sharded alike; parallelize "
                               "both before filling")
        t.copy_(source[key].detach())  # DTensors of one placement: a local copy, no communication


def build_reference(policy: Policy) -> Policy:
    """A frozen copy of an unsharded policy, filled at once (`frozen_copy`, `fill_frozen`)."""
    reference = frozen_copy(policy)
    fill_frozen(reference, policy)
    return reference


def trained_weights(copy_of_policy: Policy, policy: Policy) -> dict[str, torch.Tensor]:
    """The weights of a frozen copy (NFT's old policy, a reset KL reference) that the policy
    trains: all that differs from the initial model, so all a checkpoint must hold of it (in
    place: loading fills them). For a second adapter on the policy's own network, that
    adapter's weights, under the names of the trained adapter's."""
    if copy_of_policy.transformer is policy.transformer:
        return adapter_weights(policy.transformer, copy_of_policy.adapter)
    reshard(copy_of_policy.transformer)
    trained = {name for name, p in policy.transformer.named_parameters() if p.requires_grad}
    return {name: p.detach() for name, p in copy_of_policy.transformer.named_parameters() if name in trained}


@torch.no_grad()
def reset_to_policy(copy_of_policy: Policy, policy: Policy) -> None:
    """Copy the policy's trained weights into the frozen copy (sharded alike: shard to shard)."""
    copies = trained_weights(copy_of_policy, policy)
    for name, p in policy.transformer.named_parameters():
        if name in copies:
            copies[name].copy_(p.detach())


def follow_kl(learner: Learner, g: GRPOConfig, iteration: int, kl: float | None) -> bool:
    """After an iteration with a KL reference: the adaptive weight follows the iteration's
    mean KL, and the reference resets to the policy every g.reference_reset_every
    iterations or once the KL exceeds g.reference_reset_kl. Returns whether it reset."""
    if g.kl_schedule == "adaptive" and kl is not None:
        learner.kl_weight = grpo.adaptive_kl_weight(learner.kl_weight, kl, g.kl_target)
    every, limit = g.reference_reset_every, g.reference_reset_kl
    reset = (every > 0 and (iteration + 1) % every == 0) or (limit > 0 and kl is not None and kl > limit)
    if reset:
        reset_to_policy(learner.reference, learner.policy)
    return reset
