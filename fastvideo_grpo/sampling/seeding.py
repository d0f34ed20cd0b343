"""Generators seeded by tuples of ints, so that every random draw is named by what it is for
(seed, iteration, purpose, global sample index) and no batching or rank split changes it."""

from __future__ import annotations

import enum

import numpy as np
import torch


@enum.unique
class Purpose(enum.IntEnum):
    """What a generator's draws are for: the seed part after (seed, iteration). Each value is
    part of every seed drawn with it, so renumbering one changes every run's numbers."""

    SHARED_INITIAL_NOISE = 0  # x_0 of a group (sampling.shared_noise), by global group index
    STEP_NOISE = 1  # a sample's SDE step noise, by global sample index
    TRAINED_TIMESTEPS = 2  # the transitions a GRPO update trains of a rollout batch (algorithms/grpo.py)
    INITIAL_NOISE = 3  # x_0 of a sample, by global sample index
    STEP_PLAN = 4  # an iteration's step plan (where its SDE window starts)
    NFT_TIMESTEPS_AND_NOISE = 5  # DiffusionNFT's trained timesteps of a micro-batch and their forward noise


def make_generator(*seed_parts: int) -> torch.Generator:
    """A CPU generator seeded from a tuple of ints, e.g. (seed, iteration, dp_rank, sample)."""
    seed = int(np.random.SeedSequence([int(p) for p in seed_parts]).generate_state(1, dtype=np.uint64)[0])
    return torch.Generator().manual_seed(seed % (2**63))
