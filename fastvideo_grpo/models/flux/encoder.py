"""Offline FLUX text embeddings, exactly as diffusers' FluxPipeline encodes: the T5 sequence
(up to 512 tokens), the CLIP-L pooled output, and the text ids (zeros, one row a token).
Its command line: data_preprocess/preprocess_flux_embeddings.py.
"""

from __future__ import annotations

import argparse

import torch
from diffusers import FluxPipeline

from fastvideo_grpo.data.preprocess import load_text_pipeline, text_shard_tensors

# --max-tokens' default: tokens per prompt, as the family's pipeline encodes them.
MAX_TOKENS = 512


TEXT_COMPONENTS = ("text_encoder", "tokenizer", "text_encoder_2", "tokenizer_2")


def encoder(args: argparse.Namespace, device: torch.device):
    pipe = load_text_pipeline(FluxPipeline, args.model_path, device, TEXT_COMPONENTS, transformer=None, vae=None)

    def encode(prompts: list[str]):
        with torch.no_grad():
            embeds, pooled, _text_ids = pipe.encode_prompt(prompts, prompt_2=None, device=device,
                                                           max_sequence_length=args.max_tokens)
        # T5 attends to its padding in FLUX; the mask records the real tokens.
        tokens = pipe.tokenizer_2(prompts, padding="max_length", max_length=args.max_tokens, truncation=True,
                                  return_tensors="pt").attention_mask
        truncated = sum(len(ids) > args.max_tokens for ids in pipe.tokenizer_2(prompts).input_ids)
        return text_shard_tensors(embeds, tokens, pooled), truncated

    return encode
