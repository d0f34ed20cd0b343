"""Offline Stable Diffusion text embeddings, exactly as diffusers' StableDiffusionPipeline
encodes: the CLIP last hidden state over 77 tokens. SD has no pooled conditioning: the
pooled tensor is stored empty ([n, 0]).
Its command line: data_preprocess/preprocess_sd_embeddings.py.
"""

from __future__ import annotations

import argparse

import torch
from diffusers import StableDiffusionPipeline

from fastvideo_grpo.data.preprocess import load_text_pipeline, text_shard_tensors

# --max-tokens' default: tokens per prompt, as the family's pipeline encodes them.
MAX_TOKENS = 77


def encoder(args: argparse.Namespace, device: torch.device):
    pipe = load_text_pipeline(StableDiffusionPipeline, args.model_path, device, ("text_encoder", "tokenizer"),
                              unet=None, vae=None, safety_checker=None, feature_extractor=None,
                              requires_safety_checker=False)
    max_tokens = pipe.tokenizer.model_max_length
    if args.max_tokens != max_tokens:
        raise ValueError(f"--max-tokens {args.max_tokens}: Stable Diffusion's CLIP encodes {max_tokens} tokens")

    def encode(prompts: list[str]):
        with torch.no_grad():
            embeds, _ = pipe.encode_prompt(prompts, device, 1, do_classifier_free_guidance=False)
        tokens = pipe.tokenizer(prompts, padding="max_length", max_length=max_tokens, truncation=True,
                                return_tensors="pt").attention_mask
        truncated = sum(len(ids) > max_tokens for ids in pipe.tokenizer(prompts).input_ids)
        return text_shard_tensors(embeds, tokens, torch.zeros(len(prompts), 0)), truncated

    return encode
