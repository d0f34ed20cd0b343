"""Generators seeded by tuples of ints, so that every random draw is named by what it is for
(seed, iteration, purpose, global sample index) and no batching or rank split changes it."""

from __future__ import annotations

import numpy as np
import torch


def make_generator(*seed_parts: int) -> torch.Generator:
    """A CPU generator seeded from a tuple of ints, e.g. (seed, iteration, dp_rank, sample)."""
    seed = int(np.random.SeedSequence([int(p) for p in seed_parts]).generate_state(1, dtype=np.uint64)[0])
    return torch.Generator().manual_seed(seed % (2**63))
