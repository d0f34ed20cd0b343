"""Tiny Wan2.1 T2V and Wan2.2 A14B: the transformer (two experts with
model.tiny_boundary_ratio > 0) and VAE of `model.size: tiny`, and complete diffusers-format
folders with tiny random weights (`wan`, and `wan_moe` with transformer_2 and boundary_ratio).

The folder is laid out like Wan2.1-T2V-1.3B-Diffusers (transformer/, vae/, text_encoder/ +
tokenizer/ (UMT5), scheduler/ (UniPC over flow sigmas, its flow_shift), model_index.json),
so that preprocessing, training, export and `WanPipeline.from_pretrained` run end to end on
CPU.
"""

from __future__ import annotations

from pathlib import Path

import torch
from diffusers import AutoencoderKLWan, UniPCMultistepScheduler, WanPipeline, WanTransformer3DModel
from transformers import PreTrainedTokenizerFast, UMT5Config, UMT5EncoderModel

from fastvideo_grpo.config import ModelConfig
from fastvideo_grpo.models.tiny.text_encoders import word_tokenizer
from fastvideo_grpo.models.wan.experts import WanExperts

TEXT_DIM = 32
# Wan2.1-T2V-1.3B's scheduler: flow_shift 3.0 (480p).
FLOW_SHIFT = 3.0
# Wan2.2 T2V-A14B's boundary_ratio (its model_index.json): the high-noise expert takes the
# timesteps from 875; the tiny configs' 8 steps at shift 3 give it 3 of them.
BOUNDARY_RATIO = 0.875


def tiny_transformer(cfg: ModelConfig, text_dim: int, channels: int = 16) -> WanTransformer3DModel:
    """`channels`: the VAE's latent channels (Wan2.1's 16; Wan2.2-TI2V's 48)."""
    dim = cfg.tiny_heads * cfg.tiny_head_dim
    return WanTransformer3DModel(
        patch_size=(1, 2, 2),
        num_attention_heads=cfg.tiny_heads,
        attention_head_dim=cfg.tiny_head_dim,
        in_channels=channels,
        out_channels=channels,
        text_dim=text_dim,
        freq_dim=64,
        ffn_dim=2 * dim,
        num_layers=cfg.tiny_layers,
        # Enough positions for any tiny video: RoPE tables are built once, this long.
        rope_max_seq_len=256,
    )


def tiny_vae(cfg: ModelConfig) -> AutoencoderKLWan:
    """Wan2.1's VAE layout (4x temporal, 8x spatial, 16 channels, its latents_mean/std) at
    model.tiny_vae_channels // 4 base channels."""
    return AutoencoderKLWan(base_dim=max(1, cfg.tiny_vae_channels // 4), z_dim=16, num_res_blocks=1)


def tiny_networks(cfg: ModelConfig, text_dim: int) -> tuple[WanTransformer3DModel | WanExperts, AutoencoderKLWan]:
    """The transformer (with model.tiny_boundary_ratio, the high-noise then the low-noise
    expert), then the VAE, from the seed model.init_seed."""
    torch.manual_seed(cfg.init_seed)
    transformer = tiny_transformer(cfg, text_dim)
    if cfg.tiny_boundary_ratio > 0:
        transformer = WanExperts.from_experts(transformer, tiny_transformer(cfg, text_dim), cfg.tiny_boundary_ratio)
    return transformer, tiny_vae(cfg)


def tiny_model_config(seed: int = 0, boundary_ratio: float = 0.0) -> ModelConfig:
    """The tiny architecture the folder holds (that of assets/configs/tiny_wan_t2v.yaml, with
    `boundary_ratio` tiny_wan_moe_t2v.yaml's); `build_policy` on it gives the same weights."""
    return ModelConfig(family="wan", size="tiny", tiny_heads=4, tiny_head_dim=16, tiny_text_dim=TEXT_DIM,
                       cfg_scale=5.0, init_seed=seed, tiny_boundary_ratio=boundary_ratio)


def tiny_umt5_text_encoder(hidden_size: int) -> tuple[UMT5EncoderModel, PreTrainedTokenizerFast]:
    """A 2-layer random UMT5 encoder (Wan's UMT5-XXL role); its tokenizer, like UMT5's, has
    <pad> 0, </s> 1, <unk> 2 and adds only </s>."""
    tokenizer = word_tokenizer(["<pad>", "</s>", "<unk>"], None, "</s>", 512)
    model = UMT5EncoderModel(UMT5Config(vocab_size=len(tokenizer), d_model=hidden_size, d_ff=64, d_kv=8,
                                        num_layers=2, num_heads=4, pad_token_id=tokenizer.pad_token_id,
                                        eos_token_id=tokenizer.eos_token_id))
    return model, tokenizer


def scheduler() -> UniPCMultistepScheduler:
    """The released folders' scheduler (their scheduler/scheduler_config.json)."""
    return UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=FLOW_SHIFT,
                                   num_train_timesteps=1000)


def write_folder(path: str | Path, seed: int = 0, boundary_ratio: float = 0.0) -> Path:
    path = Path(path)
    # The transformer(s) and VAE first, seeded as build_policy seeds the in-process tiny model;
    # the text encoder continues from that random state.
    network, vae = tiny_networks(tiny_model_config(seed, boundary_ratio), TEXT_DIM)
    text_encoder, tokenizer = tiny_umt5_text_encoder(TEXT_DIM)
    experts = (dict(transformer=network.transformer, transformer_2=network.transformer_2,
                    boundary_ratio=boundary_ratio) if boundary_ratio else dict(transformer=network))
    WanPipeline(tokenizer=tokenizer, text_encoder=text_encoder, vae=vae, scheduler=scheduler(),
                **experts).save_pretrained(path)
    return path


def write_moe_folder(path: str | Path, seed: int = 0) -> Path:
    """Wan2.2 A14B's layout: transformer (high noise), transformer_2 (low noise), boundary_ratio."""
    return write_folder(path, seed, BOUNDARY_RATIO)
