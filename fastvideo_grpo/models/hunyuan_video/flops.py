"""FLOPs of one HunyuanVideoTransformer3DModel row, counted analytically from its config:
every matmul of the embedders, the token refiner, the blocks (attention projections, the
MLP, the per-sample adaLN modulation) and the output projection; elementwise ops, norms
and RoPE are not counted."""

from __future__ import annotations

from torch import nn

from fastvideo_grpo.models.flop_count import attention, linear, mlp_embedder


def token_refiner_flops(text: int, text_dim: int, d: int, layers: int) -> int:
    """The token refiner (HunyuanVideo and HunyuanVideo-1.5): its own timestep and mean-text
    embeddings, proj_in, then `layers` self-attention blocks over the text alone (MLP ratio 4)."""
    return (mlp_embedder(256, d) + mlp_embedder(text_dim, d) + linear(text, text_dim, d)
            + layers * (4 * linear(text, d, d) + attention(text, text, d) + 2 * linear(text, d, 4 * d)
                        + linear(1, d, 2 * d)))


def hunyuan_video_flops(config: dict, latent_shape: tuple[int, ...], text_tokens: int) -> int:
    """One row of HunyuanVideoTransformer3DModel (T2V and I2V) on a [C, T, H, W] latent."""
    d = config["num_attention_heads"] * config["attention_head_dim"]
    mlp = int(d * config["mlp_ratio"])
    p, pt = config["patch_size"], config["patch_size_t"]
    _, frames, height, width = latent_shape
    n, text = (frames // pt) * (height // p) * (width // p), text_tokens
    s = n + text
    token_replace = config.get("image_condition_type") == "token_replace"
    # Timestep, pooled-text (and guidance; token_replace's clean timestep) embeddings.
    conditioning = ((1 + config["guidance_embeds"] + token_replace) * mlp_embedder(256, d)
                    + mlp_embedder(config["pooled_projection_dim"], d))
    patches = linear(n, config["in_channels"] * pt * p * p, d)
    refiner = token_refiner_flops(text, config["text_embed_dim"], d, config["num_refiner_layers"])
    # token_replace modulates the image's first frame separately (twice the image adaLN).
    modulation = 2 if token_replace else 1
    # Dual-stream: q, k, v, out and the MLP per stream (image and text), joint attention.
    dual = ((modulation + 1) * linear(1, d, 6 * d) + 4 * linear(s, d, d) + 2 * linear(s, d, mlp)
            + attention(s, s, d))
    # Single-stream: q, k, v and the MLP's input side from the same tokens, one output projection.
    single = (modulation * linear(1, d, 3 * d) + 3 * linear(s, d, d) + linear(s, d, mlp)
              + linear(s, d + mlp, d) + attention(s, s, d))
    out = linear(1, d, 2 * d) + linear(n, d, pt * p * p * config["out_channels"])
    return (conditioning + patches + refiner + config["num_layers"] * dual + config["num_single_layers"] * single
            + out)


def forward_flops(network: nn.Module, latent_shape: tuple[int, ...], text_tokens: int) -> int:
    return hunyuan_video_flops(dict(network.config), latent_shape, text_tokens)
