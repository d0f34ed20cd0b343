"""Each algorithm's own rules on a config, by train.algorithm name: config.validate adds
them. This module imports the config alone, so that loading a config imports no torch or
diffusers (the table in registry.py does); an algorithm without rules has no entry. Whether
train.algorithm names an algorithm at all, `registry.algorithm_of` answers where the model
family is checked, before any process starts."""

from __future__ import annotations

from typing import Callable

from fastvideo_grpo.config import Config, GRPOConfig, problem


def nft_problems(cfg: Config) -> list[str]:
    """What NFT cannot train with: one noise per group (its rollout is deterministic) and
    GRPO's guards, which it never reads."""
    problems = []
    if cfg.sampling.shared_noise:
        problems.append(problem("sampling.shared_noise", True,
                                f"false with train.algorithm={cfg.train.algorithm}: its rollout is deterministic, so "
                                "one initial noise per group would give G equal samples"))
    for key in ("ratio_norm", "step_reweight", "kl_schedule", "reference_reset_every", "reference_reset_kl"):
        value, default = getattr(cfg.grpo, key), getattr(GRPOConfig, key)
        if value != default:
            problems.append(problem(f"grpo.{key}", value,
                                    f"{default!r} with train.algorithm={cfg.train.algorithm} (a GRPO guard)"))
    return problems


CONFIG_PROBLEMS: dict[str, Callable[[Config], list[str]]] = {"nft": nft_problems}


def algorithm_problems(cfg: Config) -> list[str]:
    """The problems of the config under train.algorithm's own rules."""
    check = CONFIG_PROBLEMS.get(cfg.train.algorithm)
    return check(cfg) if check is not None else []
