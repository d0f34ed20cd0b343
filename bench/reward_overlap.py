"""Iteration time with the reward process scoring while rollout goes on vs in-line scoring.

    python bench/reward_overlap.py

A reward that sleeps (test_sleep, from the plugin tests/reward_plugins.py) as long per
rollout batch as sampling and decoding that batch take:
in-line, rollout and reward add up; with reward.mode=process each batch is scored while the
next is sampled. Prints (rollout + decode + reward wait) for both and the ratio to
max(rollout, reward) (goal: async <= 1.10 x max).
"""

from __future__ import annotations

import os
import statistics
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from fastvideo_grpo.config import load_config  # noqa: E402
from fastvideo_grpo.trainer import setup, train_iteration  # noqa: E402

BATCHES = 8


def sampling_time(metrics: dict) -> float:
    return metrics["time_rollout"] + metrics["time_decode"] + metrics["time_reward"]


def main() -> None:
    with tempfile.TemporaryDirectory() as out:
        base = ["sampling.group_size=4", "sampling.rollout_batch_size=4", f"train.prompts_per_iteration={BATCHES}",
                "train.sample_every=0", "train.progress_bar=false", f"train.output_dir={out}",
                "reward.weights={test_sleep: 1.0}", f"reward.plugins=[{ROOT / 'tests/reward_plugins.py'}]",
                "reward.max_batch=4"]
        cfg = load_config(ROOT / "assets/configs/tiny_t2v.yaml", base + ["reward.mode=inline"])
        os.environ["FVGRPO_TEST_SLEEP"] = "0"
        c = setup(cfg)
        train_iteration(0, c, cfg)
        # Sampling includes decoding: each batch is decoded before it is sent.
        rollout = statistics.median(sampling_time(train_iteration(i, c, cfg)) for i in range(1, 4))
        os.environ["FVGRPO_TEST_SLEEP"] = str(rollout / BATCHES)
        reward = rollout  # BATCHES calls of rollout / BATCHES seconds
        results = {}
        for mode in ("inline", "process"):
            cfg = load_config(ROOT / "assets/configs/tiny_t2v.yaml", base + [f"reward.mode={mode}"])
            c = setup(cfg)
            train_iteration(0, c, cfg)
            results[mode] = statistics.median(sampling_time(train_iteration(i, c, cfg)) for i in range(1, 4))
            c.scorer.close()
    bound = max(rollout, reward)
    print(f"rollout + decode {rollout:.3f} s, reward {reward:.3f} s, over {BATCHES} rollout batches")
    print(f"in-line: {results['inline']:.3f} s = {results['inline'] / bound:.2f} x max(rollout, reward)")
    print(f"reward process: {results['process']:.3f} s = {results['process'] / bound:.2f} x max(rollout, reward) "
          "(goal <= 1.10)")


if __name__ == "__main__":
    main()
