"""The config a run trains with, checked where it could silently differ from what it meets:
the other ranks' configs, the config of the run it resumes, and the prompt sets."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import typing
from pathlib import Path
from typing import Any

from fastvideo_grpo.config import Config, ConfigError, parse_yaml, to_dict
from fastvideo_grpo.parallel import World, all_gather_objects

logger = logging.getLogger(__name__)

# What a resumed run may change (a key, or a section ending in "."): how long and how fast it
# trains (train.lr and its warmup act on the restored schedule at once), how it is executed,
# logged, checkpointed, evaluated and watched. Every other key (model, data, sampling, the
# algorithm's math, rewards, seeds, the optimizer's other settings, ...) defines what the
# checkpoint was trained as, and a resumed run that changes it is refused.
RESUMABLE = (
    "train.iterations", "train.lr", "train.lr_warmup_steps", "train.lr_schedule", "train.grad_clip",
    "train.max_nonfinite_steps",
    "train.adam_implementation", "train.sample_every", "train.num_saved_samples", "train.progress_bar",
    "train.resume", "train.output_dir",
    # Per data-parallel rank: a resume on another number of ranks keeps the global batch by it.
    "train.prompts_per_iteration",
    "model.attention", "model.compile", "sampling.rollout_batch_size", "sampling.decode_batch_size",
    "sampling.trajectory_device",
    "reward.mode", "reward.address", "reward.device", "reward.timeout_s", "reward.max_batch",
    "reward.max_latency_ms", "reward.max_restarts", "reward.on_nonfinite",
    "parallel.", "checkpoint.", "eval.", "logging.", "health.",
)


def flatten(values: dict, cls: type = Config, prefix: str = "") -> dict[str, Any]:
    """Dotted key -> value of a config as `to_dict` or a saved config.yaml holds it, down to
    the dataclass fields: a mapping field (reward.weights) is one value. Keys the dict lacks
    (a config.yaml of an older version) are left out."""
    hints = typing.get_type_hints(cls)
    flat = {}
    for f in dataclasses.fields(cls):
        if f.name not in values:
            continue
        value = values[f.name]
        if dataclasses.is_dataclass(hints[f.name]) and isinstance(value, dict):
            flat.update(flatten(value, hints[f.name], f"{prefix}{f.name}."))
        else:
            flat[f"{prefix}{f.name}"] = value
    return flat


def resumable(key: str) -> bool:
    return any(key == k or (k.endswith(".") and key.startswith(k)) for k in RESUMABLE)


def check_resumed_config(cfg: Config, saved: Path | None, checkpoint: Path) -> None:
    """Compare the config a run resumes `checkpoint` with to its run's `saved` config.yaml:
    changes of RESUMABLE keys are logged (one line, each key old -> new) and take effect;
    any other change is refused, naming every such key with both values."""
    old = flatten(parse_yaml(saved.read_text(), str(saved)) or {}) if saved is not None else {}
    if not old:
        logger.warning("%s has no config.yaml (or an empty one) beside its checkpoints folder: the resumed config "
                       "is not compared with the one it was trained with", checkpoint)
        return
    new = flatten(to_dict(cfg))
    changed = {k: (old[k], new[k]) for k in new if k in old and old[k] != new[k]}
    refused = [k for k in changed if not resumable(k)]
    if refused:
        listed = "; ".join(f"{k}: {changed[k][0]!r} -> {changed[k][1]!r}" for k in refused)
        raise ConfigError(
            f"cannot resume {checkpoint}: the config changes {listed} (old -> new, against {saved}), which a "
            "resumed run must keep. Set them back, or start a new run in another train.output_dir; to carry on "
            f"anyway, edit {saved} to the new values. A resumed run may change: {', '.join(RESUMABLE)}")
    if changed:
        logger.info("resuming %s with a changed config: %s", checkpoint,
                    ", ".join(f"{k} {a!r} -> {b!r}" for k, (a, b) in changed.items()))


def check_same_on_ranks(cfg: Config, world: World) -> None:
    """Every rank must train with the same config: each hashes its own, the hashes are
    gathered, and on a mismatch the configs too, to name the keys that differ and where."""
    flat = {k: repr(v) for k, v in flatten(to_dict(cfg)).items()}
    digest = hashlib.sha256(json.dumps(flat, sort_keys=True).encode()).hexdigest()
    if len(set(all_gather_objects(digest, world))) == 1:
        return
    configs = all_gather_objects(flat, world)  # every rank sees the same hashes: all gather, none hangs
    differing = sorted(k for k in set().union(*configs) if len({c.get(k) for c in configs}) > 1)
    lines = []
    for key in differing:
        ranks: dict[str | None, list[int]] = {}
        for rank, config in enumerate(configs):
            ranks.setdefault(config.get(key), []).append(rank)
        lines.append(f"{key}: " + ", ".join(f"{value} on rank{'s' if len(r) > 1 else ''} {_ranks(r)}"
                                            for value, r in ranks.items()))
    raise ConfigError("the ranks were started with different configs; " + "; ".join(lines))


def _ranks(ranks: list[int]) -> str:
    return ", ".join(map(str, ranks)) if len(ranks) <= 8 else f"{ranks[0]}..{ranks[-1]} ({len(ranks)} ranks)"


def warn_of_waste(cfg: Config, num_prompts: int, num_held_out: int | None, dp_size: int) -> None:
    """Settings the run accepts but that do less than they say, said once at start: a reward
    weighed 0 (scored and logged, never trained on), more prompts per iteration than the
    prompt set holds (some are drawn twice in one iteration), more held-out prompts than
    there are (all of them are evaluated)."""
    weights = cfg.reward.weights
    for name in sorted(n for n, w in weights.items() if w == 0):
        logger.warning("reward.weights.%s is 0: it is scored and logged but adds nothing to the advantage", name)
    per_iteration = cfg.train.prompts_per_iteration * dp_size
    if per_iteration > num_prompts:
        logger.warning("train.prompts_per_iteration=%d on %d data-parallel ranks takes %d prompts an iteration but "
                       "the prompt set holds %d: some prompts are drawn twice in one iteration",
                       cfg.train.prompts_per_iteration, dp_size, per_iteration, num_prompts)
    if num_held_out is not None and cfg.eval.num_prompts > num_held_out:
        logger.warning("eval.num_prompts=%d but the held-out prompt set holds %d: evaluating all %d",
                       cfg.eval.num_prompts, num_held_out, num_held_out)
