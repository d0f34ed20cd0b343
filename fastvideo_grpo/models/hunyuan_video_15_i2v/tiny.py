"""Tiny HunyuanVideo-1.5 image-to-video: the text-to-video family's tiny transformer, VAE,
Qwen2.5-VL and ByT5 (models/hunyuan_video_15/tiny.py), and a tiny SigLIP vision model with
its image processor, in a complete HunyuanVideo15ImageToVideoPipeline folder laid out like
hunyuanvideo-community/HunyuanVideo-1.5-480p_i2v (its components and image_encoder/ +
feature_extractor/).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from diffusers import FlowMatchEulerDiscreteScheduler, HunyuanVideo15ImageToVideoPipeline
from diffusers.guiders import ClassifierFreeGuidance
from transformers import SiglipImageProcessor, SiglipVisionConfig, SiglipVisionModel

from fastvideo_grpo.config import ModelConfig
from fastvideo_grpo.models.hunyuan_video_15 import tiny as t2v
from fastvideo_grpo.models.hunyuan_video_15.tiny import (FLOW_SHIFT, GLYPH_DIM, GUIDANCE_SCALE, IMAGE_DIM, TEXT_DIM,
                                                         tiny_byt5_text_encoder, tiny_networks,
                                                         tiny_qwen_text_encoder)

# The tiny SigLIP's input side and patch: 4 x 4 = 16 image tokens (the released 384 / 14: 729).
IMAGE_SIZE = 32
IMAGE_PATCH = 8
# The pipeline picks its height and width from the image's aspect among the buckets of the
# transformer's target_size: 32 keeps the tiny model's square images at 32 x 32.
TARGET_SIZE = 32


def tiny_model_config(seed: int = 0) -> ModelConfig:
    """The tiny architecture the folder holds (that of tiny_hunyuan_video_15_i2v.yaml)."""
    return dataclasses.replace(t2v.tiny_model_config(seed), family="hunyuan_video_15_i2v")


def as_image_to_video(transformer) -> None:
    """The image-to-video task and the tiny target size in the network's config (the model
    reads neither; the pipeline reads target_size)."""
    transformer.register_to_config(task_type="i2v", target_size=TARGET_SIZE)


def tiny_siglip(hidden_size: int) -> tuple[SiglipVisionModel, SiglipImageProcessor]:
    """A 2-layer random SigLIP vision model (the pipeline reads its last hidden state) and
    SigLIP's image processor at its input size."""
    model = SiglipVisionModel(SiglipVisionConfig(hidden_size=hidden_size, intermediate_size=32, num_hidden_layers=2,
                                                 num_attention_heads=2, image_size=IMAGE_SIZE, patch_size=IMAGE_PATCH))
    return model, SiglipImageProcessor(size={"height": IMAGE_SIZE, "width": IMAGE_SIZE})


def write_folder(path: str | Path, seed: int = 0) -> Path:
    path = Path(path)
    # Seeded as build_policy seeds the in-process tiny model; the encoders continue from there.
    transformer, vae = tiny_networks(tiny_model_config(seed), TEXT_DIM)
    as_image_to_video(transformer)
    qwen, qwen_tokenizer = tiny_qwen_text_encoder(TEXT_DIM)
    byt5, byt5_tokenizer = tiny_byt5_text_encoder(GLYPH_DIM)
    siglip, processor = tiny_siglip(IMAGE_DIM)
    HunyuanVideo15ImageToVideoPipeline(
        text_encoder=qwen, tokenizer=qwen_tokenizer, transformer=transformer, vae=vae,
        scheduler=FlowMatchEulerDiscreteScheduler(shift=FLOW_SHIFT), text_encoder_2=byt5, tokenizer_2=byt5_tokenizer,
        guider=ClassifierFreeGuidance(guidance_scale=GUIDANCE_SCALE), image_encoder=siglip,
        feature_extractor=processor).save_pretrained(path)
    return path
