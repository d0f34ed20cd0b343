"""What a training run saves and resumes: the learner (weights, optimizer, EMA, the frozen
copies that moved from the initial model, the KL weight), its LR schedule and the prompt
sampler's position."""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

import torch

from fastvideo_grpo.algorithms.learner import refresh_lr
from fastvideo_grpo.checkpoint.folders import latest_checkpoint, step_folders
from fastvideo_grpo.checkpoint.sharded import load_checkpoint, save_checkpoint
from fastvideo_grpo.config import Config, run_config_path
from fastvideo_grpo.data.prompts import PromptSampler
from fastvideo_grpo.models import Policy
from fastvideo_grpo.parallel import World, all_finite
from fastvideo_grpo.training.run_config import check_resumed_config


class NonFiniteTraining(RuntimeError):
    """Too many optimizer steps in a row had a NaN or inf gradient, or the weights to save hold one."""


class Saved(Protocol):
    """What a run checkpoints of its learner (algorithms.learner.Learner is one)."""

    policy: Policy
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    ema: dict[str, torch.Tensor] | None
    kl_weight: float


def resume_run(learner: Saved, sampler: PromptSampler, world: World, cfg: Config,
               moved: dict[str, dict[str, torch.Tensor]]) -> int:
    """Load the checkpoint `train.resume` asks for; returns the first iteration to run. The
    config may differ from the checkpoint's run only in what run_config.RESUMABLE lists, and
    train.lr then takes effect at once. `moved`: the frozen copies' trained weights by name
    (learner.moved_copies), loaded in place.

    A run never starts from scratch over an earlier run's checkpoints (it would overwrite
    them and its metrics): that is an error saying how to start fresh."""
    folder = Path(cfg.train.output_dir) / "checkpoints"
    earlier = [p.name for p in step_folders(folder)] if folder.is_dir() else []
    path = None
    if cfg.train.resume == "auto":
        path = latest_checkpoint(cfg.train.output_dir)
    elif cfg.train.resume != "never":
        path = Path(cfg.train.resume)
    if path is None:
        if earlier:
            raise ValueError(f"{folder} holds checkpoints of an earlier run ({', '.join(earlier)}) but train.resume="
                             f"{cfg.train.resume!r} found none to resume from; to start fresh, delete {folder.parent} "
                             "or give this run another train.output_dir")
        return 0
    check_resumed_config(cfg, run_config_path(path), path)
    state = load_checkpoint(path, learner.policy.transformer, learner.optimizer, world, learner.ema,
                            verify=cfg.checkpoint.verify, extra=moved)
    learner.scheduler.load_state_dict(state["scheduler"])
    set_base_lr(learner.scheduler, cfg.train.lr)
    learner.kl_weight = state.get("kl_weight", learner.kl_weight)
    sampler.load_state_dict(state["sampler"])
    return state["iteration"]


def save_run(learner: Saved, sampler: PromptSampler, world: World, cfg: Config, iteration: int,
             transformer_config: dict | None, moved: dict[str, dict[str, torch.Tensor]]) -> None:
    """Save after `iteration` iterations, with the frozen copies' trained weights `moved`
    (learner.moved_copies); a non-finite weight is never written."""
    if not all_finite(learner.policy.transformer, world):
        raise NonFiniteTraining(f"after iteration {iteration - 1} the weights hold NaN or inf; not checkpointing "
                                f"them over {cfg.train.output_dir}/checkpoints (the last checkpoint is intact)")
    trainer_state = {"scheduler": learner.scheduler.state_dict(), "sampler": sampler.state_dict(),
                     "kl_weight": learner.kl_weight}
    save_checkpoint(cfg.train.output_dir, iteration, learner.policy.transformer, learner.optimizer, trainer_state, world,
                    cfg.checkpoint.keep_last, learner.ema, transformer_config, moved)


def set_base_lr(scheduler: torch.optim.lr_scheduler.LambdaLR, lr: float) -> None:
    """Make a schedule restored from a checkpoint (whose base lr torch keeps) follow `lr`, from
    its current step on: a resumed run trains with its own train.lr (and warmup, the schedule's
    function being this run's). With the checkpoint's lr it sets the value the schedule holds."""
    scheduler.base_lrs = [lr] * len(scheduler.base_lrs)
    for group in scheduler.optimizer.param_groups:
        group["initial_lr"] = lr
    refresh_lr(scheduler)
