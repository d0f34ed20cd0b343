"""The GRPO loop: prompts -> rollout -> decode -> score -> advantages -> update -> log."""

from __future__ import annotations

import copy
import logging
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import yaml
from tqdm import tqdm

from fastvideo_grpo import grpo
from fastvideo_grpo.checkpoint import diffusers_config, latest_checkpoint, load_checkpoint, save_checkpoint
from fastvideo_grpo.config import Config, to_dict
from fastvideo_grpo.ema import init_ema, update_ema
from fastvideo_grpo.data.embeddings import EmbeddingDataset, ImageLatents, TinyRandomPrompts, WithImageLatents
from fastvideo_grpo.evaluate import eval_items, evaluate_policy, held_out_source, summarize
from fastvideo_grpo.data.preprocess import read_prompt_file
from fastvideo_grpo.data.prompts import PromptSampler
from fastvideo_grpo.models import Policy, TextConditioning, build_policy
from fastvideo_grpo.models.lora import apply_lora
from fastvideo_grpo.models.tiny_text_encoder import TinyTextEncoder
from fastvideo_grpo.outputs import append_metrics, plot_reward_curve, read_metrics, write_video
from fastvideo_grpo.parallel import (World, all_gather_dp, all_reduce_max, all_reduce_mean, barrier, init_distributed,
                                     shutdown)
from fastvideo_grpo.parallel.fsdp import clip_grad_norm, parallelize, set_gradient_sync
from fastvideo_grpo.preemption import Preempted, PreemptionFlag
from fastvideo_grpo.rewards import RewardError
from fastvideo_grpo.rewards.service import InlineScorer, ServiceScorer, build_reward_scorer
from fastvideo_grpo.run_folder import run_folder_lock, trim_logs
from fastvideo_grpo.rollout import Rollout, decode_videos, make_generator, rollout
from fastvideo_grpo.tracking import Tracker, memory_stats, score_stats

logger = logging.getLogger(__name__)


@dataclass
class Scores:
    rewards: dict[str, torch.Tensor]  # name -> [B] raw (or thresholded) reward
    normalized: dict[str, torch.Tensor]  # name -> [B] the reward normalised per group (or batch)
    advantages: torch.Tensor  # [B], aggregated over rewards and clipped
    zero_std_frac: float


@dataclass
class MicroBatch:
    samples: torch.Tensor  # indices into the rollout's batch dim
    step: int  # the trained transition k: sigmas[k] -> sigmas[k+1]


def advantages_of(rewards: dict[str, torch.Tensor], cfg: Config, world: World) -> Scores:
    """Group advantages; with grpo.advantage_mode=batch (the DDPO ablation) the statistics are
    those of the global batch, all data-parallel ranks' samples, as DDPO normalises. A collective."""
    group_size, mode = cfg.sampling.group_size, cfg.grpo.advantage_mode
    if mode == "batch":
        count = len(next(iter(rewards.values())))
        mine = slice(world.dp_rank * count, (world.dp_rank + 1) * count)
        normalized = {name: grpo.normalize_rewards(all_gather_dp(r, world), group_size, mode)[mine]
                      for name, r in rewards.items()}
    else:
        normalized = {name: grpo.normalize_rewards(r, group_size, mode) for name, r in rewards.items()}
    advantages = grpo.aggregate_advantages(normalized, cfg.reward.weights, cfg.grpo.adv_clip_max)
    total = sum(cfg.reward.weights[name] * r for name, r in rewards.items())
    return Scores(rewards, normalized, advantages, grpo.zero_std_fraction(total, group_size))


class NonFiniteTraining(RuntimeError):
    """Too many optimizer steps in a row had a NaN or inf gradient."""


def nonfinite_groups(rewards: dict[str, torch.Tensor], prompts: list[str], cfg: Config,
                     first_sample: int) -> torch.Tensor:
    """[B] bool: the samples of every group in which some reward is NaN or inf. With
    reward.on_nonfinite=error the first such reward is an error naming the reward, the
    sample (its global index) and the prompt."""
    group_size = cfg.sampling.group_size
    bad = torch.zeros(len(prompts), dtype=torch.bool)
    for name, r in rewards.items():
        nonfinite = ~torch.isfinite(r)
        if nonfinite.any() and cfg.reward.on_nonfinite == "error":
            i = int(nonfinite.nonzero()[0])
            raise RewardError(f"reward {name!r} returned {float(r[i])} for sample {first_sample + i} "
                              f"(prompt {prompts[i]!r}); set reward.on_nonfinite=drop_group to leave such "
                              "groups out of the update instead")
        bad |= nonfinite
    return bad.view(-1, group_size).any(dim=1).repeat_interleave(group_size)


def plan_micro_batches(ro: Rollout, kept: torch.Tensor, cfg: Config, seed_parts: tuple[int, ...],
                       first_sample: int = 0) -> list[list[MicroBatch]]:
    """The optimizer steps of an iteration, each a list of micro-batches.

    As in the released scripts, `train.gradient_accumulation_steps` counts samples: each
    optimizer step takes that many kept samples (in order; the last step takes the rest),
    each with all its trained transitions, so a sample never straddles two steps and the
    step count, ceil(kept / gradient_accumulation_steps), is the same on every rank.
    Within a step, a micro-batch is the step's samples of one rollout batch at one trained
    transition: when it is the whole rollout batch, its forward is bit-identical to the
    rollout's, so the stored log-probs are the old policy's and none is recomputed.
    A rollout batch's timesteps are drawn from a generator seeded by its first global sample index.
    """
    steps_of_batch = {}
    for batch in ro.batches:
        generator = make_generator(*seed_parts, 2, first_sample + batch.start)
        steps_of_batch[batch.start] = grpo.select_timesteps(cfg.sampling.num_steps, cfg.grpo.timestep_fraction,
                                                            cfg.grpo.timestep_selection, generator).tolist()
    kept_samples = torch.nonzero(kept).flatten()
    per_step = cfg.train.gradient_accumulation_steps
    plan = []
    for start in range(0, len(kept_samples), per_step):
        window = kept_samples[start:start + per_step]
        micro_batches = []
        for batch in ro.batches:
            samples = window[(window >= batch.start) & (window < batch.stop)]
            if len(samples):
                micro_batches += [MicroBatch(samples, k) for k in steps_of_batch[batch.start]]
        plan.append(micro_batches)
    return plan


def update_policy(policy: Policy, reference: Policy | None, optimizer: torch.optim.Optimizer,
                  scheduler: torch.optim.lr_scheduler.LRScheduler, ro: Rollout, cond: TextConditioning,
                  advantages: torch.Tensor, plan: list[list[MicroBatch]], cfg: Config,
                  ema: dict[str, torch.Tensor] | None = None, nonfinite_streak: int = 0) -> dict[str, float]:
    """One optimizer step per entry of the plan; its loss is the mean over its (sample,
    trained transition) pairs, as the reference's 1 / (gradient_accumulation_steps * T).
    `ema`, when given, is updated after every optimizer step (train.ema_update=optimizer_step).

    A step whose gradient norm (global over ranks, so every rank decides alike) is NaN or inf
    is skipped: weights, optimizer state, LR schedule and EMA stay as they were. The summary
    counts skipped steps (`nonfinite_steps`) and the run of them ending this update,
    continuing `nonfinite_streak` from the previous one; the update stops when that run
    reaches train.max_nonfinite_steps."""
    s, g = cfg.sampling, cfg.grpo
    device = ro.latents.device
    advantages = advantages.to(device)
    stats: dict[str, list[float]] = {"loss": [], "ratio_mean": [], "ratio_max_dev": [], "clip_frac": [],
                                     "grad_norm": [], "kl": []}
    ratio_dev_first_update = 0.0
    skipped = 0
    for step_index, chunk in enumerate(plan):
        window_samples = sum(len(mb.samples) for mb in chunk)
        for position, mb in enumerate(chunk):
            set_gradient_sync(policy.transformer, position == len(chunk) - 1)
            idx = mb.samples.to(device)
            x, x_next = ro.latents[idx, mb.step], ro.latents[idx, mb.step + 1]
            mb_cond = cond.select(mb.samples)
            t_k = float(ro.schedule[mb.step])
            step = policy.step(policy.predict(x, t_k, mb_cond), x, ro.schedule, mb.step, s.eta, s.sde_type,
                               prev_sample=x_next)
            loss, ratio = grpo.clipped_loss(step.log_prob, ro.log_probs[idx, mb.step], advantages[idx], g.clip_range)
            if reference is not None:
                with torch.no_grad():
                    ref = reference.step(reference.predict(x, t_k, mb_cond), x, ro.schedule, mb.step, s.eta,
                                         s.sde_type, prev_sample=x_next)
                kl = grpo.kl_to_reference(step.mean, ref.mean, step.std).mean()
                loss = loss + g.kl_weight * kl
                stats["kl"].append(kl.item())
            (loss * len(mb.samples) / window_samples).backward()
            deviation = (ratio.detach() - 1).abs()
            if step_index == 0:
                ratio_dev_first_update = max(ratio_dev_first_update, deviation.max().item())
            stats["loss"].append(loss.item())
            stats["ratio_mean"].append(ratio.mean().item())
            stats["ratio_max_dev"].append(deviation.max().item())
            stats["clip_frac"].append((deviation > g.clip_range).float().mean().item())
        grad_norm = clip_grad_norm(policy.transformer, cfg.train.grad_clip)
        if math.isfinite(grad_norm):
            stats["grad_norm"].append(grad_norm)
            optimizer.step()
            scheduler.step()
            nonfinite_streak = 0
        else:
            skipped += 1
            nonfinite_streak += 1
            logger.warning("optimizer step %d: gradient norm %s, step skipped (%d in a row)", step_index, grad_norm,
                           nonfinite_streak)
        optimizer.zero_grad(set_to_none=True)
        if nonfinite_streak >= cfg.train.max_nonfinite_steps:
            break  # every rank sees the same global norm, so all stop here together
        if ema is not None and math.isfinite(grad_norm):
            update_ema(ema, policy.transformer, cfg.train.ema_decay)
    summary = {key: sum(v) / len(v) for key, v in stats.items() if v}
    summary["ratio_max_dev"] = max(stats["ratio_max_dev"])
    summary["ratio_dev_first_update"] = ratio_dev_first_update
    summary["optimizer_steps"] = len(stats["grad_norm"])
    summary["nonfinite_steps"] = skipped
    summary["nonfinite_streak"] = nonfinite_streak
    return summary


class PhaseTimer:
    """Wall-clock seconds per named phase; waits for the GPU so phases are not blurred."""

    def __init__(self, device: torch.device):
        self.device = device
        self.seconds: dict[str, float] = {}

    def __call__(self, name: str):
        timer = self

        class _Phase:
            def __enter__(self):
                self.start = time.perf_counter()

            def __exit__(self, *exc):
                if timer.device.type == "cuda":
                    torch.cuda.synchronize(timer.device)
                timer.seconds[f"time_{name}"] = time.perf_counter() - self.start

        return _Phase()


def build_optimizer(policy: Policy, cfg: Config):
    t = cfg.train
    params = [p for p in policy.transformer.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=t.lr, betas=(t.adam_beta1, t.adam_beta2), eps=t.adam_eps,
                                  weight_decay=t.weight_decay)
    warmup = t.lr_warmup_steps
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: min(1.0, (step + 1) / warmup) if warmup > 0 else 1.0)
    return optimizer, scheduler


def build_reference(policy: Policy) -> Policy:
    """A frozen copy of the initial policy for the KL penalty; shares everything but the network."""
    reference = copy.copy(policy)
    reference.transformer = copy.deepcopy(policy.transformer).requires_grad_(False).eval()
    return reference


def save_samples(out: Path, iteration: int, videos: torch.Tensor, prompts: list[str],
                 rewards: dict[str, torch.Tensor], cfg: Config) -> None:
    folder = out / "samples"
    folder.mkdir(exist_ok=True)
    for i in range(min(cfg.train.num_saved_samples, videos.shape[0])):
        write_video(folder / f"iter_{iteration:06d}_{i}.mp4", videos[i], cfg.sampling.fps)
        scores = {name: round(float(r[i]), 6) for name, r in rewards.items()}
        append_metrics(folder / "index.jsonl", {"iteration": iteration, "file": f"iter_{iteration:06d}_{i}.mp4",
                                                "prompt": prompts[i], **scores})


@dataclass
class Components:
    """Everything an iteration needs, built once by `setup`."""

    world: World
    policy: Policy
    reference: Policy | None
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scorer: InlineScorer | ServiceScorer
    sampler: PromptSampler
    source: EmbeddingDataset | TinyRandomPrompts | WithImageLatents
    latent_shape: tuple[int, ...]
    ema: dict[str, torch.Tensor] | None = None
    transformer_config: dict | None = None
    tracker: Tracker | None = None  # main rank only
    # Optimizer steps skipped in a row for a non-finite gradient, across iterations.
    nonfinite_streak: int = 0


def setup(cfg: Config) -> Components:
    p, s, t = cfg.parallel, cfg.sampling, cfg.train
    world = init_distributed(p.device, p.sp_size, p.dp_replicate)
    torch.manual_seed(t.seed)
    source = build_prompt_source(cfg)
    policy = build_policy(cfg.model, world.device, source.text_dim, source.pooled_dim)
    reference = build_reference(policy) if cfg.grpo.kl_weight > 0 else None
    transformer_config = diffusers_config(policy.transformer)
    if cfg.model.lora_rank > 0:
        apply_lora(policy.transformer, cfg.model.lora_rank, cfg.model.lora_alpha)
    parallelize(policy, world, cfg)
    if reference is not None:
        parallelize(reference, world, cfg)
    optimizer, scheduler = build_optimizer(policy, cfg)
    sampler = PromptSampler(len(source), t.prompts_per_iteration, world.dp_rank, world.dp_size, t.seed,
                            cfg.data.shuffle)
    latent_shape = policy.latent_shape(s.num_frames, s.height, s.width)
    logger.info("latent shape %s, %d prompts, %d per dp rank per iteration, G=%d", latent_shape, len(source),
                t.prompts_per_iteration, s.group_size)
    ema = init_ema(policy.transformer) if t.ema_decay > 0 else None
    return Components(world, policy, reference, optimizer, scheduler, build_reward_scorer(cfg.reward, world), sampler, source,
                      latent_shape, ema, transformer_config)


def build_prompt_source(cfg: Config) -> EmbeddingDataset | TinyRandomPrompts | WithImageLatents:
    """Precomputed embeddings (data.embeddings_dir), or for the tiny model a prompt file
    encoded by a seeded random text encoder; with data.image_latents_dir, each prompt's
    first-frame latent too."""
    if cfg.data.embeddings_dir:
        source = EmbeddingDataset(cfg.data.embeddings_dir)
    else:
        encoder = TinyTextEncoder(cfg.model.tiny_text_dim, cfg.model.tiny_pooled_dim, cfg.data.max_text_tokens,
                                  seed=cfg.model.init_seed)
        source = TinyRandomPrompts(read_prompt_file(cfg.data.prompts_file)[0], encoder)
    if cfg.data.image_latents_dir:
        return WithImageLatents(source, ImageLatents(cfg.data.image_latents_dir))
    return source


def resume(c: Components, cfg: Config) -> int:
    """Load the checkpoint `train.resume` asks for; returns the first iteration to run.

    A run never starts from scratch over an earlier run's checkpoints (it would overwrite
    them and its metrics): that is an error saying how to start fresh."""
    folder = Path(cfg.train.output_dir) / "checkpoints"
    earlier = sorted(p.name for p in folder.glob("step_*") if p.is_dir()) if folder.is_dir() else []
    path = None
    if cfg.train.resume == "auto":
        path = latest_checkpoint(cfg.train.output_dir)
    elif cfg.train.resume != "never":
        path = Path(cfg.train.resume)
    if path is None:
        if earlier:
            raise ValueError(f"{folder} holds checkpoints of an earlier run ({', '.join(earlier)}) but train.resume="
                             f"{cfg.train.resume!r} found none to resume from; to start fresh, delete {folder.parent} "
                             "or give this run another train.output_dir")
        return 0
    state = load_checkpoint(path, c.policy.transformer, c.optimizer, c.world, c.ema, verify=cfg.checkpoint.verify)
    c.scheduler.load_state_dict(state["scheduler"])
    c.sampler.load_state_dict(state["sampler"])
    return state["iteration"]


def all_finite(model: torch.nn.Module, world: World) -> bool:
    """Every rank's parameter shards are finite (one host sync, one all-reduce)."""
    bad = sum((~torch.isfinite(p.detach())).sum() for p in model.parameters())
    return all_reduce_max(float(bad), world) == 0


def checkpoint(c: Components, cfg: Config, iteration: int) -> None:
    """Save after `iteration` iterations; a non-finite weight is never written."""
    if not all_finite(c.policy.transformer, c.world):
        raise NonFiniteTraining(f"after iteration {iteration - 1} the weights hold NaN or inf; not checkpointing "
                                f"them over {cfg.train.output_dir}/checkpoints (the last checkpoint is intact)")
    trainer_state = {"scheduler": c.scheduler.state_dict(), "sampler": c.sampler.state_dict()}
    save_checkpoint(cfg.train.output_dir, iteration, c.policy.transformer, c.optimizer, trainer_state, c.world,
                    cfg.checkpoint.keep_last, c.ema, c.transformer_config)


def train(cfg: Config) -> Path:
    """Run (or resume) the configured iterations; returns the output folder.

    Raises `Preempted` after checkpointing when SIGTERM or SIGUSR1 arrived before the last
    iteration finished. The reward process, the tracker and the process group are closed
    on every path out.
    """
    out = Path(cfg.train.output_dir)
    with run_folder_lock(out, held=int(os.environ.get("RANK", "0")) == 0):
        c = setup(cfg)
        try:
            run_loop(c, cfg, out)
        finally:
            if c.tracker is not None:
                c.tracker.close()
            c.scorer.close()
            shutdown()
    return out


def start_run(c: Components, cfg: Config, out: Path) -> int:
    """Resume, then on rank 0 write the run config and trim the logs to the resumed
    iteration; returns the first iteration to run."""
    start = resume(c, cfg)
    if c.world.is_main:
        saved = out / "config.yaml"
        if start > 0 and saved.is_file():
            before = (yaml.safe_load(saved.read_text()) or {}).get("sampling", {}).get("group_size")
            if before is not None and before != cfg.sampling.group_size:
                logger.warning("resuming %s with sampling.group_size=%d; it ran with %d until iteration %d",
                               out, cfg.sampling.group_size, before, start)
        saved.write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))
        trim_logs(out, start)
        c.tracker = Tracker(cfg, out, start)
    barrier(c.world)
    return start


def run_loop(c: Components, cfg: Config, out: Path) -> None:
    t = cfg.train
    start = start_run(c, cfg, out)
    held_out = held_out_source(cfg) if cfg.eval.every else None
    preemption = PreemptionFlag()
    preemption.install()
    bar = tqdm(range(start, t.iterations), initial=start, total=t.iterations,
               disable=not (c.world.is_main and t.progress_bar), desc="train", unit="it")
    for iteration in bar:
        metrics = train_iteration(iteration, c, cfg)
        memory = memory_stats(c.world)  # logged, not in metrics.jsonl: it differs between runs
        if c.world.is_main:
            append_metrics(out / "metrics.jsonl", metrics)
            c.tracker.scalars({**metrics, **memory}, iteration)
            bar.set_postfix(reward=f"{metrics['reward_mean']:.4f}", loss=f"{metrics['loss']:.2e}")
            logger.debug("iteration %d: %s", iteration, metrics)
        done = iteration + 1
        if c.nonfinite_streak >= t.max_nonfinite_steps:
            checkpoint(c, cfg, done)
            raise NonFiniteTraining(
                f"{c.nonfinite_streak} optimizer steps in a row had a NaN or inf gradient (train.max_nonfinite_steps="
                f"{t.max_nonfinite_steps}), the last in iteration {iteration}; the weights are the last finite ones, "
                f"checkpointed after iteration {iteration}. Look for the cause in metrics.jsonl (loss, grad_norm, "
                "rewards) before resuming, e.g. with a lower train.lr")
        # A signal during the last iteration changes nothing: the run is complete.
        preempted = preemption.requested(c.world) and done < t.iterations
        every = cfg.checkpoint.every
        if preempted or done == t.iterations or (every and done % every == 0):
            started = time.perf_counter()
            checkpoint(c, cfg, done)
            if c.world.is_main:
                c.tracker.scalars({"time_checkpoint": time.perf_counter() - started}, iteration)
        if preempted:
            logger.warning("signal %s: checkpointed after iteration %d, stopping", preemption.signal, iteration)
            raise Preempted(out)
        if cfg.eval.every and (done % cfg.eval.every == 0 or done == t.iterations):
            evaluate_in_loop(c, cfg, held_out, done)
    if c.world.is_main:
        plot_reward_curve({out.name: read_metrics(out / "metrics.jsonl")}, out / "reward_curve.png")
    barrier(c.world)


def evaluate_in_loop(c: Components, cfg: Config, source, iteration: int) -> None:
    """ODE evaluation of held-out prompts after `iteration` iterations: a line in
    output_dir/eval.jsonl, scalars and a video grid in the logs. Every rank takes part."""
    e = cfg.eval
    started = time.perf_counter()
    count = min(e.num_prompts or len(source), len(source))
    items = eval_items(count, list(range(e.seed, e.seed + e.num_seeds)))
    rows, grid = evaluate_policy(c.policy, source, items, cfg, c.latent_shape, c.scorer, c.world, e.grid_prompts)
    if c.world.is_main:
        record = {"iteration": iteration}
        for name, stats in summarize(rows).items():
            record[f"eval/{name}_mean"] = stats["mean"]
            record[f"eval/{name}_ci95"] = stats["ci95"]
        append_metrics(Path(cfg.train.output_dir) / "eval.jsonl", record)
        c.tracker.scalars({**record, "time_eval": time.perf_counter() - started}, iteration)
        if grid is not None:
            c.tracker.videos("eval/grid", grid, iteration, cfg.sampling.fps)


def masked_mean(values: torch.Tensor, mask: torch.Tensor) -> float:
    """Mean over the masked samples; NaN (null in metrics.jsonl) when there are none."""
    return values[mask].mean().item() if mask.any() else float("nan")


def train_iteration(iteration: int, c: Components, cfg: Config) -> dict:
    s, t = cfg.sampling, cfg.train
    world, policy = c.world, c.policy
    timer = PhaseTimer(world.device)
    start = time.perf_counter()
    indices = c.sampler.next_indices()
    batch_prompts = [c.source.prompts[i] for i in indices for _ in range(s.group_size)]
    cond = c.source.conditioning(indices).repeat_interleave(s.group_size).to(world.device)
    seed_parts = (t.seed, iteration)
    first_sample = world.dp_rank * len(batch_prompts)

    saving = world.is_main and t.sample_every > 0 and iteration % t.sample_every == 0
    submitted, saved_videos = [], []

    def decode_and_submit(batch: slice, final_latents: torch.Tensor) -> None:
        """Each rollout batch is decoded and sent for scoring at once; the reward process
        scores it while the next batch is sampled."""
        start = time.perf_counter()
        videos = decode_videos(policy, final_latents, s.decode_batch_size)
        timer.seconds["time_decode"] = timer.seconds.get("time_decode", 0.0) + time.perf_counter() - start
        submitted.append(c.scorer.submit(videos, batch_prompts[batch]))
        if saving and sum(len(v) for v in saved_videos) < t.num_saved_samples:
            saved_videos.append(videos)

    with timer("rollout"):
        ro = rollout(policy, cond, s.group_size, c.latent_shape, s.num_steps, s.shift, s.eta, s.sde_type,
                     s.rollout_batch_size, seed_parts, world.device, first_sample, s.shared_noise,
                     on_batch=decode_and_submit)
    timer.seconds["time_rollout"] -= timer.seconds["time_decode"]
    with timer("reward"):
        results = [c.scorer.result(handle) for handle in submitted]
        rewards = {name: torch.cat([r[name] for r in results]) for name in results[0]}
        dropped = nonfinite_groups(rewards, batch_prompts, cfg, first_sample)
        # A dropped group keeps its place in the plan (every rank takes the same number of
        # optimizer steps) with reward 0 throughout, hence advantage 0: it adds no gradient.
        rewards = {name: torch.where(dropped, torch.zeros_like(r), r) for name, r in rewards.items()}
        scores = advantages_of(rewards, cfg, world)
    kept = torch.ones(len(batch_prompts), dtype=torch.bool)
    if cfg.grpo.best_of:
        kept = torch.zeros_like(kept)
        kept[grpo.best_of_indices(scores.advantages, s.group_size, cfg.grpo.best_of)] = True
    with timer("train"):
        plan = plan_micro_batches(ro, kept, cfg, seed_parts, first_sample)
        per_step = t.ema_update == "optimizer_step"
        update = update_policy(policy, c.reference, c.optimizer, c.scheduler, ro, cond, scores.advantages, plan, cfg,
                               c.ema if per_step else None, c.nonfinite_streak)
        c.nonfinite_streak = update.pop("nonfinite_streak")
        if c.ema is not None and not per_step and update["optimizer_steps"] > 0:
            update_ema(c.ema, policy.transformer, t.ema_decay)

    if saving:
        videos = torch.cat(saved_videos)[:t.num_saved_samples]
        save_samples(Path(t.output_dir), iteration, videos, batch_prompts, scores.rewards, cfg)
        c.tracker.videos("samples", videos, iteration, s.fps)

    scored = ~dropped
    local = {
        "reward_mean": masked_mean(sum(cfg.reward.weights[n] * r for n, r in scores.rewards.items()), scored),
        **{f"reward/{name}": masked_mean(r, scored) for name, r in scores.rewards.items()},
        "dropped_groups": float(dropped.sum()) / s.group_size,
        "advantage_abs_mean": scores.advantages.abs().mean().item(),
        "zero_std_frac": scores.zero_std_frac,
        **{k: v for k, v in update.items() if k not in ("ratio_max_dev", "ratio_dev_first_update")},
        **timer.seconds,
    }
    metrics = {"iteration": iteration, **all_reduce_mean(local, world),
               **score_stats(scores.normalized, scores.advantages, world)}
    metrics["dropped_groups"] = round(metrics["dropped_groups"] * world.world_size / world.sp_size)  # a count
    metrics["ratio_max_dev"] = all_reduce_max(update["ratio_max_dev"], world)
    metrics["ratio_dev_first_update"] = all_reduce_max(update["ratio_dev_first_update"], world)
    metrics["lr"] = c.scheduler.get_last_lr()[0]
    metrics["time_iteration"] = time.perf_counter() - start
    metrics["samples_per_s"] = len(batch_prompts) * world.dp_size / metrics["time_iteration"]
    return metrics
