"""The model-independent half of offline text encoding: read prompts, split them into
shards over ranks, skip finished shards, write the manifest. A model adds an encode
function: list of prompts -> (prompt_embeds, attention_mask, pooled, token_count, truncated)."""

from __future__ import annotations

import json
import logging
from collections import Counter
from pathlib import Path
from typing import Callable

import torch

from fastvideo_grpo.data.embeddings import MANIFEST, shard_name, write_manifest, write_shard
from fastvideo_grpo.parallel import World, barrier

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
