"""Is the run healthy? Per-iteration diagnostics (added to the iteration's statistics, on
the device) and warnings for the field's common failures: flat groups, an exploding
update, a saturated clip, a ratio that is not 1 before the first update, diversity
collapsing while the reward rises (reward hacking), skipped non-finite steps, and a held-out
reward falling below the run's first evaluation (an untrained one: reward hacking seen on the
held-out prompts; a trained one: over-fitting).

A warning is logged once when its condition starts (again only after it cleared), with the
knob to turn, and recorded in output_dir/health.json with the iterations it held.
"""

from __future__ import annotations

import json
import logging
import math
import statistics
from pathlib import Path
from statistics import NormalDist

import torch

from fastvideo_grpo.config import HealthConfig
from fastvideo_grpo.metrics import IterationStats
from fastvideo_grpo.stats import delta_ci
from fastvideo_grpo.training.evaluation import reward_names

logger = logging.getLogger(__name__)

HEALTH = "health.json"
# Per-sample scores of each in-loop evaluation (training/evaluation.py writes them).
EVAL_SCORES = "eval_scores.jsonl"


def group_diversity(latents: torch.Tensor, group_size: int) -> torch.Tensor:
    """Mean pairwise RMS distance between the samples of a group, averaged over groups: 0
    when every sample of each group is the same."""
    x = latents.detach().float().flatten(1)
    groups = x.view(-1, group_size, x.shape[1])
    distances = torch.cdist(groups, groups) / math.sqrt(x.shape[1])  # [groups, G, G], zero diagonal
    return (distances.sum(dim=(1, 2)) / (group_size * (group_size - 1))).mean()


def record_rewards(stats: IterationStats, rewards: dict[str, torch.Tensor], weights: dict[str, float],
                   group_size: int) -> None:
    """The spread of the weighted reward within groups, and the correlation between each
    pair of rewards over the samples (0 where one is constant)."""
    total = sum(weights[name] * r for name, r in rewards.items()).float()
    stats.mean("reward_group_std", total.view(-1, group_size).std(dim=1).mean())
    names = sorted(rewards)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            x, y = rewards[a].float() - rewards[a].float().mean(), rewards[b].float() - rewards[b].float().mean()
            denominator = x.norm() * y.norm()
            stats.mean(f"reward_corr/{a}__{b}", (x @ y / denominator) if denominator > 0 else 0.0)


class HealthMonitor:
    """Watches each iteration's metrics (main rank: `folder` given; elsewhere a no-op).

    A resumed run replays the metrics of the iterations before `start`, and the evaluations
    up to it, silently, so its baselines and warnings continue as if it had not stopped."""

    def __init__(self, cfg: HealthConfig, folder: Path | None, start: int = 0,
                 weights: dict[str, float] | None = None):
        self.cfg, self.folder = cfg, folder
        self.weights = weights  # of the rewards in the held-out score (None: all, weight 1)
        self.rows: list[dict] = []
        self.active: dict[str, bool] = {}
        self.fired: dict[str, dict] = {}
        self.early_stop: dict | None = None
        self.zero_std_streak = 0
        self.baseline: tuple[int, list[dict]] | None = None  # the first evaluation: (iteration, rows)
        if folder is not None and start > 0:
            from fastvideo_grpo.training.outputs import read_metrics

            # The logs are trimmed to the resumed iteration by now (run_folder.trim_logs). The
            # held-out warning has its own stream: replaying it after the iterations changes nothing.
            for row in read_metrics(folder / "metrics.jsonl"):
                if row["iteration"] < start:
                    self.observe(row["iteration"], row, quiet=True)
            for done, rows in rows_by_iteration(read_metrics(folder / EVAL_SCORES)).items():
                if done <= start:
                    self.observe_eval(done, rows, quiet=True)

    def observe(self, iteration: int, metrics: dict, quiet: bool = False) -> list[str]:
        """Check one iteration; returns the warnings that started at it."""
        if self.folder is None:
            return []
        started = self._update(iteration, self._conditions(metrics), quiet)
        self.rows.append(metrics)
        return started

    def observe_eval(self, iteration: int, rows: list[dict], quiet: bool = False) -> list[str]:
        """Check one held-out evaluation (its per-sample rows) against the run's first one;
        returns the warnings that started at it."""
        if self.folder is None or not rows:
            return []
        if self.baseline is None:
            self.baseline = (iteration, rows)
            return []
        return self._update(iteration, {"held_out_regression": self._held_out_regression(rows)}, quiet)

    def _update(self, iteration: int, conditions: dict[str, str | None], quiet: bool) -> list[str]:
        started = []
        for name, message in conditions.items():
            if message is not None and not self.active.get(name):
                started.append(name)
                entry = self.fired.setdefault(name, {"first_iteration": iteration, "message": message, "episodes": 0,
                                                     "iterations": 0})
                entry["episodes"] += 1
                if not quiet:
                    logger.warning("health (iteration %d): %s", iteration, message)
            if message is not None:
                self.fired[name]["iterations"] += 1
                self.fired[name]["last_iteration"] = iteration
            self.active[name] = message is not None
        if started and not quiet:
            self.write()
        return started

    def _conditions(self, m: dict) -> dict[str, str | None]:
        h, rows = self.cfg, self.rows
        found: dict[str, str | None] = {}
        dev = m.get("ratio_dev_first_update", 0.0)
        found["ratio_first_update"] = None if not dev > h.ratio_tolerance else (
            f"|ratio - 1| before the first optimizer step is {dev:.2e} (> health.ratio_tolerance={h.ratio_tolerance}): "
            "the stored log-probs are not the old policy's. Training micro-batches must mirror the rollout batches "
            "(sampling.rollout_batch_size 1, or every sample kept and train.gradient_accumulation_steps a multiple of "
            "it); in bf16 another batch composition changes the numbers (model.dtype fp32 tells which)")
        self.zero_std_streak = self.zero_std_streak + 1 if m.get("zero_std_frac", 0.0) > h.zero_std_frac else 0
        found["flat_groups"] = None if self.zero_std_streak < h.zero_std_iterations else (
            f"for {self.zero_std_streak} iterations more than {h.zero_std_frac:.0%} of the groups had equal rewards "
            f"(zero_std_frac {m['zero_std_frac']:.2f}): they give no advantage. Raise sampling.eta or "
            "sampling.group_size, or use a reward that separates the samples (is it constant?)")
        earlier = [r["grad_norm"] for r in rows if math.isfinite(r.get("grad_norm", math.nan))]
        norm = m.get("grad_norm", math.nan)
        median = statistics.median(earlier) if len(earlier) >= h.window else None
        # A median of 0 (no advantage, no gradient) is no scale to compare against.
        found["exploding_update"] = None if not median or not norm > h.grad_norm_factor * median else (
            f"grad_norm {norm:.3g} is {norm / median:.0f}x the run's median {median:.3g}: the update is exploding. "
            "Lower train.lr (DanceGRPO trains at 5e-6 to 2e-5) or train.grad_clip, or raise train.lr_warmup_steps")
        clip = m.get("clip_frac", 0.0)
        found["clip_saturated"] = None if not clip > h.clip_frac else (
            f"{clip:.0%} of the ratios were clipped (> health.clip_frac={h.clip_frac}): the policy moves further per "
            "step than grpo.clip_range allows and those samples give no gradient. Lower train.lr or raise "
            "grpo.clip_range")
        found["reward_hacking"] = self._diversity_collapse(m)
        skipped = m.get("nonfinite_steps", 0)
        found["nonfinite_steps"] = None if not skipped > 0 else (
            f"{skipped:.0f} optimizer step(s) had a NaN or inf gradient and were skipped (weights unchanged); "
            "train.max_nonfinite_steps in a row stop the run. Look at loss and grad_norm; lower train.lr")
        return found

    def _diversity_collapse(self, m: dict) -> str | None:
        w = self.cfg.window
        rows = [r for r in self.rows + [m] if "group_diversity" in r]
        if len(rows) < 2 * w:
            return None
        base_div = statistics.mean(r["group_diversity"] for r in rows[:w])
        recent_div = statistics.mean(r["group_diversity"] for r in rows[-w:])
        base_reward = statistics.mean(r["reward_mean"] for r in rows[:w])
        recent_reward = statistics.mean(r["reward_mean"] for r in rows[-w:])
        if base_div <= 0 or recent_div >= self.cfg.diversity_fraction * base_div or recent_reward <= base_reward:
            return None
        return (f"group diversity fell to {recent_div / base_div:.0%} of its first {w} iterations' while the reward "
                f"rose from {base_reward:.3f} to {recent_reward:.3f}: the policy may be hacking the reward (the "
                "samples of a prompt converge). Add a KL penalty (grpo.kl_weight), lower train.lr, add a second "
                "reward, and look at the samples")

    def _held_out_regression(self, rows: list[dict]) -> str | None:
        first, base = self.baseline
        confidence = self.cfg.held_out_confidence
        # The one-sided bound at `confidence` from the two-sided 95% interval of the paired difference.
        scale = NormalDist().inv_cdf(confidence) / NormalDist().inv_cdf(0.975)
        fallen = {True: [], False: []}  # trained (weighted) or only reported
        for name in reward_names(rows[0]):
            if name not in base[0]:
                continue
            delta, _ = delta_ci(base, rows, name)
            bound = delta["mean"] + scale * delta["ci95"]
            if bound < 0:
                before = statistics.mean(r[name] for r in base)
                trained = bool(self.weights.get(name)) if self.weights is not None else True
                fallen[trained].append(f"{name} {before:.3f} -> {before + delta['mean']:.3f} "
                                       f"({delta['mean']:+.3f}, bound {bound:+.3f})")
        if not fallen[True] and not fallen[False]:
            return None
        found = [f"since the evaluation after {first} iterations (paired over {len(rows)} samples, one-sided "
                 f"{confidence:.1%} bound below 0)"]
        if fallen[False]:
            found.append(f"held-out rewards that are not trained fell: {'; '.join(fallen[False])}. The policy may be "
                         "trading them for what it is rewarded on (reward hacking): weight them in reward.weights, "
                         "add a KL penalty (grpo.kl_weight / nft.kl_weight) or lower train.lr, and look at the samples")
        if fallen[True]:
            found.append(f"trained rewards fell on the held-out prompts: {'; '.join(fallen[True])}. Training is "
                         "making the policy worse beyond its training prompts (over-fitting them, or too "
                         "large an update): lower train.lr, add a KL penalty, or keep the best evaluation "
                         "(eval.early_stop_patience)")
        return "; ".join(found)

    def stopped_early(self, iteration: int, reason: str) -> None:
        self.early_stop = {"iteration": iteration, "reason": reason}
        self.write()

    def summary(self) -> dict:
        from fastvideo_grpo.training.early_stop import held_out_score

        best = None
        if self.folder is not None and (self.folder / "eval.jsonl").is_file():
            from fastvideo_grpo.training.outputs import read_metrics

            evals = read_metrics(self.folder / "eval.jsonl")
            weights = self.weights or {k[len("eval/"):-len("_mean")]: 1.0 for k in (evals[0] if evals else {})
                                       if k.endswith("_mean")}
            scored = [(held_out_score(r, weights), r) for r in evals if r["iteration"] > 0]
            scored = [(score, r) for score, r in scored if score is not None]
            if scored:
                best = max(scored, key=lambda pair: pair[0])[1]
        return {"fired": self.fired, "iterations": len(self.rows), "best_eval": best, "early_stop": self.early_stop}

    def write(self) -> None:
        if self.folder is None:
            return
        tmp = self.folder / f".{HEALTH}.tmp"
        tmp.write_text(json.dumps(self.summary(), indent=1))
        tmp.replace(self.folder / HEALTH)

    def finish(self) -> None:
        """The end-of-run summary: on the console and in health.json."""
        if self.folder is None:
            return
        self.write()
        summary = self.summary()
        if not self.fired:
            logger.info("health: no warning fired in %d iterations", summary["iterations"])
        for name, entry in self.fired.items():
            logger.warning("health: %s fired at iteration %d (%d iterations in %d episodes): %s", name,
                           entry["first_iteration"], entry["iterations"], entry["episodes"], entry["message"])
        if self.early_stop is not None:
            logger.warning("health: stopped early after iteration %d: %s", self.early_stop["iteration"],
                           self.early_stop["reason"])
        if summary["best_eval"] is not None:
            logger.info("health: best held-out evaluation at iteration %d: %s", summary["best_eval"]["iteration"],
                        {k: round(v, 4) for k, v in summary["best_eval"].items() if k != "iteration"})


def rows_by_iteration(rows: list[dict]) -> dict[int, list[dict]]:
    """eval_scores.jsonl's rows grouped by the evaluation they belong to, without the key."""
    grouped: dict[int, list[dict]] = {}
    for row in rows:
        grouped.setdefault(row["iteration"], []).append({k: v for k, v in row.items() if k != "iteration"})
    return grouped
