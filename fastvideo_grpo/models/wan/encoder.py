"""Offline Wan text embeddings, exactly as diffusers' WanPipeline encodes: the prompt cleaned
(ftfy, HTML entities, whitespace), UMT5's last hidden state over up to 512 tokens, zeros
after each prompt's real tokens. Wan has no pooled conditioning: the pooled tensor is stored
empty ([n, 0]).
Its command line: data_preprocess/preprocess_wan_embeddings.py.
"""

from __future__ import annotations

import argparse

import torch
from diffusers import WanPipeline
from diffusers.pipelines.wan.pipeline_wan import prompt_clean

from fastvideo_grpo.data.preprocess import load_text_pipeline, text_shard_tensors

# --max-tokens' default: tokens per prompt, WanPipeline's max_sequence_length.
MAX_TOKENS = 512


def encoder(args: argparse.Namespace, device: torch.device):
    # transformer_2: Wan2.2 A14B's second expert, which the text does not need either.
    pipe = load_text_pipeline(WanPipeline, args.model_path, device, ("text_encoder", "tokenizer"), transformer=None,
                              transformer_2=None, vae=None)

    def encode(prompts: list[str]):
        with torch.no_grad():
            embeds, _ = pipe.encode_prompt(prompts, do_classifier_free_guidance=False,
                                           max_sequence_length=args.max_tokens, device=device)
        cleaned = [prompt_clean(p) for p in prompts]
        mask = pipe.tokenizer(cleaned, padding="max_length", max_length=args.max_tokens, truncation=True,
                              return_tensors="pt").attention_mask
        truncated = sum(len(ids) > args.max_tokens for ids in pipe.tokenizer(cleaned).input_ids)
        return text_shard_tensors(embeds, mask, torch.zeros(len(prompts), 0)), truncated

    return encode
