"""The command line every model's preprocessing script (data_preprocess/preprocess_*_embeddings.py)
shares: read the prompts, load the model's text encoders, encode into shards over ranks."""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
from collections import Counter
from pathlib import Path
from typing import Callable

import torch

from fastvideo_grpo.cli.args import number
from fastvideo_grpo.cli.errors import run_cli
from fastvideo_grpo.config import ModelConfig
from fastvideo_grpo.data.preprocess import RERUN_HELP, EncodeFn, preprocess, read_prompt_file, write_negative
from fastvideo_grpo.dtypes import DTYPES
from fastvideo_grpo.models import FAMILIES, model_family
from fastvideo_grpo.parallel import init_distributed, shutdown

logger = logging.getLogger(__name__)


def report_duplicates(prompts: list[str]) -> int:
    duplicates = sum(n - 1 for n in Counter(prompts).values() if n > 1)
    if duplicates:
        logger.warning("%d prompts are duplicates of earlier ones (kept: each line is a sample)", duplicates)
    return duplicates


def main(description: str, build_encoder: Callable[[argparse.Namespace, torch.device], EncodeFn],
         default_max_tokens: int, argv: list[str] | None = None,
         add_arguments: Callable[[argparse.ArgumentParser], None] | None = None,
         fingerprint: Callable[[argparse.Namespace], dict] | None = None) -> int:
    """The command line every model's preprocessing script shares; `build_encoder` loads
    the model's text encoders from --model-path; `fingerprint` returns what else of the
    model's own arguments decides the embeddings (stored with each shard)."""
    parser = argparse.ArgumentParser(description=description, epilog=RERUN_HELP.format(
        items="prompts",
        settings="encoder, resolved --model-path, --max-tokens, the prompt template where the model has one"))
    parser.add_argument("--model-path", required=True, type=Path, help="local diffusers-format model folder")
    parser.add_argument("--prompts", required=True,
                        help="UTF-8 .txt (one prompt a line) or .jsonl/.json (one JSON object a line with a "
                             "string 'prompt'); blank lines are skipped and counted, a line with a control "
                             "character, invalid UTF-8 or a non-string prompt is an error naming the line")
    parser.add_argument("--output", required=True, help="folder of shards and manifest.jsonl")
    parser.add_argument("--shard-size", type=number(int, 1), default=1024)
    parser.add_argument("--batch-size", type=number(int, 1), default=8)
    parser.add_argument("--max-tokens", type=number(int, 1), default=default_max_tokens)
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="bf16")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--overwrite", action="store_true", help="re-encode every shard, even unchanged ones")
    if add_arguments is not None:
        add_arguments(parser)
    args = parser.parse_args(argv)
    rank = int(os.environ.get("RANK", 0))
    logging.basicConfig(level=logging.INFO if rank == 0 else logging.WARNING,
                        format=f"%(asctime)s [rank{rank}] %(name)s: %(message)s")

    prompts, empty = read_prompt_file(args.prompts)  # before any device or process group: fails fast
    duplicates = report_duplicates(prompts)
    settings = {"encoder": build_encoder.__name__, "model_path": str(args.model_path.resolve()),
                "max_tokens": args.max_tokens, **(fingerprint(args) if fingerprint is not None else {})}
    world = init_distributed(args.device)
    encode = build_encoder(args, world.device)
    counts = preprocess(prompts, encode, args.output, world, args.shard_size, args.batch_size, args.dtype,
                        args.overwrite, settings=settings)
    if world.is_main:
        write_negative(encode, Path(args.output), args.dtype)
    if counts["prompts_truncated"]:
        logger.warning("rank %d: %d prompts exceeded %d tokens and were truncated", world.rank,
                       counts["prompts_truncated"], args.max_tokens)
    logger.info("%d prompts (%d empty lines skipped, %d duplicates); rank %d: %s", len(prompts), empty,
                duplicates, world.rank, counts)
    shutdown()
    return 0


def family_main(family: str, description: str, argv: list[str] | None = None) -> int:
    """`main` with model.family `family`'s encoder (its `ModelFamily.encoder` module: `encoder`,
    `MAX_TOKENS`, and optionally `add_arguments` and `fingerprint`)."""
    module = model_family(ModelConfig(family=family)).encoder
    if module is None:
        raise ValueError(f"model.family {family!r} has no preprocessing encoder (ModelFamily.encoder is None)")
    encoder = importlib.import_module(module)
    return main(description, encoder.encoder, encoder.MAX_TOKENS, argv, getattr(encoder, "add_arguments", None),
                getattr(encoder, "fingerprint", None))


def command() -> int:
    """`fastvideo-grpo-preprocess --family NAME ...`: `family_main` with model.family NAME's
    encoder, on the rest of sys.argv (the family's own command line); a user error as one
    line and exit status 2."""
    families = sorted(name for name, family in FAMILIES.items() if family.encoder is not None)
    parser = argparse.ArgumentParser(prog="fastvideo-grpo-preprocess", add_help=False)
    parser.add_argument("--family", choices=families)
    args, rest = parser.parse_known_args()
    if args.family is None:  # --help, or a command line without the family: name the choices
        parser = argparse.ArgumentParser(prog="fastvideo-grpo-preprocess",
                                         description="Encode prompts into the embedding shards a full-size run "
                                                     "trains on (data.embeddings_dir), with a model family's text "
                                                     "encoders; `--family NAME --help` shows the family's options")
        parser.add_argument("--family", required=True, choices=families, help="the model.family to encode for")
        parser.parse_args(rest)
    description = f"Encode prompts with model.family {args.family}'s text encoders into embedding shards"
    return run_cli(lambda argv: family_main(args.family, description, argv), rest)


if __name__ == "__main__":
    sys.exit(command())
