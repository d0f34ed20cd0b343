"""CLI: ODE evaluation of a checkpoint, a diffusers folder or the base model on a prompt set.

    python -m fastvideo_grpo.evaluate [--config RUN/config.yaml]
        [--checkpoint RUN/checkpoints/step_N [--ema] | --diffusers FOLDER]
        [--prompts EMBEDDINGS_DIR | PROMPT_FILE] [--num-prompts K] [--seeds 0 1 2]
        [--name NAME] [--output-dir DIR] [--grid 4] [section.key=value ...]
    torchrun --nproc_per_node 8 -m fastvideo_grpo.evaluate ...   # prompts split over ranks
    python -m fastvideo_grpo.evaluate --compare eval/base eval/tuned [eval/other ...]
    python -m fastvideo_grpo.evaluate --config C --videos DIR_OR_GLOB --captions FILE
        [--send-paths] [--name NAME] [--output-dir DIR] [section.key=value ...]

Every (prompt, seed) pair is sampled with the ODE sampler (eta = 0) from an initial noise
seeded by (seed, prompt index) alone, so two models are compared on the same noise and
the result does not depend on the number of ranks. Writes OUT/NAME/scores.jsonl (one row
per prompt and seed), summary.json (mean, std and 95% CI per reward) and grid.mp4 /
grid.png (the first K prompts, first seed). Without --checkpoint or --diffusers the base
model of the config is evaluated. Overrides apply to the config, e.g.
`reward.binary_thresholds={}` scores a binary-trained run with the raw reward.

--videos scores existing video files instead (one process, no model): a folder's videos
or a glob's matches, sorted, each with its caption from --captions, with the configured
rewards; the same scores.jsonl (plus each row's file) and summary.json, no grid.
"""

from __future__ import annotations

import argparse
import collections
import json
import logging
import os
import sys
from pathlib import Path

import diffusers
import imageio
import torch

from fastvideo_grpo.checkpoint import resolve_checkpoint
from fastvideo_grpo.cli.args import number
from fastvideo_grpo.cli.errors import run_cli
from fastvideo_grpo.config import Config, load_config, run_config_path
from fastvideo_grpo.dtypes import DTYPES
from fastvideo_grpo.models import ModelFamily, build_policy, model_family
from fastvideo_grpo.training.outputs import write_video
from fastvideo_grpo.parallel import World, barrier, init_distributed, shutdown
from fastvideo_grpo.quiet import silence_library_noise
from fastvideo_grpo.stats import delta_ci, mean_ci
from fastvideo_grpo.training.evaluation import eval_items, evaluate_policy, held_out_source, reward_names, summarize
from fastvideo_grpo.video_io import list_videos, read_video, video_fps

logger = logging.getLogger(__name__)

# What a --captions .jsonl line may call a video's file name and its caption.
FILE_KEYS = ("file", "video", "path")
CAPTION_KEYS = ("caption", "prompt")


def write_results(folder: Path, rows: list[dict], grid: torch.Tensor | None, meta: dict, fps: int) -> dict:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "scores.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    summary = {"rewards": summarize(rows), **meta}
    (folder / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    if grid is not None:
        write_video(folder / "grid.mp4", grid, fps)
        imageio.imwrite(folder / "grid.png", grid[grid.shape[0] // 2].numpy())
    return summary


def load_transformer(checkpoint: str | None, diffusers_path: str | None, ema: bool,
                     family: ModelFamily | None = None) -> torch.nn.Module | None:
    """The trained transformer to evaluate, on CPU; None for the base model. A diffusers folder
    is read as `family` reads one where it says how (two experts), else by its network's class."""
    if checkpoint:
        from fastvideo_grpo.cli.export import load_trained_transformer

        return load_trained_transformer(checkpoint, ema)
    if diffusers_path:
        root = Path(diffusers_path)
        if family is not None and family.load_folder_network is not None and (root / "model_index.json").is_file():
            return family.load_folder_network(root)
        candidates = [root / "transformer", root / "unet", root]
        folder = next((f for f in candidates if (f / "config.json").is_file()), None)
        if folder is None:
            raise FileNotFoundError(f"--diffusers {root}: no transformer/config.json, unet/config.json or "
                                    "config.json; expected an exported diffusers folder")
        class_name = json.loads((folder / "config.json").read_text())["_class_name"]
        return getattr(diffusers, class_name).from_pretrained(folder, torch_dtype=torch.float32)
    return None


def evaluate(cfg: Config, output: Path, checkpoint: str | None = None, diffusers_path: str | None = None,
             ema: bool = False, prompts: str = "", num_prompts: int = 0, seeds: list[int] = (0,),
             grid_prompts: int = 4) -> dict | None:
    """Evaluate and write `output`/{scores.jsonl, summary.json, grid.*}; returns the summary
    on the main rank. The model is replicated on every rank (no FSDP)."""
    from fastvideo_grpo.rewards import check_reward_config, with_all_scores
    from fastvideo_grpo.rewards.scorers import build_reward_scorer

    check_reward_config(cfg.reward)  # before the policy is built
    world = init_distributed(cfg.parallel.device, timeout_minutes=cfg.parallel.timeout_minutes,
                             needs_cuda=cfg.model.size != "tiny", watchdog_seconds=cfg.parallel.watchdog_seconds)
    source = held_out_source(cfg, prompts)
    count = min(num_prompts or len(source), len(source))
    policy = build_policy(cfg.model, world.device, source.text_dim, source.pooled_dim)
    trained = load_transformer(checkpoint, diffusers_path, ema, model_family(cfg.model))
    if trained is not None:
        policy.transformer = trained
    policy.transformer.to(world.device).requires_grad_(False).eval()
    if cfg.model.dtype != "fp32":  # no optimizer state to keep in fp32: halve the memory
        policy.transformer.to(DTYPES[cfg.model.dtype])
    s = cfg.sampling
    latent_shape = policy.latent_shape(s.num_frames, s.height, s.width)
    scorer = build_reward_scorer(with_all_scores(cfg.reward), world)
    try:
        rows, grid = evaluate_policy(policy, source, eval_items(count, list(seeds)), cfg, latent_shape, scorer,
                                     world, grid_prompts, progress=True)
    finally:
        scorer.close()
    summary = None
    if world.is_main:
        meta = {"model": checkpoint or diffusers_path or "base", "ema": ema, "num_prompts": count,
                "seeds": list(seeds), "num_steps": cfg.eval.num_steps or s.num_steps, "ci": "normal, 95%"}
        summary = write_results(output, rows, grid, meta, s.fps)
        logger.info("%s: %s", output, {k: f"{v['mean']:.4f} +- {v['ci95']:.4f}" for k, v in summary["rewards"].items()})
    barrier(world)
    shutdown()
    return summary


def read_captions(path: Path, videos: list[Path]) -> list[str]:
    """The caption of each of `videos`: from a .json object {file name: caption}, a .jsonl
    of {"file": name, "caption": text} lines (also "video"/"path", "prompt"), or else a text
    file of one caption per line in the videos' sorted order. Names are matched to the
    videos' file names (a path's last part); captions of files not among them are unused."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"--captions {path}: no such file")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as e:
        raise ValueError(f"--captions {path}: not UTF-8 text ({e})") from e
    if path.suffix.lower() not in (".json", ".jsonl"):
        lines = text.splitlines()
        while lines and not lines[-1].strip():
            lines.pop()
        if len(lines) != len(videos):
            raise ValueError(f"--captions {path}: {len(lines)} captions for {len(videos)} videos; expected one line "
                             f"per video, in the sorted order of the videos (first {videos[0]}, last {videos[-1]})")
        empty = [n for n, line in enumerate(lines, start=1) if not line.strip()]
        if empty:
            raise ValueError(f"--captions {path}, line {empty[0]}: empty caption (of {videos[empty[0] - 1]})")
        return [line.strip() for line in lines]
    mapping = _caption_map(path, text)
    names = collections.Counter(v.name for v in videos)
    shared = sorted(name for name, count in names.items() if count > 1)
    if shared:
        raise ValueError(f"--captions {path}: several videos are named {shared[0]!r} "
                         f"({[str(v) for v in videos if v.name == shared[0]]}); a caption map needs unique names")
    missing = [v for v in videos if v.name not in mapping]
    if missing:
        raise ValueError(f"--captions {path}: no caption for {missing[0]} (nor {len(missing) - 1} other videos); "
                         f"expected an entry named {missing[0].name!r}")
    unused = len(mapping) - len(videos)
    if unused:
        logger.info("--captions %s: %d of its %d captions name no video here; unused", path, unused, len(mapping))
    return [mapping[v.name] for v in videos]


def _caption_map(path: Path, text: str) -> dict[str, str]:
    """File name -> caption, from the `text` of a .json object or of a .jsonl's lines."""
    try:
        if path.suffix.lower() == ".json":
            entries = json.loads(text)
            if not isinstance(entries, dict):
                raise ValueError(f"--captions {path}: a JSON {type(entries).__name__}; expected an object "
                                 "{file name: caption}")
            pairs = [(str(k), v, f"key {k!r}") for k, v in entries.items()]
        else:
            pairs = []
            for n, line in enumerate(text.splitlines(), start=1):
                if not line.strip():
                    continue
                try:
                    entry = json.loads(line)
                except json.JSONDecodeError as e:
                    raise ValueError(f"--captions {path}, line {n}: not valid JSON ({e}): {line[:80]!r}") from e
                file = next((entry[k] for k in FILE_KEYS if isinstance(entry, dict) and k in entry), None)
                caption = next((entry[k] for k in CAPTION_KEYS if isinstance(entry, dict) and k in entry), None)
                if file is None or caption is None:
                    raise ValueError(f"--captions {path}, line {n}: {line[:80]!r}; expected an object with one of "
                                     f"{list(FILE_KEYS)} and one of {list(CAPTION_KEYS)}")
                pairs.append((str(file), caption, f"line {n}"))
    except json.JSONDecodeError as e:
        raise ValueError(f"--captions {path}: not valid JSON: {e}") from e
    mapping: dict[str, str] = {}
    for file, caption, where in pairs:
        name = Path(file).name
        if not isinstance(caption, str) or not caption.strip():
            raise ValueError(f"--captions {path}, {where}: caption {caption!r}; expected a non-empty string")
        if name in mapping:
            raise ValueError(f"--captions {path}, {where}: a second caption for {name!r}")
        mapping[name] = caption.strip()
    return mapping


def score_files(scorer, paths: list[Path], prompts: list[str], window: int, send_paths: bool = False) -> list[dict]:
    """Score each video file with its prompt, one video per request (sizes and lengths may
    differ; the reward process batches same-shaped ones): rows in the order of `paths`.
    Up to `window` files are in flight; each is read just before it is sent, or with
    `send_paths` read by the reward server from its absolute path."""
    from fastvideo_grpo.rewards import RewardError

    pending: collections.deque = collections.deque()
    rows = []

    def finish() -> None:
        index, handle = pending.popleft()
        try:
            scores = scorer.result(handle)
        except RewardError as e:
            raise RewardError(f"{paths[index]}: {e}") from e
        rows.append({"prompt_index": index, "seed": None, "prompt": prompts[index], "file": str(paths[index]),
                     **{name: float(s[0]) for name, s in scores.items()}})

    for index, (path, prompt) in enumerate(zip(paths, prompts, strict=True)):
        try:
            if send_paths:
                handle = scorer.submit_paths([str(path.resolve())], [prompt])
            else:
                handle = scorer.submit(read_video(path)[None], [prompt])  # [1, T, H, W, 3]
        except RewardError as e:  # scored at once by an inline scorer
            raise RewardError(f"{path}: {e}") from e
        pending.append((index, handle))
        if len(pending) >= window:
            finish()
    while pending:
        finish()
    return rows


def check_frame_rates(paths: list[Path], fps: float) -> None:
    """Warn when files are not at reward.video_fps, the rate rewards that sample frames
    by time (VideoAlign) take every video to be at."""
    off = {p: rate for p in paths if (rate := video_fps(p)) and abs(rate - fps) > 1e-3 * fps}
    if off:
        path, rate = next(iter(off.items()))
        logger.warning("%d of %d videos are not at reward.video_fps=%g, e.g. %s at %g fps; rewards that sample "
                       "frames by time read them at the wrong rate: set reward.video_fps", len(off), len(paths),
                       fps, path, rate)


def evaluate_videos(cfg: Config, output: Path, videos: str, captions: str, send_paths: bool = False) -> dict:
    """Score the video files `videos` (a folder or a glob) with their --captions and the
    configured rewards; writes `output`/{scores.jsonl, summary.json} and returns the summary."""
    from fastvideo_grpo.rewards import check_reward_config, pairwise_models
    from fastvideo_grpo.rewards.scorers import build_reward_scorer

    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise ValueError("--videos scores in one process; run it without torchrun")
    check_reward_config(cfg.reward)
    if pairwise := pairwise_models(cfg.reward):
        raise ValueError(f"reward.weights: {pairwise} compare the samples of a group; --videos scores each file on "
                         "its own: expected pointwise rewards")
    if send_paths and cfg.reward.mode == "inline":
        raise ValueError("--send-paths: reward.mode=inline has no reward server to read the files; expected "
                         "reward.mode=process or remote")
    paths = list_videos(videos)
    prompts = read_captions(Path(captions), paths)
    check_frame_rates(paths, cfg.reward.video_fps)  # opens every file: a bad one fails before any scoring
    scorer = build_reward_scorer(cfg.reward, World(rank=0, world_size=1, device=torch.device("cpu"), mesh=None))
    try:
        rows = score_files(scorer, paths, prompts, cfg.reward.max_batch, send_paths)
    finally:
        scorer.close()
    meta = {"videos": videos, "captions": str(captions), "num_videos": len(rows), "ci": "normal, 95%"}
    summary = write_results(output, rows, None, meta, cfg.sampling.fps)
    logger.info("%s: %s", output, {k: f"{v['mean']:.4f} +- {v['ci95']:.4f}" for k, v in summary["rewards"].items()})
    return summary


def videos_name(spec: str) -> str:
    """A results folder name for --videos: its last part without glob characters."""
    return next((part for part in reversed(Path(spec).parts) if not set("*?[") & set(part)), "videos")


def videos_folder(spec: str) -> Path:
    """The folder --videos names: the spec itself, or a glob pattern's part before its first
    glob character."""
    parts = Path(spec).parts
    plain = next((i for i, part in enumerate(parts) if set("*?[") & set(part)), len(parts))
    return Path(*parts[:plain]) if plain else Path(".")


def read_scores(folder: Path) -> list[dict]:
    path = Path(folder) / "scores.jsonl"
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist; run `python -m fastvideo_grpo.evaluate` first")
    rows = []
    for line_number, line in enumerate(path.read_text().splitlines(), start=1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{line_number}: not JSON ({e.msg}): truncated or damaged") from e
    if not rows:
        raise ValueError(f"{path} holds no scores; run `python -m fastvideo_grpo.evaluate` into {path.parent} again")
    return rows


def compare(folders: list[Path]) -> str:
    """Markdown table: every folder's rewards against the first's."""
    base = read_scores(folders[0])
    lines = ["| reward | run | mean +- 95% CI | delta vs " + Path(folders[0]).name + " | 95% CI of delta | paired |",
             "|---|---|---|---|---|---|"]
    for name in reward_names(base[0]):
        ref = mean_ci([r[name] for r in base])
        lines.append(f"| {name} | {Path(folders[0]).name} | {ref['mean']:.4f} +- {ref['ci95']:.4f} | | | |")
        for folder in folders[1:]:
            other = read_scores(folder)
            if name not in other[0]:
                raise ValueError(f"{folder}/scores.jsonl has no reward {name!r}; it has {sorted(other[0])}")
            stats = mean_ci([r[name] for r in other])
            delta, paired = delta_ci(base, other, name)
            lines.append(f"| {name} | {Path(folder).name} | {stats['mean']:.4f} +- {stats['ci95']:.4f} "
                         f"| {delta['mean']:+.4f} | [{delta['ci95_low']:+.4f}, {delta['ci95_high']:+.4f}] "
                         f"| {'yes' if paired else 'no'} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="ODE evaluation of a trained or base model on a prompt set")
    parser.add_argument("--config", help="YAML config (default: the checkpoint's RUN/config.yaml)")
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--checkpoint", help="a RUN/checkpoints/step_N folder, RUN/checkpoints/latest or RUN "
                        "(its latest checkpoint)")
    source.add_argument("--diffusers", help="an exported diffusers folder (with transformer/ or its contents)")
    source.add_argument("--videos", metavar="DIR_OR_GLOB", help="score these existing video files (with --captions) "
                        "instead of sampling")
    parser.add_argument("--captions", help="with --videos: a text file of one caption per line (the videos' sorted "
                        "order), or a .json / .jsonl map of file name -> caption")
    parser.add_argument("--send-paths", action="store_true", help="with --videos in reward.mode process or remote: "
                        "the reward server reads the files itself, at these absolute paths")
    parser.add_argument("--ema", action="store_true", help="evaluate the checkpoint's EMA weights")
    parser.add_argument("--prompts", default="", help="embeddings folder or (tiny model) prompt file")
    parser.add_argument("--num-prompts", type=number(int, 0), default=0, help="the first K prompts (0: all)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--name", help="results go to OUTPUT_DIR/NAME (default: from the model)")
    parser.add_argument("--output-dir", help="default: RUN/eval for a checkpoint of run folder RUN, the config's "
                        "train.output_dir/eval for --diffusers or the base model, DIR/eval for --videos DIR")
    parser.add_argument("--grid", type=number(int, 0), default=4, help="prompts in grid.mp4/grid.png")
    parser.add_argument("--compare", nargs="+", metavar="EVAL_DIR", help="print deltas of runs vs the first")
    parser.add_argument("overrides", nargs="*", help="dotted config overrides")
    args = parser.parse_args(argv)
    silence_library_noise()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    if args.compare:
        if len(args.compare) < 2:
            parser.error("--compare needs at least two evaluation folders")
        try:
            table = compare([Path(f) for f in args.compare])
        except (OSError, ValueError) as e:
            parser.error(f"--compare: {e}")
        sys.stdout.write(table + "\n")
        return 0
    if args.videos:
        if not args.captions:
            parser.error("--videos needs --captions")
        if args.config is None:
            parser.error("--videos needs --config (its reward section)")
        if args.prompts or args.ema:
            parser.error("--videos scores files: --prompts and --ema do not apply")
        # Beside the videos, not wherever the command was typed.
        output_dir = Path(args.output_dir) if args.output_dir else videos_folder(args.videos) / "eval"
        evaluate_videos(load_config(args.config, args.overrides), output_dir / (args.name or videos_name(args.videos)),
                        args.videos, args.captions, args.send_paths)
        return 0
    if args.captions or args.send_paths:
        parser.error("--captions and --send-paths go with --videos")
    checkpoint = resolve_checkpoint(args.checkpoint) if args.checkpoint else None
    config = args.config
    if config is None and checkpoint is not None:
        config = run_config_path(checkpoint)
        if config is None:
            looked_for = checkpoint.parent.parent / "config.yaml"  # where run_config_path looks
            parser.error(f"--checkpoint {args.checkpoint}: found no run config; looked for {looked_for} (the "
                         "config.yaml a run folder keeps beside checkpoints/); pass --config")
    if config is None:
        parser.error("--config is required without --checkpoint (with it, the run's config.yaml is used)")
    cfg = load_config(config, args.overrides)
    name = args.name or (checkpoint or Path(args.diffusers or "base")).name
    # A checkpoint's evaluation belongs with its run; a folder's or the base model's with the
    # run the config names; neither wherever the command was typed.
    output_dir = Path(args.output_dir) if args.output_dir else (
        checkpoint.parent.parent / "eval" if checkpoint is not None else Path(cfg.train.output_dir) / "eval")
    evaluate(cfg, output_dir / name, str(checkpoint) if checkpoint else None, args.diffusers, args.ema,
             args.prompts, args.num_prompts, args.seeds, args.grid)
    return 0


def command() -> int:
    """`fastvideo-grpo-evaluate` and `python -m fastvideo_grpo.evaluate`: main on sys.argv, a user error as
    one line and exit status 2."""
    return run_cli(main)
