"""Iteration time with the reward process scoring while rollout goes on vs in-line scoring.

    python bench/reward_overlap.py [--rollout-batch-size 4] [--decode-batch-size 1]

A reward that sleeps (test_sleep_per_video, from the plugin tests/reward_plugins.py) per
video so that scoring all of an iteration's videos takes as long as sampling and decoding
them: in-line, rollout and reward add up; with reward.mode=process each decode batch is
scored while the next is decoded and the next rollout batch sampled. Prints (rollout +
decode + reward wait) for both and the ratio to max(rollout, reward) (goal: async <= 1.10
x max), and the floor of that ratio: no scoring can start before the first rollout batch
and its first decode batch are done, and all scoring takes as long as the rollout. Each of
`--repeats` measurements times rollout + decode alone, then in-line and process scoring
with a reward as long as that, so that the machine's load drifts into all three alike.

The process ratio's rollout is the one measured in the same iteration (its rollout +
decode, without the wait): the tiny VAE's decode time moves by +-15% from one iteration to
the next here, and against the rollout of another iteration a slower one would count as
overlap lost while a faster one is hidden by the reward's floor. Whether the reward
process slows the rollout is printed beside it: rollout + decode beside the process over
rollout + decode alone; and the ratio against the rollout alone, for comparison.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from fastvideo_grpo.config import load_config  # noqa: E402
from fastvideo_grpo.rewards.scorers import build_reward_scorer  # noqa: E402
from fastvideo_grpo.training.trainer import setup, train_iteration  # noqa: E402

PROMPTS, GROUP = 8, 4


def sampling_time(metrics: dict) -> float:
    return metrics["time_rollout"] + metrics["time_decode"] + metrics["time_reward"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rollout-batch-size", type=int, default=4)
    parser.add_argument("--decode-batch-size", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=5, help="measurements per mode (median)")
    args = parser.parse_args()
    torch.set_num_threads(1)  # the trainer on one core, the reward process's threads on the other
    samples = PROMPTS * GROUP
    rollout_batches = -(-samples // args.rollout_batch_size)
    rows: dict[str, list[float]] = {"rollout": [], "decode": [], "inline": [], "process": [], "beside": []}
    with tempfile.TemporaryDirectory() as out:
        base = [f"sampling.group_size={GROUP}", f"sampling.rollout_batch_size={args.rollout_batch_size}",
                f"sampling.decode_batch_size={args.decode_batch_size}", f"train.prompts_per_iteration={PROMPTS}",
                "train.sample_every=0", "train.progress_bar=false", f"train.output_dir={out}",
                "reward.weights={test_sleep_per_video: 1.0}", f"reward.plugins=[{ROOT / 'tests/reward_plugins.py'}]",
                f"reward.max_batch={args.decode_batch_size}"]
        os.environ["FVGRPO_TEST_SLEEP"] = "0"
        runs = {mode: load_config(ROOT / "assets/configs/tiny_t2v.yaml", base + [f"reward.mode={mode}"])
                for mode in ("inline", "process")}
        runs = {mode: (setup(cfg), cfg) for mode, cfg in runs.items()}
        for run in runs.values():
            train_iteration(0, *run)
        # The machine's load drifts: each measurement times rollout + decode alone (in-line,
        # no sleep), sets the sleep from it, restarts the reward process (which reads the
        # sleep when it starts), then times process and in-line scoring right after.
        for i in range(1, 1 + args.repeats):
            alone = train_iteration(i, *runs["inline"])
            rows["rollout"].append(sampling_time(alone))
            rows["decode"].append(alone["time_decode"])
            os.environ["FVGRPO_TEST_SLEEP"] = str(rows["rollout"][-1] / samples)
            c, cfg = runs["process"]
            c.scorer.close()
            c.scorer = build_reward_scorer(cfg.reward, c.world)
            beside = train_iteration(i, *runs["process"])
            rows["process"].append(sampling_time(beside))
            rows["beside"].append(beside["time_rollout"] + beside["time_decode"])
            rows["inline"].append(sampling_time(train_iteration(i, *runs["inline"])))
            os.environ["FVGRPO_TEST_SLEEP"] = "0"
        for c, _ in runs.values():
            c.scorer.close()
    rollout, decode, inline, process = (statistics.median(rows[k]) for k in ("rollout", "decode", "inline", "process"))
    reward = rollout
    first = (rollout - decode) / rollout_batches + decode * args.decode_batch_size / samples
    bound = max(rollout, reward)
    # Reward = rollout alone in each measurement: the reward sleeps it in all.
    own = sorted(p / max(b, r) for p, b, r in zip(rows["process"], rows["beside"], rows["rollout"]))
    alone = sorted(p / r for p, r in zip(rows["process"], rows["rollout"]))
    contention = sorted(b / r for b, r in zip(rows["beside"], rows["rollout"]))
    print(f"rollout + decode {rollout:.3f} s (decode {decode:.3f} s), reward {reward:.3f} s, over {rollout_batches} "
          f"rollout batches of {args.rollout_batch_size}, decode batches of {args.decode_batch_size}; medians of "
          f"{args.repeats}")
    print(f"in-line: {inline:.3f} s = {inline / bound:.2f} x max(rollout, reward)")
    print(f"reward process: {process:.3f} s = {statistics.median(own):.2f} x max(rollout, reward) (goal <= 1.10; "
          f"each measurement {own[0]:.2f} - {own[-1]:.2f}; floor {(first + reward) / bound:.3f}: the first decode "
          f"batch after {first:.3f} s)")
    print(f"rollout + decode beside the reward process: {statistics.median(contention):.2f} x alone "
          f"({contention[0]:.2f} - {contention[-1]:.2f}); reward process against the rollout alone: "
          f"{statistics.median(alone):.2f} x ({alone[0]:.2f} - {alone[-1]:.2f})")


if __name__ == "__main__":
    main()
