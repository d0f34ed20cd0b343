"""The algorithm table: train.algorithm -> its `Algorithm`. The trainer, the planner and the
FLOP count look the configured one up (`algorithm_of`) and ask it what differs, never its name."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from fastvideo_grpo.algorithms import grpo, nft
from fastvideo_grpo.algorithms.learner import Learner
from fastvideo_grpo.config import Config, ConfigError, problem
from fastvideo_grpo.algorithms.planner_trace import MicroBatchTrace
from fastvideo_grpo.sampling.step_plan import StepPlan, iteration_plan


@dataclass(frozen=True)
class Algorithm:
    """What the trainer asks of an algorithm. Each callable takes the run's Config; `update`
    takes (learner, rollout, conditioning, advantages, kept, cfg, stats, iteration,
    seed_parts, first_sample) and trains the learner on the iteration."""

    name: str
    # The rollout: its step plan for an iteration, whether it keeps every SDE step's mean
    # (GRPO-Guard's ratio normalisation) and the whole trajectory (else only the scored
    # latents).
    step_plan: Callable[[Config, int], StepPlan]
    keep_means: Callable[[Config], bool]
    keep_trajectory: bool
    # A slow copy of the policy (learner.build_old) that samples the rollouts instead of the
    # policy and is forwarded beside it in training.
    old_policy: bool
    # The KL weight to a frozen reference (> 0 builds one), and whether that reference
    # follows the policy (built after LoRA, checkpointed with the run).
    reference_weight: Callable[[Config], float]
    resets_reference: Callable[[Config], bool]
    update: Callable[..., None]
    # The planner's trace of one training micro-batch through the update's own loss:
    # (cfg, policy, old policy or None, step plan, samples, latent shape, rows -> conditioning)
    # -> planner_trace.MicroBatchTrace.
    planner_micro_batch: Callable[..., MicroBatchTrace]
    # Per iteration: metrics the update's stats do not hold, and what follows the iteration's
    # metrics (a KL weight that adapts, a reference that resets).
    iteration_metrics: Callable[[Learner], dict[str, float]]
    end_iteration: Callable[[Learner, Config, int, dict], None]
    # The planner's questions: timesteps each kept sample trains at, samples of a training
    # micro-batch at most, and overrides that lower memory under this algorithm alone.
    trained_timesteps: Callable[[Config, StepPlan], int]
    micro_batch_samples: Callable[[Config], int]
    memory_knobs: Callable[[Config], list[str]]
    # Rollouts and training without classifier-free guidance (DiffusionNFT's recipe: its
    # reference samples, trains and evaluates at guidance_scale 1): algorithm_of refuses a
    # model.cfg_scale other than 1, so the planner, the FLOP count and the trainer all read 1.
    guidance_free: bool


ALGORITHMS = {
    "grpo": Algorithm(
        name="grpo", step_plan=iteration_plan, keep_means=lambda cfg: cfg.grpo.ratio_norm, keep_trajectory=True,
        old_policy=False, reference_weight=lambda cfg: cfg.grpo.kl_weight, resets_reference=grpo.resets_reference,
        update=grpo.update, iteration_metrics=grpo.iteration_metrics, end_iteration=grpo.end_iteration,
        planner_micro_batch=grpo.planner_micro_batch,
        trained_timesteps=grpo.trained_timesteps, micro_batch_samples=lambda cfg: cfg.sampling.rollout_batch_size,
        memory_knobs=lambda cfg: [], guidance_free=False),
    "nft": Algorithm(
        name="nft", step_plan=nft.step_plan, keep_means=lambda cfg: False, keep_trajectory=False,
        old_policy=True, reference_weight=lambda cfg: cfg.nft.kl_weight, resets_reference=lambda cfg: False,
        update=nft.update, iteration_metrics=lambda learner: {}, end_iteration=lambda *args: None,
        planner_micro_batch=nft.planner_micro_batch,
        trained_timesteps=nft.trained_timesteps, micro_batch_samples=nft.micro_batch_samples,
        memory_knobs=nft.memory_knobs, guidance_free=True),
}


def algorithm_of(cfg: Config) -> Algorithm:
    """The algorithm train.algorithm names; a ConfigError naming the table's algorithms if
    there is none, or model.cfg_scale if the algorithm is guidance-free and the config guides
    (config.validate cannot ask: the table imports torch). Training and planning ask; the
    evaluate CLI does not, so a guidance-free run's checkpoint may still be evaluated with guidance."""
    if cfg.train.algorithm not in ALGORITHMS:
        raise ConfigError(problem("train.algorithm", cfg.train.algorithm, f"one of {sorted(ALGORITHMS)}"))
    algorithm = ALGORITHMS[cfg.train.algorithm]
    if algorithm.guidance_free and cfg.model.cfg_scale != 1:
        raise ConfigError(problem("model.cfg_scale", cfg.model.cfg_scale,
                                  f"1 with train.algorithm={algorithm.name}: it samples and trains without "
                                  "classifier-free guidance, as its reference does"))
    return algorithm
