"""Offline HunyuanVideo-1.5 text embeddings, exactly as diffusers' HunyuanVideo15Pipeline
encodes (encode_prompt): Qwen2.5-VL's hidden state two layers below the last over the chat
template with the pipeline's system prompt, the template's 108 tokens cropped, up to
--max-tokens (the pipeline's tokenizer_max_length, 1000) with the mask; and ByT5's
embeddings of the prompt's quoted glyph text over 256 tokens with their mask, packed into
the pooled slot (policy.pack_glyphs).
Its command line: data_preprocess/preprocess_hunyuan_video_15_embeddings.py.
"""

from __future__ import annotations

import argparse

from pathlib import Path

import torch
from diffusers import AutoencoderKLHunyuanVideo15, HunyuanVideo15Pipeline
from diffusers.pipelines.hunyuan_video1_5.pipeline_hunyuan_video1_5 import format_text_input

from fastvideo_grpo.data.preprocess import text_shard_tensors
from fastvideo_grpo.models.hunyuan_video_15.policy import pack_glyphs
from fastvideo_grpo.models.hunyuan_video_15.published import TEXT_TOKENS

# --max-tokens' default: Qwen tokens per prompt, as the pipeline encodes them.
MAX_TOKENS = TEXT_TOKENS

TEXT_COMPONENTS = ("text_encoder", "tokenizer", "text_encoder_2", "tokenizer_2")


def text_pipeline(model_path: Path, device: torch.device) -> HunyuanVideo15Pipeline:
    """The pipeline with only its text encoders and tokenizers loaded. Its constructor reads
    the VAE's config (it cannot take vae=None): the VAE is built on the meta device from
    vae/config.json, no weights read, and dropped once the pipeline stands."""
    for sub in (*TEXT_COMPONENTS, "vae"):
        if not (model_path / sub).is_dir():
            raise FileNotFoundError(f"--model-path {model_path}: no {sub}/; expected a diffusers folder for "
                                    "HunyuanVideo15Pipeline")
    with torch.device("meta"):
        vae = AutoencoderKLHunyuanVideo15.from_config(AutoencoderKLHunyuanVideo15.load_config(model_path / "vae"))
    dtype = torch.float32 if device.type == "cpu" else torch.bfloat16
    pipe = HunyuanVideo15Pipeline.from_pretrained(model_path, dtype=dtype, transformer=None, vae=vae)
    pipe.register_modules(vae=None)
    return pipe.to(device)


def encoder(args: argparse.Namespace, device: torch.device):
    pipe = text_pipeline(args.model_path, device)
    pipe.tokenizer_max_length = args.max_tokens

    def encode(prompts: list[str]):
        with torch.no_grad():
            embeds, mask, glyphs, glyph_mask = pipe.encode_prompt(prompts, device=device, batch_size=len(prompts))
        template = pipe.tokenizer.apply_chat_template(format_text_input(prompts, pipe.system_message),
                                                      add_generation_prompt=True, tokenize=True, return_dict=True)
        limit = args.max_tokens + pipe.prompt_template_encode_start_idx
        truncated = sum(len(ids) > limit for ids in template["input_ids"])
        # encode_prompt returns its masks in the embeddings' dtype; 0 and 1 are exact in any.
        return text_shard_tensors(embeds, mask.long(), pack_glyphs(glyphs, glyph_mask)), truncated

    return encode
