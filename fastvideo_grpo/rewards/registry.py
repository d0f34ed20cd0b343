"""The reward registry: reward models by name, each with its config section, the score
names it provides and how to build it; and reward.plugins, which add models to it."""

from __future__ import annotations

import importlib
import importlib.util
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch

from fastvideo_grpo.config import ConfigError, RewardConfig
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
    for i, plugin in enumerate(plugins):
        try:
            if plugin.endswith(".py") or "/" in plugin:
                _import_file(Path(plugin).resolve())
            else:
                importlib.import_module(plugin)
        except Exception as e:
            raise ConfigError(f"reward.plugins[{i}]: importing {plugin!r} failed: {type(e).__name__}: {e}") from e


_LOADED_FILES: set[Path] = set()


def _import_file(path: Path) -> None:
    # Named by its path: two plugin files of one name are two modules, and a second load
    # (the trainer checks the config, then builds the scorer) finds the first.
    # Loaded files are remembered here, not only in sys.modules, which code that imports
    # and unloads modules may prune while the registry keeps their rewards.
    name = f"reward_plugin:{path}"
    if name in sys.modules or path in _LOADED_FILES:
        return
    if not path.is_file():
        raise FileNotFoundError(f"{str(path)!r} does not exist; expected a .py file or a module name")
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # before it runs: its dataclasses look their module up
    registered = set(REGISTRY)
    try:
        spec.loader.exec_module(module)
    except BaseException:
        # A fixed file can be loaded again: forget it, and the rewards it registered before failing.
        del sys.modules[name]
        for added in set(REGISTRY) - registered:
            del REGISTRY[added]
        raise
    _LOADED_FILES.add(path)
