"""The reward registry: reward models by name, each with its config section, the score
names it provides and how to build it; and reward.plugins, which add models to it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch

from fastvideo_grpo.plugins import import_plugins
from fastvideo_grpo.config import RewardConfig
from fastvideo_grpo.rewards.base import RewardFn

# uint8 videos [B, T, H, W, 3], prompts -> {score name: float [B]}.
ScoreFn = Callable[[torch.Tensor, list[str]], dict[str, torch.Tensor]]


@dataclass(frozen=True)
class RewardModel:
    # Its section, reward.models.<name>.
    name: str
    # The names reward.weights may use; one call of the built model returns all of them.
    scores: tuple[str, ...]
    # (the shared reward config, its section as a `config` instance or None) -> scorer.
    build: Callable[[RewardConfig, Any], ScoreFn]
    # The dataclass of its section; a field without a default is required when one of the
    # model's scores is in reward.weights. None: the model takes no section.
    config: type | None = None
    # prompt -> None, or ValueError saying what the prompt lacks (a rule reward's colour
    # word): the preflight checks every training prompt with it before a job is queued.
    check_prompt: Callable[[str], Any] | None = None


# Model name -> entry. Built-in models register on import of fastvideo_grpo.rewards.
REGISTRY: dict[str, RewardModel] = {}


def register_reward(model: RewardModel) -> RewardModel:
    """Add `model` to the registry; its name and score names must be new."""
    if model.name in REGISTRY:
        raise ValueError(f"reward model {model.name!r} is already registered")
    owners = {score: m.name for m in REGISTRY.values() for score in m.scores}
    taken = [score for score in model.scores if score in owners]
    if taken:
        raise ValueError(f"reward model {model.name!r}: scores {taken} are already provided by "
                         f"{sorted({owners[s] for s in taken})}")
    REGISTRY[model.name] = model
    return model


def rule_reward(name: str, fn: RewardFn, check_prompt: Callable[[str], Any] | None = None) -> RewardModel:
    """A model with no section and one score `name`, from a function videos, prompts -> [B]."""
    return RewardModel(name, (name,), lambda cfg, section: lambda videos, prompts: {name: fn(videos, prompts)},
                       check_prompt=check_prompt)


def load_plugins(plugins: list[str]) -> None:
    """Import each of reward.plugins (a module name, or the path of a .py file) once per
    process; importing it registers its rewards."""
    import_plugins(plugins, "reward.plugins", REGISTRY)
