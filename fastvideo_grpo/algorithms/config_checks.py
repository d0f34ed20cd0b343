"""Each algorithm's own rules on a config, by train.algorithm name: config.validate adds
them. This module imports nothing of the package, so that loading a config imports no torch
or diffusers (the table in registry.py does) and no import runs in a circle: a rule returns
(key, value, what is expected), which validate words as every other problem. An algorithm
without rules has no entry. Whether
train.algorithm names an algorithm at all, `registry.algorithm_of` answers where the model
family is checked, before any process starts."""

from __future__ import annotations

from typing import Any, Callable

# (dotted key, its value, what is expected)
Problem = tuple[str, Any, str]


def nft_problems(cfg) -> list[Problem]:
    """What NFT cannot train with: one noise per group (its rollout is deterministic) and
    GRPO's guards, which it never reads."""
    problems = []
    if cfg.sampling.shared_noise:
        problems.append(("sampling.shared_noise", True,
                         f"false with train.algorithm={cfg.train.algorithm}: its rollout is deterministic, so "
                         "one initial noise per group would give G equal samples"))
    for key in ("ratio_norm", "step_reweight", "kl_schedule", "reference_reset_every", "reference_reset_kl"):
        value, default = getattr(cfg.grpo, key), getattr(type(cfg.grpo), key)  # the dataclass's default
        if value != default:
            problems.append((f"grpo.{key}", value,
                             f"{default!r} with train.algorithm={cfg.train.algorithm} (a GRPO guard)"))
    return problems


CONFIG_PROBLEMS: dict[str, Callable[[Any], list[Problem]]] = {"nft": nft_problems}


def algorithm_problems(cfg) -> list[Problem]:
    """The problems of the config under train.algorithm's own rules."""
    check = CONFIG_PROBLEMS.get(cfg.train.algorithm)
    return check(cfg) if check is not None else []
