"""Pairwise rewards (Pref-GRPO, arXiv 2508.20751): a judge compares two samples of a group,
and a sample's reward is its win rate in its group, which then goes through the usual
group advantage (advantages.py is unchanged: a pairwise model's score is the win rate).

A reward model is pairwise when its section's dataclass derives from `PairwiseConfig`.
Its scorer needs whole groups in one call, from one trainer rank: a prompt's samples in a
call, in order, are its groups of reward.group_size (a rank samples a group's rows one
after another), so their count must be a multiple of it; the reward process holds
requests back until their groups are whole (`take_whole_groups`) and gives a call one
rank's requests. Within a group it judges every pair, or `pairs_per_group` random pairs
that cover every sample, drawn from a generator seeded by the group's prompt and its
videos: the scorer does not see the iteration, and the same rollout (a resumed
iteration's) draws the same pairs.
"""

from __future__ import annotations

import hashlib
import itertools
import math
from dataclasses import dataclass
from typing import Callable, Hashable, TypeVar

import torch

from fastvideo_grpo.config import ConfigError, RewardConfig
from fastvideo_grpo.rewards.registry import RewardModel, ScoreFn

# (i, j): indices of two samples of one batch; its outcome is 1.0 when i is the better,
# 0.0 when j is, 0.5 for a tie.
Pair = tuple[int, int]
# uint8 videos [B, T, H, W, 3], prompts, pairs into the batch -> outcomes float [P].
CompareFn = Callable[[torch.Tensor, list[str], list[Pair]], torch.Tensor]
T = TypeVar("T")


@dataclass(kw_only=True)
class PairwiseConfig:
    """The base of a pairwise reward's section."""

    # Pairs judged per group: 0 judges all G(G-1)/2; otherwise that many distinct random
    # pairs, at least ceil(G/2) so that every sample is judged.
    pairs_per_group: int = 0


def is_pairwise(model: RewardModel) -> bool:
    return model.config is not None and issubclass(model.config, PairwiseConfig)


def check_pairwise(section: PairwiseConfig, cfg: RewardConfig, key: str) -> None:
    """reward.group_size is known (>= 2) and `pairs_per_group` fits it; raises ConfigError."""
    g = cfg.group_size
    if g < 2:
        raise ConfigError(f"reward.group_size: {g!r} is invalid; expected the samples per group (sampling.group_size), "
                          f">= 2: {key} compares the samples of a group with each other")
    most = g * (g - 1) // 2
    k = section.pairs_per_group
    if k != 0 and not math.ceil(g / 2) <= k <= most:
        raise ConfigError(f"{key}.pairs_per_group: {k!r} is invalid; expected 0 (all {most} pairs) or a count in "
                          f"[{math.ceil(g / 2)}, {most}] for groups of {g} (every sample in at least one pair)")


def win_rates(count: int, pairs: list[Pair], outcomes: torch.Tensor) -> torch.Tensor:
    """float [count]: each sample's points over its comparisons, where the outcome o of
    pair (i, j) gives i o points and j 1 - o (a win 1, a tie 0.5, a loss 0)."""
    first = torch.tensor([i for i, _ in pairs], dtype=torch.long)
    second = torch.tensor([j for _, j in pairs], dtype=torch.long)
    o = outcomes.double()
    points = torch.zeros(count, dtype=torch.float64).index_add_(0, first, o).index_add_(0, second, 1 - o)
    games = torch.zeros(count, dtype=torch.float64)
    games.index_add_(0, first, torch.ones_like(o)).index_add_(0, second, torch.ones_like(o))
    if (games == 0).any():
        raise ValueError(f"samples {(games == 0).nonzero().flatten().tolist()} of {count} are in no pair")
    return (points / games).float()


def draw_pairs(count: int, pairs_per_group: int, generator: torch.Generator | None = None) -> list[Pair]:
    """Pairs of `count` samples, sorted: all of them when pairs_per_group is 0; else a random
    matching that covers every sample (ceil(count/2) pairs), then distinct random pairs."""
    every = list(itertools.combinations(range(count), 2))
    if pairs_per_group == 0:
        return every
    order = torch.randperm(count, generator=generator).tolist()
    chosen = {tuple(sorted(order[k:k + 2])) for k in range(0, count - 1, 2)}
    if count % 2:  # the last is unmatched: pair it with the first, already in a pair with another
        chosen.add(tuple(sorted((order[-1], order[0]))))
    rest = [pair for pair in every if pair not in chosen]
    extra = torch.randperm(len(rest), generator=generator)[:max(0, pairs_per_group - len(chosen))]
    return sorted(chosen | {rest[k] for k in extra.tolist()})


def group_seed(prompt: str, videos: torch.Tensor) -> int:
    """A seed from a group's prompt and its videos (uint8 [G, T, H, W, 3]; every 8th pixel
    of each row and column, enough to tell rollouts apart)."""
    digest = hashlib.blake2b(prompt.encode(), digest_size=8)
    digest.update(videos[:, :, ::8, ::8].contiguous().numpy().tobytes())
    return int.from_bytes(digest.digest(), "little")


def groups_of(prompts: list[str], group_size: int) -> list[list[int]]:
    """The indices of each group: each prompt's samples in order (prompts in order of first
    appearance), cut into runs of group_size. Raises ValueError when a prompt's count is
    not a multiple of group_size."""
    by_prompt: dict[str, list[int]] = {}
    for i, prompt in enumerate(prompts):
        by_prompt.setdefault(prompt, []).append(i)
    for prompt, indices in by_prompt.items():
        if len(indices) % group_size:
            raise ValueError(f"prompt {prompt!r} has {len(indices)} samples in this call, not a multiple of "
                             f"reward.group_size={group_size}: a pairwise reward compares each group whole, so all "
                             "of a group's samples must be scored in one call")
    return [indices[k:k + group_size] for indices in by_prompt.values() for k in range(0, len(indices), group_size)]


def take_whole_groups(items: list[T], key: Callable[[T], Hashable], group_size: int) -> tuple[list[T], list[T]]:
    """Split `items` (in arrival order) into those that make whole groups of `group_size`
    per key (the first multiple of group_size of each key's items) and the rest, to hold
    back until their groups are whole. Both keep the order of `items`."""
    seen: dict[Hashable, int] = {}
    for item in items:
        seen[key(item)] = seen.get(key(item), 0) + 1
    room = {k: n - n % group_size for k, n in seen.items()}
    ready, held = [], []
    for item in items:
        k = key(item)
        (ready if room[k] > 0 else held).append(item)
        room[k] -= 1
    return ready, held


def pairwise_score(name: str, compare: CompareFn, group_size: int, pairs_per_group: int) -> ScoreFn:
    """A score function from a comparison of pairs: the samples' win rates in their groups,
    {name: float [B]}. All pairs of the call go to `compare` at once (a judge can run
    them concurrently)."""

    def score(videos: torch.Tensor, prompts: list[str]) -> dict[str, torch.Tensor]:
        groups = groups_of(prompts, group_size)
        local = []  # per group, its pairs as indices into the group
        for indices in groups:
            generator = None
            if pairs_per_group:
                generator = torch.Generator().manual_seed(group_seed(prompts[indices[0]], videos[indices]))
            local.append(draw_pairs(len(indices), pairs_per_group, generator))
        pairs = [(g[i], g[j]) for g, group_pairs in zip(groups, local) for i, j in group_pairs]
        outcomes = compare(videos, prompts, pairs)
        rates = torch.empty(len(prompts))
        start = 0
        for indices, group_pairs in zip(groups, local):
            rates[indices] = win_rates(len(indices), group_pairs, outcomes[start:start + len(group_pairs)])
            start += len(group_pairs)
        return {name: rates}

    return score
