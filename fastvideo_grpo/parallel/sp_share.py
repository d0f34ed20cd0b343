"""Work that the ranks of a sequence-parallel group would otherwise repeat: they hold the
same samples, so each decodes and scores a share of them and the scores are shared."""

from __future__ import annotations

import torch
import torch.distributed as dist

from fastvideo_grpo.parallel.distributed import World


def sp_rows(total: int, unit: int, world: World) -> torch.Tensor:
    """[total] bool: the rows of a rank's samples this rank decodes and scores. Runs of
    `unit` rows (a pairwise reward's whole groups, else single rows) are dealt round robin
    over the sp group, so every rollout batch is spread over it."""
    return (torch.arange(total) // unit) % world.sp_size == world.sp_rank


def gather_sp_scores(parts: list[tuple[torch.Tensor, dict[str, torch.Tensor]]], total: int,
                     world: World) -> dict[str, torch.Tensor]:
    """{name: [total]} in row order, the same on every rank of the sp group, from the
    (rows, {name: scores of those rows}) each of its ranks scored (one small collective)."""
    if world.sp_size > 1:
        gathered = [None] * world.sp_size
        dist.all_gather_object(gathered, parts, group=world.sp_group)
        parts = [part for rank_parts in gathered for part in rank_parts]
    scores = {name: torch.empty(total, dtype=values.dtype) for name, values in parts[0][1].items()}
    for rows, part in parts:
        for name, values in part.items():
            scores[name][rows] = values
    return scores
