"""Rewards: the registry of reward models, the check of the reward config, and the scorer
that builds the models reward.weights uses and scores a batch with them.

A score name in reward.weights (videoalign_vq) belongs to one registered model
(videoalign), which reads its section reward.models.<model> and returns all its scores
from one call. A new reward is a file declaring its section's dataclass and calling
`register_reward`: in this package (imported below), or anywhere, named in reward.plugins.
A pairwise model (its section derives from pairwise.PairwiseConfig) scores win rates
within groups, so its calls must hold whole groups of reward.group_size samples.
"""

from __future__ import annotations

import dataclasses
import importlib
from typing import Any

import torch

from fastvideo_grpo.config import Config, ConfigError, RewardConfig, coerce_section
from fastvideo_grpo.rewards.base import RewardFn, check_videos
from fastvideo_grpo.rewards.pairwise import check_pairwise, is_pairwise
from fastvideo_grpo.rewards.registry import (REGISTRY, RewardModel, ScoreFn, load_plugins, register_reward,
                                             rule_reward)

# The built-in reward models: each module registers its own when imported.
for _module in ("clip_score", "hps", "pickscore", "rules", "shapes", "videoalign", "vlm_judge"):
    importlib.import_module(f"{__name__}.{_module}")


class RewardError(RuntimeError):
    """A reward could not score: names the reward and the requests."""


def check_reward_config(cfg: RewardConfig) -> None:
    """Import reward.plugins, then check reward.weights' names and the reward.models
    sections; raises ConfigError. Builds nothing, so a typo fails before any model is
    loaded, here or in the reward process."""
    _sections(cfg)


def _sections(cfg: RewardConfig) -> dict[str, Any]:
    """Each model reward.weights uses -> its section (a config instance, or None)."""
    load_plugins(cfg.plugins)
    owners = {score: model for model in REGISTRY.values() for score in model.scores}
    unknown = [name for name in cfg.weights if name not in owners]
    if unknown:
        keys = ", ".join(f"reward.weights.{name}" for name in unknown)
        raise ConfigError(f"{keys}: unknown reward; available: {sorted(owners)}")
    used = {owners[name].name: owners[name] for name in cfg.weights}
    with_sections = sorted(name for name, model in REGISTRY.items() if model.config is not None)
    for name, raw in cfg.models.items():
        if name not in with_sections:
            raise ConfigError(f"reward.models.{name}: no reward model of that name takes a section; "
                              f"those that do: {with_sections}")
        if name not in used:
            # Kept, so that switching rewards need not delete it: its keys are checked,
            # its required ones are not.
            coerce_section(REGISTRY[name].config, raw, f"reward.models.{name}")
    sections = {name: _section(model, cfg) for name, model in used.items()}
    for name, model in used.items():
        if is_pairwise(model):
            check_pairwise(sections[name], cfg, f"reward.models.{name}")
    return sections


def _section(model: RewardModel, cfg: RewardConfig) -> Any:
    if model.config is None:
        return None
    key = f"reward.models.{model.name}"
    values = coerce_section(model.config, cfg.models.get(model.name, {}), key)
    for f in dataclasses.fields(model.config):
        required = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        if required and values.get(f.name, "") == "":
            used = sorted(set(model.scores) & set(cfg.weights))
            raise ConfigError(f"{key}.{f.name}: {values.get(f.name, '')!r} is invalid; expected a value, "
                              f"required when reward.weights uses {used}")
    return model.config(**values)


def pairwise_models(cfg: RewardConfig) -> list[str]:
    """The pairwise reward models reward.weights uses."""
    return [name for name in _sections(cfg) if is_pairwise(REGISTRY[name])]


def check_pairwise_use(cfg: Config) -> None:
    """A pairwise reward scores whole groups in one call: inline scoring gets rollout
    batches, and evaluation scores single (prompt, seed) samples. Raises ConfigError."""
    if not pairwise_models(cfg.reward):
        return
    s = cfg.sampling
    if cfg.reward.mode == "inline" and s.rollout_batch_size % s.group_size:
        raise ConfigError(f"sampling.rollout_batch_size: {s.rollout_batch_size} is invalid; expected a multiple of "
                          f"sampling.group_size ({s.group_size}) with a pairwise reward scored inline (whole groups "
                          "per call), or reward.mode=process")
    if cfg.eval.every:
        raise ConfigError(f"eval.every: {cfg.eval.every} is invalid; expected 0 with a pairwise reward: evaluation "
                          "scores single samples, which a pairwise judge cannot compare")


class Scorer:
    """Every model reward.weights uses, built once in this process. A call scores a batch
    with each model once and keeps the configured scores (binary where
    reward.binary_thresholds says): {score name: float [B]}.

    `group_size` is reward.group_size when a pairwise model is used, else 0; when it is
    not 0, a call must hold whole groups of one rank (a prompt's samples, in order, are
    its groups of group_size)."""

    def __init__(self, cfg: RewardConfig):
        sections = _sections(cfg)
        self.group_size = cfg.group_size if any(is_pairwise(REGISTRY[name]) for name in sections) else 0
        self.models: dict[str, ScoreFn] = {name: REGISTRY[name].build(cfg, section)
                                           for name, section in sections.items()}
        # Model -> the scores of it reward.weights uses; the others it returns are dropped.
        self.keep = {name: [s for s in REGISTRY[name].scores if s in cfg.weights] for name in sections}
        self.order = list(cfg.weights)
        self.thresholds = dict(cfg.binary_thresholds)

    def __call__(self, videos: torch.Tensor, prompts: list[str], what: str = "a batch") -> dict[str, torch.Tensor]:
        check_videos(videos, prompts)
        scores = {}
        for name, model in self.models.items():
            try:
                returned = model(videos, prompts)
            except Exception as e:
                raise RewardError(f"reward {name!r} failed on {what}: {type(e).__name__}: {e}") from e
            for score in self.keep[name]:
                value = _checked_score(returned, name, score, len(prompts), what)
                scores[score] = (value > self.thresholds[score]).float() if score in self.thresholds else value
        return {score: scores[score] for score in self.order}


def _checked_score(returned: Any, model: str, score: str, count: int, what: str) -> torch.Tensor:
    """`returned[score]` as a detached float tensor [count]. A reward's output enters training
    here, so what is wrong with it is named here, not in the update it would break later (a
    score that requires grad fails in backward, naming no reward)."""
    where = f"reward {model!r} on {what}"
    expected = f"expected a torch.Tensor of shape [{count}], one score per sample"
    if not isinstance(returned, dict):
        raise RewardError(f"{where}: returned a {_type_name(returned)}; expected a dict {{score name: tensor}}")
    if score not in returned:
        raise RewardError(f"{where}: returned no score {score!r} (it returned {sorted(map(str, returned))}); "
                          f"{expected}")
    value = returned[score]
    if not isinstance(value, torch.Tensor):
        hint = " (torch.from_numpy converts an array)" if type(value).__module__ == "numpy" else ""
        raise RewardError(f"{where}: score {score!r} is a {_type_name(value)}{hint}; {expected}")
    if tuple(value.shape) != (count,):
        raise RewardError(f"{where}: score {score!r} has shape {list(value.shape)}; {expected}")
    if value.is_complex():
        raise RewardError(f"{where}: score {score!r} is {value.dtype}; expected real numbers")
    return value.detach().float()


def _type_name(value: Any) -> str:
    kind = type(value)
    return kind.__qualname__ if kind.__module__ == "builtins" else f"{kind.__module__}.{kind.__qualname__}"


def with_all_scores(cfg: RewardConfig) -> RewardConfig:
    """`cfg` whose weights also hold, at weight 0, every other score of the models it uses,
    so that a scorer built from it returns them all (an evaluation reports the shapes
    reward's six scores whichever of them is weighted)."""
    owners = {score: model for model in REGISTRY.values() for score in model.scores}
    extra = {s: 0.0 for name in cfg.weights if name in owners for s in owners[name].scores if s not in cfg.weights}
    return dataclasses.replace(cfg, weights={**cfg.weights, **extra})


def build_scorer(cfg: RewardConfig) -> Scorer:
    """One callable that scores a batch with every configured reward, in this process."""
    return Scorer(cfg)


__all__ = ["REGISTRY", "RewardError", "RewardFn", "RewardModel", "ScoreFn", "Scorer", "build_scorer", "check_pairwise_use",
           "check_reward_config", "pairwise_models", "register_reward", "rule_reward", "with_all_scores"]
