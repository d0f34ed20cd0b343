"""What a training run saves and resumes: the learner (weights, optimizer, EMA, NFT's old
policy, a KL reference that resets, the KL weight), its LR schedule and the prompt
sampler's position."""

from __future__ import annotations

from pathlib import Path

from fastvideo_grpo.checkpoint.folders import latest_checkpoint, step_folders
from fastvideo_grpo.checkpoint.sharded import load_checkpoint, save_checkpoint
from fastvideo_grpo.config import Config, run_config_path
from fastvideo_grpo.data.prompts import PromptSampler
from fastvideo_grpo.parallel import World, all_finite
from fastvideo_grpo.run_config import check_resumed_config
from fastvideo_grpo.update import Learner, NonFiniteTraining, set_base_lr, trained_weights


def resume_run(learner: Learner, sampler: PromptSampler, world: World, cfg: Config) -> int:
    """Load the checkpoint `train.resume` asks for; returns the first iteration to run. The
    config may differ from the checkpoint's run only in what run_config.RESUMABLE lists, and
    train.lr then takes effect at once.

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
                            verify=cfg.checkpoint.verify, extra=_extra(learner, cfg))
    learner.scheduler.load_state_dict(state["scheduler"])
    set_base_lr(learner.scheduler, cfg.train.lr)
    learner.kl_weight = state.get("kl_weight", learner.kl_weight)
    sampler.load_state_dict(state["sampler"])
    return state["iteration"]


def save_run(learner: Learner, sampler: PromptSampler, world: World, cfg: Config, iteration: int,
             transformer_config: dict | None = None) -> None:
    """Save after `iteration` iterations; a non-finite weight is never written."""
    if not all_finite(learner.policy.transformer, world):
        raise NonFiniteTraining(f"after iteration {iteration - 1} the weights hold NaN or inf; not checkpointing "
                                f"them over {cfg.train.output_dir}/checkpoints (the last checkpoint is intact)")
    trainer_state = {"scheduler": learner.scheduler.state_dict(), "sampler": sampler.state_dict(),
                     "kl_weight": learner.kl_weight}
    save_checkpoint(cfg.train.output_dir, iteration, learner.policy.transformer, learner.optimizer, trainer_state, world,
                    cfg.checkpoint.keep_last, learner.ema, transformer_config, _extra(learner, cfg))


def resets_reference(cfg: Config) -> bool:
    g = cfg.grpo
    return cfg.train.algorithm == "grpo" and g.kl_weight > 0 and (g.reference_reset_every > 0 or g.reference_reset_kl > 0)


def _extra(learner: Learner, cfg: Config) -> dict[str, dict]:
    """The frozen copies that are no longer the initial model: NFT's old policy, and the KL
    reference once it may have been reset."""
    extra = {}
    if learner.old is not None:
        extra["old"] = trained_weights(learner.old, learner.policy)
    if learner.reference is not None and resets_reference(cfg):
        extra["reference"] = trained_weights(learner.reference, learner.policy)
    return extra
