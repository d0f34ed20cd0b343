"""FLOPs of one FluxTransformer2DModel row, counted analytically from its config: every
matmul of the embedders, the blocks (attention projections, the MLP, the per-sample adaLN
modulation) and the output projection; elementwise ops, norms and RoPE are not counted."""

from __future__ import annotations

from torch import nn

from fastvideo_grpo.models.flop_count import attention, linear, mlp_embedder


def flux_flops(config: dict, latent_shape: tuple[int, ...], text_tokens: int) -> int:
    """One row of FluxTransformer2DModel on a [C, h, w] latent, packed into 2x2 patch tokens."""
    d = config["num_attention_heads"] * config["attention_head_dim"]
    _, height, width = latent_shape
    n, text = (height // 2) * (width // 2), text_tokens
    s = n + text
    conditioning = (1 + config["guidance_embeds"]) * mlp_embedder(256, d) + \
        mlp_embedder(config["pooled_projection_dim"], d)
    embed = linear(n, config["in_channels"], d) + linear(text, config["joint_attention_dim"], d)
    dual = 2 * linear(1, d, 6 * d) + 4 * linear(s, d, d) + 2 * linear(s, d, 4 * d) + attention(s, s, d)
    single = linear(1, d, 3 * d) + 3 * linear(s, d, d) + linear(s, d, 4 * d) + linear(s, 5 * d, d) + \
        attention(s, s, d)
    p = config["patch_size"]
    out = linear(1, d, 2 * d) + linear(n, d, p * p * (config["out_channels"] or config["in_channels"]))
    return conditioning + embed + config["num_layers"] * dual + config["num_single_layers"] * single + out


def forward_flops(network: nn.Module, latent_shape: tuple[int, ...], text_tokens: int) -> int:
    return flux_flops(dict(network.config), latent_shape, text_tokens)
