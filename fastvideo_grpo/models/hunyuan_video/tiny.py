"""Tiny HunyuanVideo: the transformer and VAE of `model.size: tiny`, and a complete
diffusers-format folder with tiny random weights.

The folder is laid out like the real one (transformer/, vae/, text_encoder/ + tokenizer/
(Llama), text_encoder_2/ + tokenizer_2/ (CLIP-L), scheduler/, model_index.json), so that
preprocessing, training, export and `HunyuanVideoPipeline.from_pretrained` run end to end
on CPU. Its Llama tokenizer splits diffusers' default prompt template as Llama-3 does, so
the pipeline needs no `prompt_template` argument; `prompt_template.json` holds that default
for the tools that read a folder's template (preprocessing).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from diffusers import (AutoencoderKLHunyuanVideo, FlowMatchEulerDiscreteScheduler, HunyuanVideoPipeline,
                       HunyuanVideoTransformer3DModel)
from diffusers.pipelines.hunyuan_video.pipeline_hunyuan_video import DEFAULT_PROMPT_TEMPLATE
from transformers import PreTrainedTokenizerFast

from fastvideo_grpo.config import ModelConfig
from fastvideo_grpo.models.tiny.text_encoders import tiny_clip_text_encoder, tiny_llama_text_encoder

PROMPT_TEMPLATE_FILE = "prompt_template.json"
TEXT_DIM = 32
POOLED_DIM = 32


def tiny_transformer(cfg: ModelConfig, text_dim: int, pooled_dim: int, **config) -> HunyuanVideoTransformer3DModel:
    """`config` overrides the architecture's defaults (the I2V variants' input channels,
    image_condition_type, guidance_embeds)."""
    head_dim = cfg.tiny_head_dim
    # RoPE splits each head's rotation pairs over (t, h, w).
    pairs = head_dim // 2
    pairs_t = max(1, pairs // 4)
    pairs_h = (pairs - pairs_t) // 2
    return HunyuanVideoTransformer3DModel(
        in_channels=config.pop("in_channels", 16),
        out_channels=16,
        num_attention_heads=cfg.tiny_heads,
        attention_head_dim=head_dim,
        num_layers=cfg.tiny_layers,
        num_single_layers=cfg.tiny_single_layers,
        num_refiner_layers=1,
        mlp_ratio=2.0,
        patch_size=2,
        patch_size_t=1,
        text_embed_dim=text_dim,
        pooled_projection_dim=pooled_dim,
        rope_axes_dim=(2 * pairs_t, 2 * pairs_h, 2 * (pairs - pairs_t - pairs_h)),
        **config,
    )


def tiny_vae(cfg: ModelConfig) -> AutoencoderKLHunyuanVideo:
    channels = cfg.tiny_vae_channels
    return AutoencoderKLHunyuanVideo(
        latent_channels=16,
        block_out_channels=(channels,) * 4,
        layers_per_block=1,
        norm_num_groups=1,
        mid_block_add_attention=False,
    )


def tiny_networks(cfg: ModelConfig, text_dim: int, pooled_dim: int,
                  **config) -> tuple[HunyuanVideoTransformer3DModel, AutoencoderKLHunyuanVideo]:
    """The transformer, then the VAE, from the seed model.init_seed."""
    torch.manual_seed(cfg.init_seed)
    return tiny_transformer(cfg, text_dim, pooled_dim, **config), tiny_vae(cfg)


def tiny_model_config(seed: int = 0) -> ModelConfig:
    """The tiny architecture the folder holds; `build_policy` on it gives the same weights."""
    return ModelConfig(family="hunyuan_video", size="tiny", tiny_heads=4, tiny_head_dim=16, tiny_text_dim=TEXT_DIM,
                       tiny_pooled_dim=POOLED_DIM, init_seed=seed)


def tiny_prompt_template(tokenizer: PreTrainedTokenizerFast) -> dict:
    """diffusers' default template, once `tokenizer` is checked to take crop_start tokens (BOS
    included) before the prompt: a pipeline called without a template crops that many."""
    prefix = DEFAULT_PROMPT_TEMPLATE["template"].split("{}")[0]
    crop_start = len(tokenizer(prefix).input_ids)
    if crop_start != DEFAULT_PROMPT_TEMPLATE["crop_start"]:
        raise ValueError(f"the tiny Llama tokenizer takes {crop_start} tokens before the prompt of diffusers' default "
                         f"HunyuanVideo template, which crops {DEFAULT_PROMPT_TEMPLATE['crop_start']}: the pipeline "
                         "would crop the prompt away and give NaN frames")
    return dict(DEFAULT_PROMPT_TEMPLATE)


def write_folder(path: str | Path, seed: int = 0) -> Path:
    path = Path(path)
    # The transformer and VAE first, seeded as build_policy seeds the in-process tiny model;
    # the text encoders continue from that random state.
    transformer, vae = tiny_networks(tiny_model_config(seed), TEXT_DIM, POOLED_DIM)
    llama, llama_tok = tiny_llama_text_encoder(TEXT_DIM)
    clip, clip_tok = tiny_clip_text_encoder(POOLED_DIM, initializer_factor=5.0)
    # Real encoders' hidden states are O(1) and their pooled outputs tell prompts apart; with
    # the default init the Llama states the pipeline reads are ~0.01 and the random CLIP's
    # pooled outputs of different prompts have cosine ~0.54 (0.37 with initializer_factor 5),
    # and the demo policy learns the prompts' colours far more slowly.
    torch.nn.init.normal_(llama.embed_tokens.weight, std=1.0)
    HunyuanVideoPipeline(text_encoder=llama, tokenizer=llama_tok, transformer=transformer, vae=vae,
                         scheduler=FlowMatchEulerDiscreteScheduler(shift=7.0), text_encoder_2=clip,
                         tokenizer_2=clip_tok).save_pretrained(path)
    (path / PROMPT_TEMPLATE_FILE).write_text(json.dumps(tiny_prompt_template(llama_tok), indent=2))
    return path
