"""What the sampler and trainer need from a generator model, independent of its family."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch
from torch import nn


@dataclass
class TextConditioning:
    prompt_embeds: torch.Tensor  # [B, L, D]
    attention_mask: torch.Tensor  # [B, L], ones then zeros
    pooled_embeds: torch.Tensor  # [B, P]

    def select(self, index: torch.Tensor | slice | list[int]) -> "TextConditioning":
        return TextConditioning(self.prompt_embeds[index], self.attention_mask[index], self.pooled_embeds[index])

    def repeat_interleave(self, repeats: int) -> "TextConditioning":
        return TextConditioning(
            self.prompt_embeds.repeat_interleave(repeats, dim=0),
            self.attention_mask.repeat_interleave(repeats, dim=0),
            self.pooled_embeds.repeat_interleave(repeats, dim=0),
        )

    def to(self, device: torch.device | str, dtype: torch.dtype | None = None) -> "TextConditioning":
        return TextConditioning(
            self.prompt_embeds.to(device, dtype),
            self.attention_mask.to(device),
            self.pooled_embeds.to(device, dtype),
        )


class Policy(Protocol):
    """A model adapter. The trainer only ever talks to a model through these members."""

    # The trained network; parallelism and the optimizer are applied to it.
    transformer: nn.Module
    # Its blocks, in order: the units of FSDP sharding and activation checkpointing.
    blocks: list[nn.Module]

    def latent_shape(self, num_frames: int, height: int, width: int) -> tuple[int, ...]:
        """Shape of one sample's latent, without the batch dim."""

    def predict_velocity(self, latents: torch.Tensor, sigma: float, cond: TextConditioning) -> torch.Tensor:
        """Network prediction at noise level sigma, as fp32 with the latents' shape."""

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Clean latents [B, *latent_shape] -> uint8 video frames [B, T, H, W, 3] on CPU."""
