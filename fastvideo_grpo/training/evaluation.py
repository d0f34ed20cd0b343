"""Evaluation on held-out prompts, in the training loop and for the evaluate command line
(fastvideo_grpo/cli/evaluate.py): ODE samples from noise seeded by (seed, prompt index)
alone, scored with the configured rewards, summarized as mean and 95% CI per reward."""

from __future__ import annotations

import dataclasses
import datetime
import logging
import time
from pathlib import Path

import torch

from fastvideo_grpo.config import Config
from fastvideo_grpo.data.sources import build_prompt_source
from fastvideo_grpo.models import Policy
from fastvideo_grpo.training.outputs import append_metrics, append_rows, shrink_video, tile_videos
from fastvideo_grpo.parallel import World, all_gather_objects, gather_objects
from fastvideo_grpo.sampling.rollout import batch_slices, decode_videos, sample_ode
from fastvideo_grpo.sampling.seeding import make_generator
from fastvideo_grpo.stats import mean_ci

logger = logging.getLogger(__name__)

# The columns of a scores.jsonl row that are not rewards.
ROW_KEYS = ("prompt_index", "seed", "prompt", "file")


def eval_items(num_prompts: int, seeds: list[int]) -> list[tuple[int, int]]:
    """(prompt index, seed) pairs, prompt-major."""
    return [(p, seed) for p in range(num_prompts) for seed in seeds]


def rank_items(items: list[tuple[int, int]], rank: int, size: int) -> tuple[list[tuple[int, int]], int]:
    """This rank's share (every size-th item) padded with its last item to ceil(len/size),
    so every rank runs the same number of forward passes (FSDP needs that); returns the
    items and how many of them are real."""
    mine = items[rank::size]
    per_rank = -(-len(items) // size)
    real = len(mine)
    return mine + [mine[-1] if mine else items[-1]] * (per_rank - real), real


def evaluate_policy(policy: Policy, source, items: list[tuple[int, int]], cfg: Config,
                    latent_shape: tuple[int, ...], scorer, world: World,
                    grid_prompts: int = 0, progress: bool = False) -> tuple[list[dict], torch.Tensor | None]:
    """Sample and score `items` split over data-parallel ranks.

    Every rank returns all rows, sorted by (prompt, seed); the main rank, which writes it,
    also the grid of the first `grid_prompts` prompts' first-seed videos, each shrunk to
    eval.grid_max_side (uint8 [T, H', W', 3]; None if empty, and on every other rank).
    `progress`: the main rank logs a line per batch (its samples done, seconds, ETA).
    """
    e, s = cfg.eval, cfg.sampling
    num_steps = e.num_steps or s.num_steps
    # Every level of an N-step schedule, deterministic: the SDE settings do not apply.
    sampler = policy.sampler(dataclasses.replace(s, num_steps=num_steps, eta=0.0))
    first_seed = min(seed for _, seed in items)
    mine, real = rank_items(items, world.dp_rank, world.dp_size)
    rows, grid = [], {}
    if progress and world.is_main:
        logger.info("evaluating %d samples, %d on each of %d data-parallel ranks, in batches of %d", len(items),
                    len(mine), world.dp_size, e.batch_size)
    started = time.perf_counter()
    for batch in batch_slices(len(mine), e.batch_size):
        chunk = mine[batch]
        prompts = [source.prompts[p] for p, _ in chunk]
        cond = source.conditioning([p for p, _ in chunk]).to(world.device)
        # Seeded by (eval seed, prompt) alone, with no sampling.seeding.Purpose: one in the tuple
        # would change every held-out score, and comparisons across runs rest on them.
        initial = torch.stack([torch.randn(latent_shape, generator=make_generator(seed, p)) for p, seed in chunk])
        latents = sample_ode(policy, cond, initial.to(world.device), sampler)
        videos = decode_videos(policy, latents, s.decode_batch_size)
        scores = scorer.result(scorer.submit(videos, prompts))
        for i, (p, seed) in enumerate(chunk):
            if batch.start + i >= real:
                continue
            rows.append({"prompt_index": p, "seed": seed, "prompt": prompts[i],
                         **{name: float(r[i]) for name, r in scores.items()}})
            # Sequence-parallel ranks of a data-parallel rank hold the same videos: one sends them.
            if p < grid_prompts and seed == first_seed and world.sp_rank == 0:
                grid[p] = shrink_video(videos[i], e.grid_max_side)
        if progress and world.is_main:  # rank 0's share is never padded: its items are all real
            elapsed = time.perf_counter() - started
            eta = datetime.timedelta(seconds=round(elapsed / batch.stop * (len(mine) - batch.stop)))
            logger.info("evaluated %d/%d samples in %.1f s, ETA %s", batch.stop, len(mine), elapsed, eta)
    # Sequence-parallel ranks of a data-parallel rank hold the same rows: keep one copy.
    merged_rows = {(r["prompt_index"], r["seed"]): r for part in all_gather_objects(rows, world) for r in part}
    rows = [merged_rows[key] for key in sorted(merged_rows)]
    parts = gather_objects(grid, world)
    if parts is None:
        return rows, None
    merged_grid = {p: v for part in parts for p, v in part.items()}
    videos = [merged_grid[p] for p in sorted(merged_grid)]
    return rows, tile_videos(torch.stack(videos)) if videos else None


def evaluate_in_loop(policy: Policy, source, cfg: Config, latent_shape: tuple[int, ...], scorer, world: World,
                     tracker, iteration: int) -> tuple[dict, list[dict]]:
    """ODE evaluation of held-out prompts after `iteration` training iterations: a line in
    output_dir/eval.jsonl, its per-sample rows in output_dir/eval_scores.jsonl, scalars and a
    video grid in the logs; returns the line and the rows. Every rank takes part."""
    e = cfg.eval
    started = time.perf_counter()
    count = min(e.num_prompts or len(source), len(source))
    items = eval_items(count, list(range(e.seed, e.seed + e.num_seeds)))
    rows, grid = evaluate_policy(policy, source, items, cfg, latent_shape, scorer, world, e.grid_prompts)
    record = {"iteration": iteration}
    for name, stats in summarize(rows).items():
        record[f"eval/{name}_mean"] = stats["mean"]
        record[f"eval/{name}_ci95"] = stats["ci95"]
    if world.is_main:
        out = Path(cfg.train.output_dir)
        append_rows(out / "eval_scores.jsonl", [{"iteration": iteration, **row} for row in rows])
        append_metrics(out / "eval.jsonl", record)
    tracker.scalars({**record, "time_eval": time.perf_counter() - started}, iteration)
    if grid is not None:
        tracker.videos("eval/grid", grid, iteration, cfg.sampling.fps)
    return record, rows


def reward_names(row: dict) -> list[str]:
    """The reward columns of a scores.jsonl row."""
    return [k for k in row if k not in ROW_KEYS]


def summarize(rows: list[dict]) -> dict[str, dict[str, float]]:
    """Per reward: mean, std and 95% CI over all prompt x seed rows."""
    return {name: mean_ci([r[name] for r in rows]) for name in reward_names(rows[0])}


def held_out_source(cfg: Config, path: str = ""):
    """The prompt set to evaluate: `path` (an embeddings folder or a prompt file), else
    eval.embeddings_dir / eval.prompts_file, else the training prompts."""

    path = path or cfg.eval.embeddings_dir or cfg.eval.prompts_file
    data = cfg.data
    if path:
        is_dir = Path(path).is_dir()
        if not is_dir and cfg.model.size != "tiny":
            raise ValueError(f"prompts {path}: a full-size model needs a folder of precomputed embeddings")
        data = dataclasses.replace(cfg.data, embeddings_dir=path if is_dir else "",
                                   prompts_file="" if is_dir else path)
    return build_prompt_source(dataclasses.replace(cfg, data=data))

