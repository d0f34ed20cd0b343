"""A complete diffusers-format Stable Diffusion folder with tiny random weights.

Laid out like the released SD 1.4 folder (unet/, vae/, text_encoder/ + tokenizer/ (CLIP),
scheduler/ (DDIM with SD's config), model_index.json; no safety checker), so that
preprocessing, training, export and `StableDiffusionPipeline.from_pretrained` run end to
end on CPU. The tokenizer is word-level over a small vocabulary.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from diffusers import DDIMScheduler

from fastvideo_grpo.config import ModelConfig
from fastvideo_grpo.models.stable_diffusion import (BETA_END, BETA_START, NUM_TRAIN_TIMESTEPS, STEPS_OFFSET,
                                                    tiny_unet, tiny_vae)
from fastvideo_grpo.models.tiny_hunyuan import tiny_clip_text_encoder

TEXT_DIM = 32


def sd_scheduler() -> DDIMScheduler:
    return DDIMScheduler(num_train_timesteps=NUM_TRAIN_TIMESTEPS, beta_start=BETA_START, beta_end=BETA_END,
                         beta_schedule="scaled_linear", clip_sample=False, set_alpha_to_one=False,
                         steps_offset=STEPS_OFFSET, timestep_spacing="leading")


def write_tiny_sd_folder(path: str | Path, seed: int = 0) -> Path:
    path = Path(path)
    # The UNet and VAE first, seeded as build_policy seeds the in-process tiny model of
    # assets/configs/tiny_sd_t2i.yaml.
    model_cfg = ModelConfig(family="stable_diffusion", size="tiny", tiny_heads=4, tiny_head_dim=16, init_seed=seed)
    torch.manual_seed(seed)
    tiny_unet(model_cfg, TEXT_DIM).save_pretrained(path / "unet")
    tiny_vae(model_cfg).save_pretrained(path / "vae")
    text_encoder, tokenizer = tiny_clip_text_encoder(TEXT_DIM)
    text_encoder.save_pretrained(path / "text_encoder")
    tokenizer.save_pretrained(path / "tokenizer")
    sd_scheduler().save_pretrained(path / "scheduler")
    (path / "model_index.json").write_text(json.dumps({
        "_class_name": "StableDiffusionPipeline",
        "_diffusers_version": "0.42.1",
        "scheduler": ["diffusers", "DDIMScheduler"],
        "text_encoder": ["transformers", "CLIPTextModel"],
        "tokenizer": ["transformers", "PreTrainedTokenizerFast"],
        "unet": ["diffusers", "UNet2DConditionModel"],
        "vae": ["diffusers", "AutoencoderKL"],
        "safety_checker": [None, None],
        "feature_extractor": [None, None],
        "requires_safety_checker": False,
    }, indent=2))
    return path


if __name__ == "__main__":
    import sys

    print(write_tiny_sd_folder(sys.argv[1]))
