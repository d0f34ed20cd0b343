"""The learner both algorithms train with: the policy, its optimizer and LR schedule, the
EMA, the frozen copies (a KL reference, an old policy), and the optimizer step that skips a
non-finite gradient."""

from __future__ import annotations

import copy
import dataclasses
import logging
import math
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.distributed.tensor import DTensor

from fastvideo_grpo.config import Config, ModelConfig, SamplingConfig
from fastvideo_grpo.metrics import IterationStats
from fastvideo_grpo.models import Policy, model_family
from fastvideo_grpo.models.lora import OLD, AdapterPolicy, add_frozen_adapter, adapter_weights
from fastvideo_grpo.parallel.fsdp import clip_grad_norm, reshard
from fastvideo_grpo.sampling.step_plan import StepPlan

logger = logging.getLogger(__name__)


@dataclass
class RunProgress:
    """The fraction of train.iterations done when the current iteration began (the trainer
    sets it): what train.lr_schedule decays by. Not checkpointed: a resumed run's own
    train.iterations count."""

    fraction: float = 0.0


@dataclass(kw_only=True)
class Learner:
    """What an update changes: the policy, its optimizer and LR schedule, the EMA (and an
    algorithm's old policy), and the count of non-finite optimizer steps in a row (it runs on
    across iterations)."""

    policy: Policy
    reference: Policy | None  # frozen initial policy of the KL penalty
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    ema: dict[str, torch.Tensor] | None = None
    nonfinite_streak: int = 0
    old: Policy | None = None  # an old policy (DiffusionNFT's): it samples, and moves slowly toward the policy
    progress: RunProgress = field(default_factory=RunProgress)
    kl_weight: float = 0.0  # the KL weight now: the algorithm's reference weight at first (grpo.kl_schedule moves it)


def num_trained_timesteps(trainable: int, fraction: float) -> int:
    """int(trainable * fraction) of the trainable transitions (policy_update.timestep_fraction),
    at least one."""
    return max(1, int(trainable * fraction))


def trains_at(policy: Policy, t: float) -> bool:
    """Whether the update may train the policy at noise level t: a policy that trains only part
    of its levels says which with `trains(t)` (Wan2.2's experts under model.train_experts)."""
    trains = getattr(policy, "trains", None)
    return trains is None or trains(t)


def trained_plan(plan: StepPlan, policy: Policy, s: SamplingConfig) -> StepPlan:
    """`plan` with only the trainable transitions that start at a level the policy trains."""
    levels = plan.schedule(policy.sampler(s))
    return dataclasses.replace(plan, trainable=tuple(j for j in plan.trainable if trains_at(policy, float(levels[j]))))


def trained_levels(policy: Policy, levels: torch.Tensor) -> list[int]:
    """The indices j < N of the sampler's N+1 levels at which the policy trains."""
    return [j for j in range(len(levels) - 1) if trains_at(policy, float(levels[j]))]


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


def build_optimizer(policy: Policy, cfg: Config, progress: RunProgress | None = None):
    """AdamW and its LR schedule, which decays by `progress` (a fixed start without one)."""
    t, progress = cfg.train, progress or RunProgress()
    params = [p for p in policy.transformer.parameters() if p.requires_grad]
    kernels = {"fused": {"fused": True}, "foreach": {"foreach": True}, "for_loop": {"foreach": False}}
    optimizer = torch.optim.AdamW(params, lr=t.lr, betas=(t.adam_beta1, t.adam_beta2), eps=t.adam_eps,
                                  weight_decay=t.weight_decay, **kernels[t.adam_implementation])
    # A lambda, not a callable object: LambdaLR checkpoints an object's attributes, and a
    # resumed run must follow its own config.
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: warmup_factor(step, t.lr_warmup_steps) * decay_factor(t.lr_schedule, progress.fraction))
    return optimizer, scheduler


def decay_factor(schedule: str, progress: float) -> float:
    """lr multiplier of train.lr_schedule at `progress` (the fraction of the run done, in [0, 1))."""
    if schedule == "linear":
        return 1.0 - progress
    if schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * progress))
    return 1.0


def refresh_lr(scheduler: torch.optim.lr_scheduler.LambdaLR) -> None:
    """Set each group's lr to base lr x the schedule's factor at the current step: after the
    base lr or the run's progress changed, before the next optimizer step."""
    for group, base, factor in zip(scheduler.optimizer.param_groups, scheduler.base_lrs, scheduler.lr_lambdas):
        group["lr"] = base * factor(scheduler.last_epoch)
    scheduler._last_lr = [group["lr"] for group in scheduler.optimizer.param_groups]


def warmup_factor(step: int, warmup: int) -> float:
    """lr multiplier before optimizer step `step` (from 0): step / warmup during the warmup,
    then 1. The first step trains at lr 0, as diffusers' constant_with_warmup schedule (the
    one DanceGRPO's scripts use) does."""
    return step / warmup if step < warmup else 1.0


def frozen_copy(policy: Policy) -> Policy:
    """A frozen copy of the policy's network as it is now (the KL reference, an old
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


def build_old(policy: Policy, m: ModelConfig) -> Policy:
    """The old policy, equal to the policy at the start (call after its LoRA is applied). With
    LoRA, as DiffusionNFT's reference does, a second adapter on the policy's own network: the
    base weights are held, sharded and all-gathered once, and the old policy's forward is the
    policy's with that adapter active. Without, a frozen full copy of the network, on the
    meta device until it is sharded like the policy and filled (`fill_frozen`)."""
    if m.lora_rank > 0:
        add_frozen_adapter(policy.transformer, OLD, m.lora_rank, m.lora_alpha, model_family(m).lora_targets)
        return AdapterPolicy(policy, OLD)
    return frozen_copy(policy)


def trained_weights(copy_of_policy: Policy, policy: Policy) -> dict[str, torch.Tensor]:
    """The weights of a frozen copy (an old policy, a reset KL reference) that the policy
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


def moved_copies(learner: Learner, reference_resets: bool) -> dict[str, dict[str, torch.Tensor]]:
    """The frozen copies that are no longer the initial model, by the name a checkpoint keeps
    them under: the old policy, and the KL reference once it may have been reset."""
    moved = {}
    if learner.old is not None:
        moved["old"] = trained_weights(learner.old, learner.policy)
    if learner.reference is not None and reference_resets:
        moved["reference"] = trained_weights(learner.reference, learner.policy)
    return moved
