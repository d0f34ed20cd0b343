"""FLOPs of one HunyuanVideo15Transformer3DModel row, counted analytically from its config:
the patch embedding, the timestep embedding, the token refiner over the Qwen text, the dual-
stream blocks over the joint video+text sequence (attention projections, the MLPs, the
per-sample adaLN modulation) and the output projection; elementwise ops, norms and RoPE are
not counted. Text tokens are counted as Qwen tokens through the refiner: a prompt's quoted
glyph tokens (ByT5) take a cheaper projection instead (about 0.1% of a released block's
cost per token), and text-to-video has no image tokens."""

from __future__ import annotations

from torch import nn

from fastvideo_grpo.models.flop_count import attention, linear, mlp_embedder
from fastvideo_grpo.models.hunyuan_video.flops import token_refiner_flops


def hunyuan_video_15_flops(config: dict, latent_shape: tuple[int, ...], text_tokens: int) -> int:
    """One row of HunyuanVideo15Transformer3DModel (text-to-video) on a [C, T, H, W] latent."""
    d = config["num_attention_heads"] * config["attention_head_dim"]
    mlp = int(d * config["mlp_ratio"])
    p, pt = config["patch_size"], config["patch_size_t"]
    _, frames, height, width = latent_shape
    n, text = (frames // pt) * (height // p) * (width // p), text_tokens
    s = n + text
    patches = linear(n, config["in_channels"] * pt * p * p, d)
    refiner = token_refiner_flops(text, config["text_embed_dim"], d, config["num_refiner_layers"])
    # Both streams' six modulations, q, k, v and out and an MLP per token, joint attention.
    block = 2 * linear(1, d, 6 * d) + 4 * linear(s, d, d) + 2 * linear(s, d, mlp) + attention(s, s, d)
    out = linear(1, d, 2 * d) + linear(n, d, pt * p * p * config["out_channels"])
    return mlp_embedder(256, d) + patches + refiner + config["num_layers"] * block + out


def forward_flops(network: nn.Module, latent_shape: tuple[int, ...], text_tokens: int) -> int:
    return hunyuan_video_15_flops(dict(network.config), latent_shape, text_tokens)
