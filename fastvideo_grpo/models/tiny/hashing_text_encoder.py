"""A seeded random-embedding text encoder: the tiny model's in-process prompts.

Real models read precomputed embeddings; this stands in so that the tiny demo needs no
weights while its conditioning still depends on the prompt's words (each word's crc32
picks its row of a seeded random table).
"""

from __future__ import annotations

import zlib

import torch

from fastvideo_grpo.models.base import TextConditioning

VOCAB_SIZE = 4096


class TinyTextEncoder:
    def __init__(self, dim: int, pooled_dim: int, max_tokens: int, seed: int = 0):
        generator = torch.Generator().manual_seed(seed)
        self.table = torch.randn(VOCAB_SIZE, dim, generator=generator)
        self.pool = torch.randn(dim, pooled_dim, generator=generator)
        self.max_tokens = max_tokens

    def token_ids(self, prompt: str) -> list[int]:
        words = prompt.lower().split()[: self.max_tokens] or [""]
        return [zlib.crc32(w.encode()) % VOCAB_SIZE for w in words]

    def __call__(self, prompts: list[str]) -> TextConditioning:
        embeds = torch.zeros(len(prompts), self.max_tokens, self.table.shape[1])
        mask = torch.zeros(len(prompts), self.max_tokens, dtype=torch.long)
        for row, prompt in enumerate(prompts):
            ids = self.token_ids(prompt)
            embeds[row, : len(ids)] = self.table[ids]
            mask[row, : len(ids)] = 1
        pooled = (embeds.sum(1) / mask.sum(1, keepdim=True)) @ self.pool
        return TextConditioning(embeds, mask, pooled)
