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

import torch
from diffusers import HunyuanVideo15Pipeline
from diffusers.pipelines.hunyuan_video1_5.pipeline_hunyuan_video1_5 import format_text_input

from fastvideo_grpo.data.preprocess import load_text_pipeline, text_shard_tensors
from fastvideo_grpo.models.hunyuan_video_15.policy import pack_glyphs
from fastvideo_grpo.models.hunyuan_video_15.published import TEXT_TOKENS

# --max-tokens' default: Qwen tokens per prompt, as the pipeline encodes them.
MAX_TOKENS = TEXT_TOKENS

TEXT_COMPONENTS = ("text_encoder", "tokenizer", "text_encoder_2", "tokenizer_2")


def encoder(args: argparse.Namespace, device: torch.device):
    pipe = load_text_pipeline(HunyuanVideo15Pipeline, args.model_path, device, TEXT_COMPONENTS, transformer=None,
                              vae=None)
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
