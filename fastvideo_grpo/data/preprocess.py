"""The model-independent half of offline text encoding: read prompts, split them into
shards over ranks, skip finished shards, write the manifest. A model adds an encode
function: list of prompts -> (prompt_embeds, attention_mask, pooled, token_count, truncated)."""

from __future__ import annotations

import argparse
import json
import logging
import os
from collections import Counter
from pathlib import Path
from typing import Callable

import torch

from fastvideo_grpo.data.embeddings import MANIFEST, shard_name, write_manifest, write_shard
from fastvideo_grpo.parallel import World, barrier, init_distributed, shutdown

logger = logging.getLogger(__name__)

EncodeFn = Callable[[list[str]], tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, int]]
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def read_prompt_file(path: str | Path) -> tuple[list[str], int]:
    """Prompts of a `.txt` (one a line) or `.jsonl` (`prompt` field) file, and how many
    empty lines were skipped."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"prompt file {path} does not exist")
    prompts, empty = [], 0
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            empty += 1
            continue
        if path.suffix == ".jsonl":
            try:
                prompt = json.loads(line)["prompt"]
            except (json.JSONDecodeError, KeyError, TypeError) as e:
                raise ValueError(f"{path}:{number}: expected a JSON object with a 'prompt' field") from e
            if not str(prompt).strip():
                empty += 1
                continue
            prompts.append(str(prompt).strip())
        else:
            prompts.append(line.strip())
    if not prompts:
        raise ValueError(f"prompt file {path} holds no prompts")
    return prompts, empty


def preprocess(prompts: list[str], encode: EncodeFn, output: str | Path, world: World, shard_size: int = 1024,
               batch_size: int = 8, dtype: str = "bf16", overwrite: bool = False) -> dict:
    """Encode every shard this rank owns (shard i belongs to rank i % world size) that is
    not on disk yet; rank 0 then writes the manifest. Returns counts for the log."""
    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    num_shards = -(-len(prompts) // shard_size)
    encoded = skipped = truncated = 0
    for shard in range(world.rank, num_shards, world.world_size):
        path = output / shard_name(shard)
        if path.exists() and not overwrite:
            skipped += 1
            continue
        chunk = prompts[shard * shard_size:(shard + 1) * shard_size]
        parts: list[tuple] = []
        for start in range(0, len(chunk), batch_size):
            parts.append(encode(chunk[start:start + batch_size]))
        truncated += sum(p[4] for p in parts)
        write_shard(path, {
            "prompt_embeds": torch.cat([p[0] for p in parts]).to(DTYPES[dtype]),
            "prompt_attention_mask": torch.cat([p[1] for p in parts]).to(torch.int64),
            "pooled_prompt_embeds": torch.cat([p[2] for p in parts]).to(DTYPES[dtype]),
            "token_count": torch.cat([p[3] for p in parts]).to(torch.int64),
        })
        encoded += 1
        logger.info("rank %d wrote %s (%d prompts)", world.rank, path, len(chunk))
    counts = {"shards_encoded": encoded, "shards_skipped": skipped, "prompts_truncated": truncated}
    barrier(world)
    if world.is_main:
        from safetensors import safe_open

        rows = []
        for shard in range(num_shards):
            with safe_open(output / shard_name(shard), framework="pt") as f:
                tokens = f.get_tensor("token_count").tolist()
            for row, count in enumerate(tokens):
                i = shard * shard_size + row
                rows.append({"id": i, "prompt": prompts[i], "shard": shard_name(shard), "row": row, "tokens": count})
        write_manifest(output, rows)
        logger.info("wrote %s (%d prompts in %d shards)", output / MANIFEST, len(rows), num_shards)
    barrier(world)
    return counts


def report_duplicates(prompts: list[str]) -> int:
    duplicates = sum(n - 1 for n in Counter(prompts).values() if n > 1)
    if duplicates:
        logger.warning("%d prompts are duplicates of earlier ones (kept: each line is a sample)", duplicates)
    return duplicates


def main(description: str, build_encoder: Callable[[argparse.Namespace, torch.device], EncodeFn],
         default_max_tokens: int, argv: list[str] | None = None,
         add_arguments: Callable[[argparse.ArgumentParser], None] | None = None) -> int:
    """The command line every model's preprocessing script shares; `build_encoder` loads
    the model's text encoders from --model-path."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--model-path", required=True, type=Path, help="local diffusers-format model folder")
    parser.add_argument("--prompts", required=True, help=".txt (one per line) or .jsonl with a 'prompt' field")
    parser.add_argument("--output", required=True)
    parser.add_argument("--shard-size", type=int, default=1024)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-tokens", type=int, default=default_max_tokens)
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="bf16")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--overwrite", action="store_true", help="re-encode shards that already exist")
    if add_arguments is not None:
        add_arguments(parser)
    args = parser.parse_args(argv)
    rank = int(os.environ.get("RANK", 0))
    logging.basicConfig(level=logging.INFO if rank == 0 else logging.WARNING,
                        format=f"%(asctime)s [rank{rank}] %(name)s: %(message)s")

    world = init_distributed(args.device)
    prompts, empty = read_prompt_file(args.prompts)
    duplicates = report_duplicates(prompts)
    encode = build_encoder(args, world.device)
    counts = preprocess(prompts, encode, args.output, world, args.shard_size, args.batch_size, args.dtype,
                        args.overwrite)
    if counts["prompts_truncated"]:
        logger.warning("rank %d: %d prompts exceeded %d tokens and were truncated", world.rank,
                       counts["prompts_truncated"], args.max_tokens)
    logger.info("%d prompts (%d empty lines skipped, %d duplicates); rank %d: %s", len(prompts), empty,
                duplicates, world.rank, counts)
    shutdown()
    return 0


def require_components(model_path: Path, components: tuple[str, ...], family: str) -> None:
    for sub in components:
        if not (model_path / sub).is_dir():
            raise FileNotFoundError(f"--model-path {model_path}: no {sub}/; expected a diffusers {family} folder")


def pipeline_dtype(device: torch.device) -> torch.dtype:
    return torch.float32 if device.type == "cpu" else torch.bfloat16
