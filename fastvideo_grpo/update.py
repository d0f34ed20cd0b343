"""The policy update of an iteration: the optimizer, the micro-batch plan of its optimizer
steps, and the clipped GRPO steps over it, with non-finite steps skipped."""

from __future__ import annotations

import copy
import logging
import math
from dataclasses import dataclass

import torch

from fastvideo_grpo import grpo
from fastvideo_grpo.config import Config
from fastvideo_grpo.ema import update_ema
from fastvideo_grpo.models import Policy, TextConditioning
from fastvideo_grpo.parallel.fsdp import clip_grad_norm, set_gradient_sync
from fastvideo_grpo.rollout import Rollout, make_generator

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
        steps_of_batch[batch.start] = grpo.select_timesteps(cfg.sampling.num_steps, cfg.grpo.timestep_fraction,
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


def update_policy(policy: Policy, reference: Policy | None, optimizer: torch.optim.Optimizer,
                  scheduler: torch.optim.lr_scheduler.LRScheduler, ro: Rollout, cond: TextConditioning,
                  advantages: torch.Tensor, plan: list[list[MicroBatch]], cfg: Config,
                  ema: dict[str, torch.Tensor] | None = None, nonfinite_streak: int = 0) -> dict[str, float]:
    """One optimizer step per entry of the plan; its loss is the mean over its (sample,
    trained transition) pairs, as the reference's 1 / (gradient_accumulation_steps * T).
    `ema`, when given, is updated after every optimizer step (train.ema_update=optimizer_step).

    A step whose gradient norm (global over ranks, so every rank decides alike) is NaN or inf
    is skipped: weights, optimizer state, LR schedule and EMA stay as they were. The summary
    counts skipped steps (`nonfinite_steps`) and the run of them ending this update,
    continuing `nonfinite_streak` from the previous one; the update stops when that run
    reaches train.max_nonfinite_steps."""
    s, g = cfg.sampling, cfg.grpo
    device = ro.latents.device
    advantages = advantages.to(device)
    stats: dict[str, list[float]] = {"loss": [], "ratio_mean": [], "ratio_max_dev": [], "clip_frac": [],
                                     "grad_norm": [], "kl": []}
    ratio_dev_first_update = 0.0
    skipped = 0
    for step_index, chunk in enumerate(plan):
        window_samples = sum(len(mb.samples) for mb in chunk)
        for position, mb in enumerate(chunk):
            set_gradient_sync(policy.transformer, position == len(chunk) - 1)
            idx = mb.samples.to(device)
            x, x_next = ro.latents[idx, mb.step], ro.latents[idx, mb.step + 1]
            mb_cond = cond.select(mb.samples)
            t_k = float(ro.schedule[mb.step])
            step = policy.step(policy.predict(x, t_k, mb_cond), x, ro.schedule, mb.step, s.eta, s.sde_type,
                               prev_sample=x_next)
            loss, ratio = grpo.clipped_loss(step.log_prob, ro.log_probs[idx, mb.step], advantages[idx], g.clip_range)
            if reference is not None:
                with torch.no_grad():
                    ref = reference.step(reference.predict(x, t_k, mb_cond), x, ro.schedule, mb.step, s.eta,
                                         s.sde_type, prev_sample=x_next)
                kl = grpo.kl_to_reference(step.mean, ref.mean, step.std).mean()
                loss = loss + g.kl_weight * kl
                stats["kl"].append(kl.item())
            (loss * len(mb.samples) / window_samples).backward()
            deviation = (ratio.detach() - 1).abs()
            if step_index == 0:
                ratio_dev_first_update = max(ratio_dev_first_update, deviation.max().item())
            stats["loss"].append(loss.item())
            stats["ratio_mean"].append(ratio.mean().item())
            stats["ratio_max_dev"].append(deviation.max().item())
            stats["clip_frac"].append((deviation > g.clip_range).float().mean().item())
        grad_norm = clip_grad_norm(policy.transformer, cfg.train.grad_clip)
        if math.isfinite(grad_norm):
            stats["grad_norm"].append(grad_norm)
            optimizer.step()
            scheduler.step()
            nonfinite_streak = 0
        else:
            skipped += 1
            nonfinite_streak += 1
            logger.warning("optimizer step %d: gradient norm %s, step skipped (%d in a row)", step_index, grad_norm,
                           nonfinite_streak)
        optimizer.zero_grad(set_to_none=True)
        if nonfinite_streak >= cfg.train.max_nonfinite_steps:
            break  # every rank sees the same global norm, so all stop here together
        if ema is not None and math.isfinite(grad_norm):
            update_ema(ema, policy.transformer, cfg.train.ema_decay)
    summary = {key: sum(v) / len(v) for key, v in stats.items() if v}
    summary["ratio_max_dev"] = max(stats["ratio_max_dev"])
    summary["ratio_dev_first_update"] = ratio_dev_first_update
    summary["optimizer_steps"] = len(stats["grad_norm"])
    summary["nonfinite_steps"] = skipped
    summary["nonfinite_streak"] = nonfinite_streak
    return summary


def build_optimizer(policy: Policy, cfg: Config):
    t = cfg.train
    params = [p for p in policy.transformer.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=t.lr, betas=(t.adam_beta1, t.adam_beta2), eps=t.adam_eps,
                                  weight_decay=t.weight_decay)
    warmup = t.lr_warmup_steps
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: min(1.0, (step + 1) / warmup) if warmup > 0 else 1.0)
    return optimizer, scheduler


def build_reference(policy: Policy) -> Policy:
    """A frozen copy of the initial policy for the KL penalty; shares everything but the network."""
    reference = copy.copy(policy)
    reference.transformer = copy.deepcopy(policy.transformer).requires_grad_(False).eval()
    return reference
