"""FLOPs of one WanTransformer3DModel row, counted analytically from its config: the patch
embedding, the timestep and text embedders, each block's self-attention over the video
tokens, cross-attention to the text and MLP, and the output projection; elementwise ops,
norms and RoPE are not counted."""

from __future__ import annotations

import math

from torch import nn

from fastvideo_grpo.models.flop_count import attention, linear, mlp_embedder
from fastvideo_grpo.models.wan.experts import experts_of


def wan_flops(config: dict, latent_shape: tuple[int, ...], text_tokens: int) -> int:
    """One row of WanTransformer3DModel (text-to-video: no image embedding) on a [C, T, H, W] latent."""
    d = config["num_attention_heads"] * config["attention_head_dim"]
    pt, ph, pw = config["patch_size"]
    patch = pt * ph * pw
    _, frames, height, width = latent_shape
    n, text = (frames // pt) * (height // ph) * (width // pw), text_tokens
    # Timestep embedding, its projection to the blocks' six modulations, the text projection
    # (PixArtAlphaTextProjection: text_dim -> d -> d on every text token).
    conditioning = (mlp_embedder(config["freq_dim"], d) + linear(1, d, 6 * d)
                    + linear(text, config["text_dim"], d) + linear(text, d, d))
    patches = linear(n, config["in_channels"] * patch, d)
    self_attention = 4 * linear(n, d, d) + attention(n, n, d)
    # Queries and output from the video tokens, keys and values from the text.
    cross_attention = 2 * linear(n, d, d) + 2 * linear(text, d, d) + attention(n, text, d)
    mlp = linear(n, d, config["ffn_dim"]) + linear(n, config["ffn_dim"], d)
    out = linear(n, d, config["out_channels"] * math.prod(config["patch_size"]))
    return conditioning + patches + config["num_layers"] * (self_attention + cross_attention + mlp) + out


def forward_flops(network: nn.Module, latent_shape: tuple[int, ...], text_tokens: int) -> int:
    """One row through the network; of two experts, through the first (Wan2.2 A14B's are alike)."""
    return wan_flops(dict(experts_of(network)[0].config), latent_shape, text_tokens)
