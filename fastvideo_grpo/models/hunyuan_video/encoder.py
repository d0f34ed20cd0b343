"""Offline HunyuanVideo text embeddings, exactly as diffusers' HunyuanVideoPipeline encodes:
its prompt template and crop_start, the Llama hidden state two layers below the last, up
to 256 tokens with the attention mask, and the CLIP-L pooled output.
Its command line: data_preprocess/preprocess_hunyuan_embeddings.py.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from diffusers import HunyuanVideoPipeline
from diffusers.pipelines.hunyuan_video.pipeline_hunyuan_video import DEFAULT_PROMPT_TEMPLATE

from fastvideo_grpo.data.preprocess import load_text_pipeline, text_shard_tensors

TEMPLATE_FILE = "prompt_template.json"

# --max-tokens' default: tokens per prompt, as the family's pipeline encodes them.
MAX_TOKENS = 256


TEXT_COMPONENTS = ("text_encoder", "tokenizer", "text_encoder_2", "tokenizer_2")


def load_template(model_path: Path, template_file: str | None) -> dict:
    """--prompt-template, else MODEL/prompt_template.json, else diffusers' default."""
    path = Path(template_file) if template_file else model_path / TEMPLATE_FILE
    if template_file or path.is_file():
        template = json.loads(path.read_text())
        if "template" not in template or "{}" not in template["template"]:
            raise ValueError(f"{path}: expected {{'template': '...{{}}...', 'crop_start': N}}")
        return template
    return DEFAULT_PROMPT_TEMPLATE


def encoder(args: argparse.Namespace, device: torch.device):
    template = load_template(args.model_path, args.prompt_template)
    pipe = load_text_pipeline(HunyuanVideoPipeline, args.model_path, device, TEXT_COMPONENTS, transformer=None,
                              vae=None)

    def encode(prompts: list[str]):
        with torch.no_grad():
            embeds, pooled, mask = pipe.encode_prompt(prompts, prompt_template=template, device=device,
                                                      max_sequence_length=args.max_tokens)
        full = pipe.tokenizer([template["template"].format(p) for p in prompts]).input_ids
        truncated = sum(len(ids) > args.max_tokens + template["crop_start"] for ids in full)
        return text_shard_tensors(embeds, mask, pooled), truncated

    return encode


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--prompt-template", help="JSON file with 'template' and 'crop_start'")


def fingerprint(args: argparse.Namespace) -> dict:
    """The template decides every embedding: a shard encoded with another one is stale."""
    return {"prompt_template": load_template(args.model_path, args.prompt_template)}
