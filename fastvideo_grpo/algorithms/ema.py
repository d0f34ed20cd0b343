"""Exponential moving average of the trained weights, sharded like the weights themselves."""

from __future__ import annotations

import torch
from torch import nn


def init_ema(model: nn.Module) -> dict[str, torch.Tensor]:
    """A copy of every trainable parameter (a DTensor shard under FSDP), keyed by name."""
    return {name: p.detach().clone() for name, p in model.named_parameters() if p.requires_grad}


@torch.no_grad()
def update_ema(ema: dict[str, torch.Tensor], model: nn.Module, decay: float) -> None:
    """ema = decay * ema + (1 - decay) * weights."""
    for name, p in model.named_parameters():
        if name in ema:
            ema[name].lerp_(p.detach(), 1.0 - decay)
