"""Offline HunyuanVideo text embeddings, exactly as diffusers' HunyuanVideoPipeline encodes:
its prompt template and crop_start, the Llama hidden state two layers below the last, up
to 256 tokens with the attention mask, and the CLIP-L pooled output.

    python data_preprocess/preprocess_hunyuan_embeddings.py --model-path HUNYUAN_FOLDER \\
        --prompts prompts.txt --output data/embeddings [--dtype bf16] [--overwrite]
    torchrun --nproc_per_node 8 data_preprocess/preprocess_hunyuan_embeddings.py ...
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

import torch
from diffusers import HunyuanVideoPipeline
from diffusers.pipelines.hunyuan_video.pipeline_hunyuan_video import DEFAULT_PROMPT_TEMPLATE

from fastvideo_grpo.data.preprocess import DTYPES, preprocess, read_prompt_file, report_duplicates
from fastvideo_grpo.parallel import init_distributed, shutdown

logger = logging.getLogger("preprocess_hunyuan_embeddings")
TEMPLATE_FILE = "prompt_template.json"


def load_template(model_path: Path, template_file: str | None) -> dict:
    """--prompt-template, else MODEL/prompt_template.json, else diffusers' default."""
    path = Path(template_file) if template_file else model_path / TEMPLATE_FILE
    if template_file or path.is_file():
        template = json.loads(path.read_text())
        if "template" not in template or "{}" not in template["template"]:
            raise ValueError(f"{path}: expected {{'template': '...{{}}...', 'crop_start': N}}")
        return template
    return DEFAULT_PROMPT_TEMPLATE


def hunyuan_encoder(model_path: Path, template: dict, max_tokens: int, device: torch.device):
    for sub in ("text_encoder", "tokenizer", "text_encoder_2", "tokenizer_2"):
        if not (model_path / sub).is_dir():
            raise FileNotFoundError(f"--model-path {model_path}: no {sub}/; expected a diffusers HunyuanVideo folder")
    pipe = HunyuanVideoPipeline.from_pretrained(model_path, transformer=None, vae=None, torch_dtype=torch.float32
                                                if device.type == "cpu" else torch.float16).to(device)

    def encode(prompts: list[str]):
        with torch.no_grad():
            embeds, pooled, mask = pipe.encode_prompt(prompts, prompt_template=template, device=device,
                                                      max_sequence_length=max_tokens)
        full = pipe.tokenizer([template["template"].format(p) for p in prompts]).input_ids
        truncated = sum(len(ids) > max_tokens + template["crop_start"] for ids in full)
        return embeds.cpu(), mask.cpu(), pooled.cpu(), mask.sum(dim=1).cpu(), truncated

    return encode


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model-path", required=True, type=Path)
    parser.add_argument("--prompts", required=True, help=".txt (one per line) or .jsonl with a 'prompt' field")
    parser.add_argument("--output", required=True)
    parser.add_argument("--shard-size", type=int, default=1024)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-tokens", type=int, default=256)
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="bf16")
    parser.add_argument("--prompt-template", help="JSON file with 'template' and 'crop_start'")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--overwrite", action="store_true", help="re-encode shards that already exist")
    args = parser.parse_args(argv)
    rank = int(os.environ.get("RANK", 0))
    logging.basicConfig(level=logging.INFO if rank == 0 else logging.WARNING,
                        format=f"%(asctime)s [rank{rank}] %(name)s: %(message)s")

    world = init_distributed(args.device)
    prompts, empty = read_prompt_file(args.prompts)
    duplicates = report_duplicates(prompts)
    template = load_template(args.model_path, args.prompt_template)
    encode = hunyuan_encoder(args.model_path, template, args.max_tokens, world.device)
    counts = preprocess(prompts, encode, args.output, world, args.shard_size, args.batch_size, args.dtype,
                        args.overwrite)
    if counts["prompts_truncated"]:
        logger.warning("rank %d: %d prompts exceeded %d tokens and were truncated", world.rank,
                       counts["prompts_truncated"], args.max_tokens)
    logger.info("%d prompts (%d empty lines skipped, %d duplicates); rank %d: %s", len(prompts), empty,
                duplicates, world.rank, counts)
    shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
