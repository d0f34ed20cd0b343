"""FLOPs of one Wan2.2-TI2V row: Wan2.1's count (models/wan/flops.py), with the timestep
embedding and its projection to the six modulations run on every video token (per-token
timesteps) instead of once."""

from __future__ import annotations

from torch import nn

from fastvideo_grpo.models.flop_count import linear, mlp_embedder
from fastvideo_grpo.models.wan.flops import wan_flops


def forward_flops(network: nn.Module, latent_shape: tuple[int, ...], text_tokens: int) -> int:
    config = dict(network.config)
    d = config["num_attention_heads"] * config["attention_head_dim"]
    pt, ph, pw = config["patch_size"]
    _, frames, height, width = latent_shape
    tokens = (frames // pt) * (height // ph) * (width // pw)
    per_token_timestep = mlp_embedder(config["freq_dim"], d) + linear(1, d, 6 * d)
    return wan_flops(config, latent_shape, text_tokens) + (tokens - 1) * per_token_timestep
