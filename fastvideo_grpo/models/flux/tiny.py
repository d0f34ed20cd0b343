"""Tiny FLUX.1: the transformer and VAE of `model.size: tiny`, and a complete
diffusers-format folder with tiny random weights.

The folder is laid out like FLUX.1-dev (transformer/, vae/, text_encoder/ + tokenizer/
(CLIP-L), text_encoder_2/ + tokenizer_2/ (T5), scheduler/, model_index.json), so that
preprocessing, training, export and `FluxPipeline.from_pretrained` run end to end on CPU.
"""

from __future__ import annotations

from pathlib import Path

import torch
from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel

from fastvideo_grpo.config import ModelConfig
from fastvideo_grpo.models.tiny.autoencoder_kl import tiny_autoencoder_kl
from fastvideo_grpo.models.tiny.text_encoders import tiny_clip_text_encoder, tiny_t5_text_encoder

# FLUX.1's VAE: 16 latent channels, and the affine map its latents are trained under.
LATENT_CHANNELS = 16
SCALING_FACTOR = 0.3611
SHIFT_FACTOR = 0.1159
TEXT_DIM = 32
POOLED_DIM = 32


def rope_axes(head_dim: int) -> tuple[int, int, int]:
    """Split a head's rotation pairs over (index, row, col) as FLUX's (16, 56, 56) does for 128."""
    pairs = head_dim // 2
    pairs_index = max(1, pairs // 8)
    pairs_row = (pairs - pairs_index) // 2
    return 2 * pairs_index, 2 * pairs_row, 2 * (pairs - pairs_index - pairs_row)


def tiny_transformer(cfg: ModelConfig, text_dim: int, pooled_dim: int) -> FluxTransformer2DModel:
    return FluxTransformer2DModel(
        patch_size=1,
        in_channels=4 * LATENT_CHANNELS,
        num_layers=cfg.tiny_layers,
        num_single_layers=cfg.tiny_single_layers,
        attention_head_dim=cfg.tiny_head_dim,
        num_attention_heads=cfg.tiny_heads,
        joint_attention_dim=text_dim,
        pooled_projection_dim=pooled_dim,
        guidance_embeds=True,
        axes_dims_rope=rope_axes(cfg.tiny_head_dim),
    )


def tiny_vae(cfg: ModelConfig) -> AutoencoderKL:
    return tiny_autoencoder_kl(cfg, LATENT_CHANNELS, scaling_factor=SCALING_FACTOR, shift_factor=SHIFT_FACTOR,
                               use_quant_conv=False, use_post_quant_conv=False)


def tiny_networks(cfg: ModelConfig, text_dim: int, pooled_dim: int) -> tuple[FluxTransformer2DModel, AutoencoderKL]:
    """The transformer, then the VAE, from the seed model.init_seed."""
    torch.manual_seed(cfg.init_seed)
    return tiny_transformer(cfg, text_dim, pooled_dim), tiny_vae(cfg)


def tiny_model_config(seed: int = 0) -> ModelConfig:
    """The tiny architecture the folder holds; `build_policy` on it gives the same weights."""
    return ModelConfig(family="flux", size="tiny", tiny_heads=4, tiny_head_dim=16, tiny_text_dim=TEXT_DIM,
                       tiny_pooled_dim=POOLED_DIM, guidance_scale=3.5, init_seed=seed)


def write_folder(path: str | Path, seed: int = 0) -> Path:
    path = Path(path)
    # The transformer and VAE first, seeded as build_policy seeds the in-process tiny model;
    # the text encoders continue from that random state.
    transformer, vae = tiny_networks(tiny_model_config(seed), TEXT_DIM, POOLED_DIM)
    clip, clip_tok = tiny_clip_text_encoder(POOLED_DIM)
    t5, t5_tok = tiny_t5_text_encoder(TEXT_DIM)
    # FLUX.1-dev's scheduler config: resolution-dependent shift.
    scheduler = FlowMatchEulerDiscreteScheduler(shift=3.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15,
                                                base_image_seq_len=256, max_image_seq_len=4096)
    FluxPipeline(scheduler=scheduler, vae=vae, text_encoder=clip, tokenizer=clip_tok, text_encoder_2=t5,
                 tokenizer_2=t5_tok, transformer=transformer).save_pretrained(path)
    return path
