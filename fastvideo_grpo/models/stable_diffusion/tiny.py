"""Tiny Stable Diffusion: the UNet and VAE of `model.size: tiny`, and a complete
diffusers-format folder with tiny random weights.

The folder is laid out like the released SD 1.4 folder (unet/, vae/, text_encoder/ +
tokenizer/ (CLIP), scheduler/ (DDIM with SD's config), model_index.json; no safety
checker), so that preprocessing, training, export and
`StableDiffusionPipeline.from_pretrained` run end to end on CPU.
"""

from __future__ import annotations

from pathlib import Path

import torch
from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel

from fastvideo_grpo.config import ModelConfig
from fastvideo_grpo.models.tiny.autoencoder_kl import tiny_autoencoder_kl
from fastvideo_grpo.models.tiny.text_encoders import tiny_clip_text_encoder

TEXT_DIM = 32


def tiny_unet(cfg: ModelConfig, text_dim: int) -> UNet2DConditionModel:
    channels = cfg.tiny_heads * cfg.tiny_head_dim
    return UNet2DConditionModel(
        in_channels=4,
        out_channels=4,
        block_out_channels=(channels, channels),
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        layers_per_block=1,
        norm_num_groups=cfg.tiny_heads,
        cross_attention_dim=text_dim,
        attention_head_dim=cfg.tiny_head_dim,
    )


def tiny_networks(cfg: ModelConfig, text_dim: int) -> tuple[UNet2DConditionModel, AutoencoderKL]:
    """The UNet, then the VAE (4 latent channels, as SD's), from the seed model.init_seed."""
    torch.manual_seed(cfg.init_seed)
    return tiny_unet(cfg, text_dim), tiny_autoencoder_kl(cfg, 4)


def tiny_model_config(seed: int = 0) -> ModelConfig:
    """The tiny architecture the folder holds (that of assets/configs/tiny_sd_t2i.yaml);
    `build_policy` on it gives the same weights."""
    return ModelConfig(family="stable_diffusion", size="tiny", tiny_heads=4, tiny_head_dim=16,
                       tiny_text_dim=TEXT_DIM, init_seed=seed)


def sd_scheduler() -> DDIMScheduler:
    """The scheduler of the released SD 1.x folders (their scheduler/scheduler_config.json);
    tests/test_sd.py checks the adapter's schedule and DDIM step against it."""
    return DDIMScheduler(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012,
                         beta_schedule="scaled_linear", clip_sample=False, set_alpha_to_one=False,
                         steps_offset=1, timestep_spacing="leading")


def write_folder(path: str | Path, seed: int = 0) -> Path:
    path = Path(path)
    # The UNet and VAE first, seeded as build_policy seeds the in-process tiny model; the
    # text encoder continues from that random state.
    unet, vae = tiny_networks(tiny_model_config(seed), TEXT_DIM)
    text_encoder, tokenizer = tiny_clip_text_encoder(TEXT_DIM)
    StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                            scheduler=sd_scheduler(), safety_checker=None, feature_extractor=None,
                            requires_safety_checker=False).save_pretrained(path)
    return path
