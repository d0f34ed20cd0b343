"""What a training run saves and resumes: the learner (weights, optimizer, EMA), its LR
schedule and the prompt sampler's position."""

from __future__ import annotations

from pathlib import Path

from fastvideo_grpo.checkpoint.folders import latest_checkpoint
from fastvideo_grpo.checkpoint.sharded import load_checkpoint, save_checkpoint
from fastvideo_grpo.config import Config
from fastvideo_grpo.data.prompts import PromptSampler
from fastvideo_grpo.nft import old_state
from fastvideo_grpo.parallel import World, all_finite
from fastvideo_grpo.update import Learner, NonFiniteTraining


def resume_run(learner: Learner, sampler: PromptSampler, world: World, cfg: Config) -> int:
    """Load the checkpoint `train.resume` asks for; returns the first iteration to run.

    A run never starts from scratch over an earlier run's checkpoints (it would overwrite
    them and its metrics): that is an error saying how to start fresh."""
    folder = Path(cfg.train.output_dir) / "checkpoints"
    earlier = sorted(p.name for p in folder.glob("step_*") if p.is_dir()) if folder.is_dir() else []
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
    state = load_checkpoint(path, learner.policy.transformer, learner.optimizer, world, learner.ema,
                            verify=cfg.checkpoint.verify, extra=_extra(learner))
    learner.scheduler.load_state_dict(state["scheduler"])
    sampler.load_state_dict(state["sampler"])
    return state["iteration"]


def save_run(learner: Learner, sampler: PromptSampler, world: World, cfg: Config, iteration: int,
             transformer_config: dict | None = None) -> None:
    """Save after `iteration` iterations; a non-finite weight is never written."""
    if not all_finite(learner.policy.transformer, world):
        raise NonFiniteTraining(f"after iteration {iteration - 1} the weights hold NaN or inf; not checkpointing "
                                f"them over {cfg.train.output_dir}/checkpoints (the last checkpoint is intact)")
    trainer_state = {"scheduler": learner.scheduler.state_dict(), "sampler": sampler.state_dict()}
    save_checkpoint(cfg.train.output_dir, iteration, learner.policy.transformer, learner.optimizer, trainer_state, world,
                    cfg.checkpoint.keep_last, learner.ema, transformer_config, _extra(learner))


def _extra(learner: Learner) -> dict[str, dict]:
    return {"old": old_state(learner.old, learner.policy)} if learner.old is not None else {}
