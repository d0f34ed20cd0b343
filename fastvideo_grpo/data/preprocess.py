"""The model-independent half of offline encoding: read prompts (or image paths), split them
into shards over ranks, skip finished shards, write the manifest. A model adds an encode
function: a batch of items -> shard tensors."""

from __future__ import annotations

import argparse
import json
import logging
import os
from collections import Counter
from pathlib import Path
from typing import Callable

import torch

from fastvideo_grpo.data.embeddings import MANIFEST, NEGATIVE, shard_name, write_manifest, write_shard
from fastvideo_grpo.parallel import World, barrier, init_distributed, shutdown

logger = logging.getLogger(__name__)

# A batch of items -> the shard tensors of that batch (first dim: the batch) and how many
# items were truncated.
EncodeFn = Callable[[list[str]], tuple[dict[str, torch.Tensor], int]]
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


def stored(tensors: dict[str, torch.Tensor], dtype: str) -> dict[str, torch.Tensor]:
    """Floats in the requested dtype, integers as int64."""
    return {key: t.to(DTYPES[dtype]) if t.is_floating_point() else t.to(torch.int64) for key, t in tensors.items()}


def preprocess(items: list[str], encode: EncodeFn, output: str | Path, world: World, shard_size: int = 1024,
               batch_size: int = 8, dtype: str = "bf16", overwrite: bool = False, item_key: str = "prompt") -> dict:
    """Encode every shard this rank owns (shard i belongs to rank i % world size) that is
    not on disk yet; rank 0 then writes the manifest: one row per item with its `item_key`
    (the prompt, or an image path), shard, row, and token count where the shards have one.
    Returns counts for the log."""
    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    num_shards = -(-len(items) // shard_size)
    encoded = skipped = truncated = 0
    for shard in range(world.rank, num_shards, world.world_size):
        path = output / shard_name(shard)
        if path.exists() and not overwrite:
            skipped += 1
            continue
        chunk = items[shard * shard_size:(shard + 1) * shard_size]
        parts = [encode(chunk[start:start + batch_size]) for start in range(0, len(chunk), batch_size)]
        truncated += sum(count for _, count in parts)
        tensors = {key: torch.cat([batch[key] for batch, _ in parts]) for key in parts[0][0]}
        write_shard(path, stored(tensors, dtype))
        encoded += 1
        logger.info("rank %d wrote %s (%d items)", world.rank, path, len(chunk))
    counts = {"shards_encoded": encoded, "shards_skipped": skipped, "prompts_truncated": truncated}
    barrier(world)
    if world.is_main:
        write_manifest(output, manifest_rows(items, output, num_shards, shard_size, item_key))
        logger.info("wrote %s (%d items in %d shards)", output / MANIFEST, len(items), num_shards)
    barrier(world)
    return counts


def write_negative(encode: EncodeFn, output: Path, dtype: str) -> None:
    """The empty prompt's embeddings, encoded like every prompt: the unconditional branch of
    classifier-free guidance (as the pipelines encode an absent negative prompt)."""
    tensors, _ = encode([""])
    write_shard(output / NEGATIVE, stored(tensors, dtype))
    logger.info("wrote %s", output / NEGATIVE)


def manifest_rows(items: list[str], output: Path, num_shards: int, shard_size: int, item_key: str) -> list[dict]:
    from safetensors import safe_open

    rows = []
    for shard in range(num_shards):
        with safe_open(output / shard_name(shard), framework="pt") as f:
            tokens = f.get_tensor("token_count").tolist() if "token_count" in f.keys() else None
        for row in range(len(items[shard * shard_size:(shard + 1) * shard_size])):
            i = shard * shard_size + row
            rows.append({"id": i, item_key: items[i], "shard": shard_name(shard), "row": row,
                         **({"tokens": tokens[row]} if tokens is not None else {})})
    return rows


def text_shard_tensors(embeds: torch.Tensor, mask: torch.Tensor, pooled: torch.Tensor) -> dict[str, torch.Tensor]:
    """The tensors of a text-embedding shard, as EmbeddingDataset reads them."""
    return {"prompt_embeds": embeds.cpu(), "prompt_attention_mask": mask.cpu(), "pooled_prompt_embeds": pooled.cpu(),
            "token_count": mask.sum(dim=1).cpu()}


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
    if world.is_main:
        write_negative(encode, Path(args.output), args.dtype)
    if counts["prompts_truncated"]:
        logger.warning("rank %d: %d prompts exceeded %d tokens and were truncated", world.rank,
                       counts["prompts_truncated"], args.max_tokens)
    logger.info("%d prompts (%d empty lines skipped, %d duplicates); rank %d: %s", len(prompts), empty,
                duplicates, world.rank, counts)
    shutdown()
    return 0


def load_text_pipeline(pipeline_cls, model_path: Path, device: torch.device, components: tuple[str, ...],
                       **skipped):
    """A diffusers pipeline with only its text encoders and tokenizers loaded; `skipped`
    names the other components as None (transformer=None, vae=None, ...)."""
    for sub in components:
        if not (model_path / sub).is_dir():
            raise FileNotFoundError(f"--model-path {model_path}: no {sub}/; expected a diffusers folder for "
                                    f"{pipeline_cls.__name__}")
    dtype = torch.float32 if device.type == "cpu" else torch.bfloat16
    return pipeline_cls.from_pretrained(model_path, torch_dtype=dtype, **skipped).to(device)
