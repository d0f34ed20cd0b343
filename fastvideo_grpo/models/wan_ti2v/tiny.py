"""Tiny Wan2.2 TI2V: the transformer and VAE of `model.size: tiny`, and a complete
diffusers-format folder with tiny random weights.

The folder is laid out like Wan2.2-TI2V-5B-Diffusers: a WanPipeline with expand_timesteps
(per-token timesteps), transformer/ over 48 latent channels, vae/ in the Wan2.2 layout
(4x16x16 compression), text_encoder/ + tokenizer/ (UMT5, as Wan2.1's tiny folder), scheduler/
(UniPC over flow sigmas, flow_shift 5). The same folder loads in WanImageToVideoPipeline,
which samples image-to-video from it.
"""

from __future__ import annotations

from pathlib import Path

import torch
from diffusers import AutoencoderKLWan, UniPCMultistepScheduler, WanPipeline, WanTransformer3DModel

from fastvideo_grpo.config import ModelConfig
from fastvideo_grpo.models.wan.tiny import tiny_transformer, tiny_umt5_text_encoder
from fastvideo_grpo.models.wan_ti2v.published import FLOW_SHIFT, WAN22_VAE

TEXT_DIM = 32


def tiny_vae(cfg: ModelConfig) -> AutoencoderKLWan:
    """The Wan2.2 VAE's layout (patch 2, 4x16x16, 48 channels, residual sampling, its
    latents_mean/std) at model.tiny_vae_channels // 4 base channels, one residual block a level."""
    base = max(1, cfg.tiny_vae_channels // 4)
    return AutoencoderKLWan(**{**WAN22_VAE, "base_dim": base, "decoder_base_dim": base, "num_res_blocks": 1})


def tiny_networks(cfg: ModelConfig, text_dim: int) -> tuple[WanTransformer3DModel, AutoencoderKLWan]:
    """The transformer, then the VAE, from the seed model.init_seed."""
    torch.manual_seed(cfg.init_seed)
    return tiny_transformer(cfg, text_dim, channels=WAN22_VAE["z_dim"]), tiny_vae(cfg)


def tiny_model_config(seed: int = 0) -> ModelConfig:
    """The tiny architecture the folder holds (that of assets/configs/tiny_wan_ti2v.yaml);
    `build_policy` on it gives the same weights."""
    return ModelConfig(family="wan_ti2v", size="tiny", tiny_heads=4, tiny_head_dim=16, tiny_text_dim=TEXT_DIM,
                       cfg_scale=5.0, init_seed=seed)


def scheduler() -> UniPCMultistepScheduler:
    """The released folder's scheduler (its scheduler/scheduler_config.json)."""
    return UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=FLOW_SHIFT,
                                   num_train_timesteps=1000)


def write_folder(path: str | Path, seed: int = 0, pipeline: type = WanPipeline) -> Path:
    """`pipeline`: the class model_index.json names (WanPipeline, as the released folder;
    WanImageToVideoPipeline for image-to-video), whose `save_pretrained` writes the folder."""
    path = Path(path)
    # The transformer and VAE first, seeded as build_policy seeds the in-process tiny model;
    # the text encoder continues from that random state.
    transformer, vae = tiny_networks(tiny_model_config(seed), TEXT_DIM)
    text_encoder, tokenizer = tiny_umt5_text_encoder(TEXT_DIM)
    pipeline(tokenizer=tokenizer, text_encoder=text_encoder, vae=vae, scheduler=scheduler(),
                transformer=transformer, expand_timesteps=True).save_pretrained(path)
    return path
