"""FLOPs of one UNet2DConditionModel row. A UNet's convolutions at five resolutions have no
short closed form: its forward is counted once by `FlopCounterMode` on a meta-device copy
(shapes only, no compute)."""

from __future__ import annotations

import functools
import json

import torch
from diffusers import UNet2DConditionModel
from torch import nn

from fastvideo_grpo.models.flop_count import counter


@functools.lru_cache(maxsize=8)
def _unet_flops(config_json: str, latent_shape: tuple[int, ...], text_tokens: int) -> int:
    config = json.loads(config_json)
    with torch.device("meta"):
        unet = UNet2DConditionModel.from_config(config)
        sample = torch.empty(1, *latent_shape)
        text = torch.empty(1, text_tokens, config["cross_attention_dim"])
        with torch.no_grad(), counter() as count:
            unet(sample, torch.ones(1), text, return_dict=False)
    return count.get_total_flops()


def forward_flops(network: nn.Module, latent_shape: tuple[int, ...], text_tokens: int) -> int:
    plain = json.dumps({k: v for k, v in dict(network.config).items() if not k.startswith("_")}, default=list)
    return _unet_flops(plain, tuple(latent_shape), text_tokens)
