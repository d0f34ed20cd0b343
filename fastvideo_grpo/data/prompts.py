"""The sampler that deals prompts to data-parallel ranks."""

from __future__ import annotations

import torch


class PromptSampler:
    """Each iteration, `per_rank` prompt indices for this dp rank, disjoint across ranks.

    Epochs reshuffle by (seed, epoch); the state (epoch, position) is all a checkpoint needs.
    """

    def __init__(self, num_prompts: int, per_rank: int, dp_rank: int, dp_size: int,
                 seed: int, shuffle: bool = True):
        self.num_prompts, self.per_rank = num_prompts, per_rank
        self.dp_rank, self.dp_size = dp_rank, dp_size
        self.seed, self.shuffle = seed, shuffle
        self.epoch, self.position = 0, 0

    def _order(self, epoch: int) -> torch.Tensor:
        if not self.shuffle:
            return torch.arange(self.num_prompts)
        return torch.randperm(self.num_prompts, generator=torch.Generator().manual_seed(self.seed + epoch))

    def next_indices(self) -> list[int]:
        """The global batch is dp_size * per_rank consecutive prompts of the epoch's order;
        an epoch that runs out continues into the next one."""
        global_batch = self.dp_size * self.per_rank
        picked: list[int] = []
        while len(picked) < global_batch:
            order = self._order(self.epoch)
            take = order[self.position: self.position + global_batch - len(picked)].tolist()
            picked += take
            self.position += len(take)
            if self.position >= self.num_prompts:
                self.epoch, self.position = self.epoch + 1, 0
        return picked[self.dp_rank * self.per_rank: (self.dp_rank + 1) * self.per_rank]

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "position": self.position}

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self.position = int(state["epoch"]), int(state["position"])
