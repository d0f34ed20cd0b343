"""The training loop: prompts -> rollout -> decode -> score -> advantages -> update -> log."""

from __future__ import annotations

import logging
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tqdm import tqdm

from fastvideo_grpo.algorithms.advantages import advantages_of, kept_samples, nonfinite_groups, record_scores
from fastvideo_grpo.algorithms.learner import (Learner, RunProgress, build_old, build_optimizer, fill_frozen,
                                               frozen_copy, moved_copies, refresh_lr, trained_plan)
from fastvideo_grpo.algorithms.registry import Algorithm, algorithm_of
from fastvideo_grpo.checkpoint import diffusers_config, mark_best
from fastvideo_grpo.training.run_state import NonFiniteTraining, resume_run, save_run
from fastvideo_grpo.config import Config
from fastvideo_grpo.data.embeddings import EmbeddingDataset, TinyRandomPrompts, WithImageLatents
from fastvideo_grpo.data.prompts import PromptSampler
from fastvideo_grpo.data.sources import build_prompt_source
from fastvideo_grpo.training.early_stop import EarlyStop
from fastvideo_grpo.algorithms.ema import init_ema
from fastvideo_grpo.training.evaluation import evaluate_in_loop, held_out_source
from fastvideo_grpo.flops import throughput
from fastvideo_grpo.training.health import HealthMonitor, group_diversity, record_rewards
from fastvideo_grpo.metrics import IterationStats, finish_iteration_stats
from fastvideo_grpo.models import build_policy, check_model_config, model_family
from fastvideo_grpo.models.lora import apply_lora
from fastvideo_grpo.training.outputs import append_metrics, plot_reward_curve, read_metrics, save_samples
from fastvideo_grpo.parallel import World, barrier, init_distributed, shutdown
from fastvideo_grpo.parallel.fsdp import parallelize, rollout_gathering
from fastvideo_grpo.parallel.loading import loading_turn
from fastvideo_grpo.parallel.sp_share import gather_sp_scores, sp_rows
from fastvideo_grpo.training.preemption import Preempted, PreemptionFlag
from fastvideo_grpo.rewards import check_pairwise_use, check_reward_config, pairwise_models
from fastvideo_grpo.rewards.scorers import InlineScorer, ServiceScorer, build_reward_scorer
from fastvideo_grpo.sampling.rollout import batch_slices, decode_videos, rollout
from fastvideo_grpo.training.run_folder import run_folder_lock, trim_logs, write_run_config
from fastvideo_grpo.training.run_config import check_same_on_ranks, warn_of_waste
from fastvideo_grpo.training.tracking import IterationLog, PhaseTimer, Tracker, record_memory

logger = logging.getLogger(__name__)


@dataclass(kw_only=True)
class Components(Learner):
    """Everything an iteration needs, built once by `setup`: the learner and what feeds it."""

    world: World
    algorithm: Algorithm
    scorer: InlineScorer | ServiceScorer
    sampler: PromptSampler
    source: EmbeddingDataset | TinyRandomPrompts | WithImageLatents
    latent_shape: tuple[int, ...]
    transformer_config: dict | None = None
    tracker: Tracker | None = None  # a no-op off the main rank
    health: HealthMonitor | None = None  # likewise
    preemption: PreemptionFlag = field(default_factory=PreemptionFlag)  # its handlers live as long as the loop


def setup(cfg: Config) -> Components:
    p, s, t = cfg.parallel, cfg.sampling, cfg.train
    check_model_config(cfg)  # before any model is built or process started
    check_reward_config(cfg.reward)
    check_pairwise_use(cfg)
    algorithm = algorithm_of(cfg)
    world = init_distributed(p.device, p.sp_size, p.dp_replicate, p.timeout_minutes,
                             needs_cuda=cfg.model.size != "tiny", watchdog_seconds=p.watchdog_seconds)
    check_same_on_ranks(cfg, world)
    torch.manual_seed(t.seed)
    source = build_prompt_source(cfg)
    wants_reference = algorithm.reference_weight(cfg) > 0
    with loading_turn(world, p.loaders_per_node):  # the whole network in host memory until it is sharded
        policy = build_policy(cfg.model, world.device, source.text_dim, source.pooled_dim)
        # A reference that resets to the policy copies its LoRA adapters too, so it is built after them.
        # Frozen copies are shapes on the meta device until the policy is sharded, then filled shard to shard.
        reference = frozen_copy(policy) if wants_reference and not algorithm.resets_reference(cfg) else None
        transformer_config = diffusers_config(policy.transformer)
        if cfg.model.lora_rank > 0:
            apply_lora(policy.transformer, cfg.model.lora_rank, cfg.model.lora_alpha,
                       model_family(cfg.model).lora_targets)
        if wants_reference and reference is None:
            reference = frozen_copy(policy)
        old = build_old(policy, cfg.model) if algorithm.old_policy else None
        parallelize(policy, world, cfg)
    for frozen in (reference, old):
        if frozen is not None and frozen.transformer is not policy.transformer:  # not a second adapter
            parallelize(frozen, world, cfg)
            fill_frozen(frozen, policy)
    progress = RunProgress()
    optimizer, scheduler = build_optimizer(policy, cfg, progress)
    sampler = PromptSampler(len(source), t.prompts_per_iteration, world.dp_rank, world.dp_size, t.seed,
                            cfg.data.shuffle)
    latent_shape = policy.latent_shape(s.num_frames, s.height, s.width)
    logger.info("latent shape %s, %d prompts; global batch %d prompts per dp rank x G=%d x %d dp ranks = %d videos "
                "per iteration", latent_shape, len(source), t.prompts_per_iteration, s.group_size, world.dp_size,
                t.prompts_per_iteration * s.group_size * world.dp_size)
    ema = init_ema(policy.transformer) if t.ema_decay > 0 else None
    return Components(policy=policy, reference=reference, old=old, optimizer=optimizer, scheduler=scheduler, ema=ema,
                      progress=progress,
                      kl_weight=algorithm.reference_weight(cfg), world=world, algorithm=algorithm,
                      scorer=build_reward_scorer(cfg.reward, world), sampler=sampler, source=source,
                      latent_shape=latent_shape, transformer_config=transformer_config)


def train(cfg: Config) -> Path:
    """Run (or resume) the configured iterations; returns the output folder.

    Raises `Preempted` after checkpointing when SIGTERM, SIGUSR1, SIGINT or SIGHUP arrived
    before the last iteration finished. The reward process, the tracker and the process
    group are closed, and the signal handlers restored, on every path out.
    """
    out = Path(cfg.train.output_dir)
    with run_folder_lock(out, held=int(os.environ.get("RANK", "0")) == 0):
        c = None
        try:
            c = setup(cfg)
            run_loop(c, cfg, out)
        finally:
            if c is not None:
                c.preemption.restore()
                if c.tracker is not None:
                    c.tracker.close()
                c.scorer.close()
            shutdown()
    return out


def start_run(c: Components, cfg: Config, out: Path) -> int:
    """Resume, then on rank 0 write the run config and trim the logs to the resumed
    iteration; returns the first iteration to run."""
    start = resume_run(c, c.sampler, c.world, cfg, moved_copies(c, c.algorithm.resets_reference(cfg)))
    if c.world.is_main:
        write_run_config(out, cfg)
        trim_logs(out, start)
    c.tracker = Tracker(cfg, out, start, enabled=c.world.is_main)
    c.health = HealthMonitor(cfg.health, out if c.world.is_main else None, start, cfg.reward.weights)
    barrier(c.world)
    return start


def run_loop(c: Components, cfg: Config, out: Path) -> None:
    t = cfg.train
    start = start_run(c, cfg, out)
    held_out = held_out_source(cfg) if cfg.eval.every else None
    if c.world.is_main:
        warn_of_waste(cfg, len(c.source), len(held_out) if held_out is not None else None, c.world.dp_size)
    # Every rank keeps the same state (metrics and evaluations are reduced), so all stop together.
    early_stop = EarlyStop(cfg, out, start)
    if start < t.iterations and (reason := early_stop.reason()) is not None:
        logger.warning("this run stopped early after iteration %d: %s; to train on, loosen or turn off "
                       "eval.early_stop_*", start - 1, reason)
        c.health.stopped_early(start - 1, reason)
        start = t.iterations
    if start == 0 and cfg.eval.every and cfg.eval.at_start:
        # The untrained policy's score is the baseline of the curves and of the held-out health
        # check; it is no candidate for the best evaluation (that would checkpoint the base model).
        _, rows = evaluate_in_loop(c.policy, held_out, cfg, c.latent_shape, c.scorer, c.world, c.tracker, 0)
        c.health.observe_eval(0, rows)
    preemption = c.preemption
    preemption.install()
    show_bar = c.world.is_main and t.progress_bar and sys.stderr.isatty()
    bar = tqdm(range(start, t.iterations), initial=start, total=t.iterations, disable=not show_bar, desc="train",
               unit="it")
    lines = IterationLog(start, t.iterations) if c.world.is_main and not show_bar else None
    resets = c.algorithm.resets_reference(cfg)
    for iteration in bar:
        metrics = train_iteration(iteration, c, cfg)
        c.algorithm.end_iteration(c, cfg, iteration, metrics)
        early_stop.observe_iteration(metrics)
        # Memory goes to the logs, not to metrics.jsonl: it differs between runs.
        logged = {k: metrics.pop(k) for k in list(metrics) if k.startswith("memory/")}
        if c.world.is_main:
            append_metrics(out / "metrics.jsonl", metrics)
            c.health.observe(iteration, metrics)
            bar.set_postfix(reward=f"{metrics['reward_mean']:.4f}", loss=f"{metrics['loss']:.2e}")
            if lines is not None:
                logger.info("%s", lines.line(iteration, metrics))
            logger.debug("iteration %d: %s", iteration, metrics)
        c.tracker.scalars({**metrics, **logged}, iteration)
        done = iteration + 1
        if c.nonfinite_streak >= t.max_nonfinite_steps:
            save_run(c, c.sampler, c.world, cfg, done, c.transformer_config, moved_copies(c, resets))
            raise NonFiniteTraining(
                f"{c.nonfinite_streak} optimizer steps in a row had a NaN or inf gradient (train.max_nonfinite_steps="
                f"{t.max_nonfinite_steps}), the last in iteration {iteration}; the weights are the last finite ones, "
                f"checkpointed after iteration {iteration}. Look for the cause in metrics.jsonl (loss, grad_norm, "
                "rewards) before resuming, e.g. with a lower train.lr")
        # A signal during the last iteration changes nothing: the run is complete.
        preempted = preemption.requested(c.world) and done < t.iterations
        is_best = False
        if not preempted and cfg.eval.every and (done % cfg.eval.every == 0 or done == t.iterations):
            record, rows = evaluate_in_loop(c.policy, held_out, cfg, c.latent_shape, c.scorer, c.world, c.tracker,
                                            done)
            is_best = early_stop.observe_eval(record) and early_stop.tracks_best
            c.health.observe_eval(done, rows)
        stop_reason = early_stop.reason() if done < t.iterations else None
        every = cfg.checkpoint.every
        if preempted or is_best or stop_reason or done == t.iterations or (every and done % every == 0):
            started = time.perf_counter()
            save_run(c, c.sampler, c.world, cfg, done, c.transformer_config, moved_copies(c, resets))
            c.tracker.scalars({"time_checkpoint": time.perf_counter() - started}, iteration)
        if is_best:
            if c.world.is_main:
                mark_best(out, done)
            barrier(c.world)
        if preempted:
            logger.warning("signal %s: checkpointed after iteration %d, stopping", preemption.signal, iteration)
            raise Preempted(out, preemption.signal)
        if stop_reason:
            logger.warning("stopping early after iteration %d: %s", iteration, stop_reason)
            c.health.stopped_early(iteration, stop_reason)
            break
    c.health.finish()
    if c.world.is_main:
        plot_reward_curve({out.name: read_metrics(out / "metrics.jsonl")}, out / "reward_curve.png")
    barrier(c.world)


def train_iteration(iteration: int, c: Components, cfg: Config) -> dict:
    """Sample groups, score them, update the policy; returns the iteration's metrics, reduced
    over ranks (every rank returns the same)."""
    s, t = cfg.sampling, cfg.train
    world, policy, algorithm = c.world, c.policy, c.algorithm
    timer, stats = PhaseTimer(world.device), IterationStats(world.device)
    start = time.perf_counter()
    c.progress.fraction = iteration / t.iterations
    refresh_lr(c.scheduler)
    indices = c.sampler.next_indices()
    batch_prompts = [c.source.prompts[i] for i in indices for _ in range(s.group_size)]
    cond = c.source.conditioning(indices).repeat_interleave(s.group_size).to(world.device)
    seed_parts = (t.seed, iteration)
    first_sample = world.dp_rank * len(batch_prompts)

    saving = world.is_main and t.sample_every > 0 and iteration % t.sample_every == 0
    submitted, saved_videos, saved_rows = [], [], []
    # Sequence-parallel ranks hold the same samples: each decodes and scores its share.
    mine = sp_rows(len(batch_prompts), s.group_size if pairwise_models(cfg.reward) else 1, world)

    def decode_and_submit(batch: slice, final_latents: torch.Tensor) -> None:
        """Each rollout batch is decoded and sent for scoring at once; the reward process
        scores it while the next batch is sampled. A reward process gets each decode batch
        as soon as it is decoded, so that it scores the first while the rest decode and the
        last batch's scoring left after the rollout is one decode batch's."""
        rows = torch.arange(batch.start, batch.stop)[mine[batch]]
        if not len(rows):
            return
        latents = final_latents[(rows - batch.start).to(final_latents.device)]
        chunks = batch_slices(len(rows), s.decode_batch_size) if c.scorer.streams else [slice(None)]
        for chunk in chunks:
            with timer("decode", accumulate=True):
                videos = decode_videos(policy, latents[chunk], s.decode_batch_size)
            submitted.append((rows[chunk], c.scorer.submit(videos, [batch_prompts[i] for i in rows[chunk]])))
            if saving and sum(len(v) for v in saved_videos) < t.num_saved_samples:
                saved_videos.append(videos)
                saved_rows.append(rows[chunk])

    timer.seconds["time_decode"] = 0.0  # also on an sp rank whose share is empty: every rank logs the same names
    with timer("rollout"):
        plan = trained_plan(algorithm.step_plan(cfg, iteration), policy, s)
        sampling_policy = c.old if algorithm.old_policy else policy
        with rollout_gathering(sampling_policy.transformer, cfg, world.device):
            ro = rollout(sampling_policy, cond, s, c.latent_shape, seed_parts, world.device, first_sample, plan,
                         decode_and_submit, keep_means=algorithm.keep_means(cfg),
                         keep_trajectory=algorithm.keep_trajectory)
    timer.seconds["time_rollout"] -= timer.seconds["time_decode"]
    with timer("reward"):
        results = [(rows, c.scorer.result(handle)) for rows, handle in submitted]
        rewards = gather_sp_scores(results, len(batch_prompts), world)
        dropped = nonfinite_groups(rewards, batch_prompts, cfg, first_sample)
        # A dropped group keeps its place in the plan (every rank takes the same number of
        # optimizer steps) with reward 0 throughout, hence advantage 0: it adds no gradient.
        rewards = {name: torch.where(dropped, torch.zeros_like(r), r) for name, r in rewards.items()}
        scores = advantages_of(rewards, cfg, world)
    kept = kept_samples(scores.advantages, cfg)
    with timer("train"):
        algorithm.update(c, ro, cond, scores.advantages, kept, cfg, stats, iteration, seed_parts, first_sample)

    if saving:
        videos, rows = torch.cat(saved_videos)[:t.num_saved_samples], torch.cat(saved_rows)[:t.num_saved_samples]
        save_samples(Path(t.output_dir), iteration, videos, [batch_prompts[i] for i in rows],
                     {name: r[rows] for name, r in scores.rewards.items()}, cfg)
        c.tracker.videos("samples", videos, iteration, s.fps)

    record_scores(stats, scores, dropped, cfg)
    record_rewards(stats, scores.rewards, cfg.reward.weights, s.group_size)
    stats.mean("group_diversity", group_diversity(ro.scored_latents, s.group_size))
    stats.total("transformer_forwards_rollout", ro.forward_rows)
    stats.total("videos_decoded", sum(len(rows) for rows, _ in submitted))
    stats.total("videos_scored", sum(len(next(iter(scored.values()))) for _, scored in results))
    for name, seconds in timer.seconds.items():
        stats.mean(name, seconds)
    record_memory(stats, world.device)
    metrics = {"iteration": iteration, **stats.reduce(world)}
    finish_iteration_stats(metrics, world)
    metrics["lr"] = c.scheduler.get_last_lr()[0]
    metrics.update(algorithm.iteration_metrics(c))
    metrics["time_iteration"] = time.perf_counter() - start
    metrics["samples_per_s"] = len(batch_prompts) * world.dp_size / metrics["time_iteration"]
    metrics.update(throughput(cfg, policy.transformer, c.latent_shape, policy.text_tokens(cond), metrics, world))
    return metrics
