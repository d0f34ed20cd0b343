"""Early stop on the held-out evaluation (and on collapsing group diversity), and which
evaluation was the best.

The held-out score is the reward-weighted sum of the evaluation's per-reward means, the
quantity training maximises. A run stops, with a checkpoint, once that score has been more
than `eval.early_stop_margin` below its best for `eval.early_stop_patience` evaluations in a
row, or once the mean group diversity of the last `health.window` iterations falls below
`eval.early_stop_diversity` of the first `health.window` iterations'. The state is rebuilt
from eval.jsonl and metrics.jsonl on resume, so a resumed run counts on.
"""

from __future__ import annotations

import statistics
from pathlib import Path

from fastvideo_grpo.config import Config


def held_out_score(record: dict, weights: dict[str, float]) -> float | None:
    """sum_k w_k * eval/<k>_mean over the weighted rewards the record holds (None: none)."""
    found = [(w, record[f"eval/{name}_mean"]) for name, w in weights.items() if f"eval/{name}_mean" in record]
    return sum(w * mean for w, mean in found) if found else None


class EarlyStop:
    def __init__(self, cfg: Config, folder: Path | None = None, start: int = 0):
        e = cfg.eval
        self.patience, self.margin, self.diversity_fraction = e.early_stop_patience, e.early_stop_margin, \
            e.early_stop_diversity
        self.weights, self.window = cfg.reward.weights, cfg.health.window
        # Each new best evaluation is checkpointed and marked only when early stop is on:
        # otherwise the run's checkpoints stay as checkpoint.every makes them.
        self.tracks_best = e.every > 0 and bool(self.patience or self.diversity_fraction)
        self.best: float | None = None
        self.best_iteration: int | None = None
        self.below = 0  # evaluations in a row more than `margin` below the best
        self.diversity: list[float] = []
        if folder is not None and start > 0:
            from fastvideo_grpo.training.outputs import read_metrics

            # The logs are trimmed to the resumed iteration by now (run_folder.trim_logs).
            for name, observe in (("metrics.jsonl", self.observe_iteration), ("eval.jsonl", self.observe_eval)):
                if (folder / name).is_file():
                    for row in read_metrics(folder / name):
                        observe(row)

    def observe_eval(self, record: dict) -> bool:
        """Take one evaluation (its eval.jsonl line); returns whether it is the best so far.
        The untrained policy's (eval.at_start, iteration 0) is no candidate."""
        score = held_out_score(record, self.weights)
        if score is None or record["iteration"] == 0:
            return False
        if self.best is None or score > self.best:
            self.best, self.best_iteration, self.below = score, record["iteration"], 0
            return True
        self.below = self.below + 1 if score < self.best - self.margin else 0
        return False

    def observe_iteration(self, metrics: dict) -> None:
        if "group_diversity" in metrics:
            self.diversity.append(metrics["group_diversity"])

    def reason(self) -> str | None:
        """Why the run should stop now, or None."""
        if self.patience and self.below >= self.patience:
            return (f"the held-out reward has been more than eval.early_stop_margin={self.margin} below its best "
                    f"({self.best:.4f}, after iteration {self.best_iteration}) for {self.below} evaluations "
                    f"(eval.early_stop_patience={self.patience})")
        w = self.window
        if self.diversity_fraction and len(self.diversity) >= 2 * w:
            start, recent = statistics.mean(self.diversity[:w]), statistics.mean(self.diversity[-w:])
            if start > 0 and recent < self.diversity_fraction * start:
                return (f"group diversity fell to {recent / start:.0%} of its first {w} iterations' "
                        f"(eval.early_stop_diversity={self.diversity_fraction})")
        return None
