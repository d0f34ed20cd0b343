"""The DanceGRPO plan (every step SDE, 60% trained) against an SDE window (MixGRPO-style:
4 SDE steps moving through the schedule, DPM-Solver++(2M) after it on half the levels, the
deterministic prefix once per group), side by side in one run on a tiny
HunyuanVideo-architecture model at N = 16, G = 8.

Prints, per plan, the transformer rows per iteration (from the trainer's own counts:
forward = 1, forward+backward = 3 forward-equivalents) and the median wall time of an
iteration, and the windowed/default ratios (goals: <= 0.5 and <= 0.55).

    python bench/sde_window.py [--iterations 6] [section.key=value ...]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from fastvideo_grpo.config import load_config  # noqa: E402
from fastvideo_grpo.training.trainer import setup, train_iteration  # noqa: E402

# Large enough that the transformer dominates an iteration, as it does at full size.
MODEL = [
    "model.tiny_heads=8", "model.tiny_head_dim=32", "model.tiny_layers=2", "model.tiny_single_layers=2",
    "model.tiny_vae_channels=4", "sampling.num_frames=9", "sampling.height=64", "sampling.width=64",
    "sampling.num_steps=16", "sampling.group_size=8", "sampling.rollout_batch_size=8",
    "sampling.decode_batch_size=8", "train.prompts_per_iteration=1", "train.gradient_accumulation_steps=8",
    "train.sample_every=0", "train.progress_bar=false", "reward.mode=inline",
]
PLANS = {
    "default (16 SDE steps, fraction 0.6)": [],
    "window 4, progressive, dpmpp_2m on half the rest": [
        "sampling.sde_window_size=4", "sampling.sde_window_schedule=progressive", "sampling.ode_solver=dpmpp_2m",
        "sampling.post_window_steps=6"],
}


def forward_equivalents(metrics: dict) -> float:
    return metrics["transformer_forwards_rollout"] + 3 * metrics["transformer_forwards_train"]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--iterations", type=int, default=6)
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    runs = {}
    with tempfile.TemporaryDirectory() as out:
        for i, (name, plan) in enumerate(PLANS.items()):
            cfg = load_config(ROOT / "assets/configs/tiny_t2v.yaml", MODEL + plan + args.overrides + [
                f"train.output_dir={out}/{i}", f"data.prompts_file={ROOT / 'assets/prompts/tiny.txt'}"])
            c = setup(cfg)
            train_iteration(0, c, cfg)  # warm-up
            runs[name] = (cfg, c, [])
        # Alternate the plans iteration by iteration, so machine noise hits both alike.
        for iteration in range(1, args.iterations + 1):
            for cfg, c, rows in runs.values():
                rows.append(train_iteration(iteration, c, cfg))
        for _, c, _ in runs.values():
            c.scorer.close()
    summary = {}
    for name, (_, _, rows) in runs.items():
        equivalents = statistics.mean(forward_equivalents(r) for r in rows)
        seconds = statistics.median(r["time_iteration"] for r in rows)
        rollout = statistics.mean(r["transformer_forwards_rollout"] for r in rows)
        train = statistics.mean(r["transformer_forwards_train"] for r in rows)
        summary[name] = (equivalents, seconds)
        print(f"{name}: rollout rows {rollout:.0f}, training rows {train:.0f} -> {equivalents:.0f} "
              f"forward-equivalents; {seconds:.3f} s per iteration (median of {len(rows)})")
    (base_eq, base_s), (win_eq, win_s) = summary.values()
    print(f"forward-equivalents ratio: {win_eq / base_eq:.3f} (goal <= 0.5)")
    print(f"wall time ratio: {win_s / base_s:.3f} (goal <= 0.55)")


if __name__ == "__main__":
    main()
