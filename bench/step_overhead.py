"""Overhead of one GRPO iteration over the transformer calls it cannot avoid.

One iteration needs B*N/bs rollout forwards (no grad) and B*T/bs training forward+backward
calls (fewer with an SDE window: the trainer's transformer_forwards_* counts). This times an iteration and, in the same run, the same number of bare calls on the
same shapes, and prints the ratio (goal <= 1.10). It also counts the transformer calls of
an iteration and checks there is no extra forward for the old log-probs.

    python bench/step_overhead.py [--model hunyuan_video|flux|hunyuan_t2i|stable_diffusion] [--iterations 3]
        [section.key=value ...]

With classifier-free guidance every call carries both branches (2x the samples).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from fastvideo_grpo.config import load_config  # noqa: E402
from fastvideo_grpo.algorithms.learner import num_trained_timesteps  # noqa: E402
from fastvideo_grpo.training.trainer import setup, train_iteration  # noqa: E402

# A tiny model scaled up until the transformer dominates: ~26M parameters, 8 latent frames
# of 8x8 (128 tokens); the VAE stays small as it is beside a real 13B transformer.
SCALED = [
    "model.tiny_heads=8", "model.tiny_head_dim=64", "model.tiny_layers=2", "model.tiny_single_layers=2",
    "model.tiny_text_dim=32", "model.tiny_vae_channels=4", "sampling.num_frames=29", "sampling.height=64", "sampling.width=64",
    "sampling.num_steps=8", "sampling.group_size=4", "sampling.rollout_batch_size=4",
    "sampling.decode_batch_size=4", "train.prompts_per_iteration=1", "train.gradient_accumulation_steps=4",
]
# The image families at the same width, 128x128 images (64 packed tokens): at the configs'
# own 0.3M parameters and 16 tokens a transformer call is ~7 ms, and the fixed costs a 12B
# model hides (the VAE decode, AdamW, the sampler's math) would be measured instead.
SCALED_IMAGE = [
    "model.tiny_heads=8", "model.tiny_head_dim=64", "model.tiny_layers=2", "model.tiny_single_layers=2",
    "model.tiny_text_dim=32", "model.tiny_vae_channels=4", "sampling.height=128", "sampling.width=128",
]
# Model -> its tiny config and the overrides benchmarked on top of it.
MODELS = {
    "hunyuan_video": ("assets/configs/tiny_t2v.yaml", SCALED),
    # 2 prompts x G=4, 8 steps, rollout batches of 4, 2 optimizer steps, as configured.
    "flux": ("assets/configs/tiny_flux_t2i.yaml", SCALED_IMAGE),
    "hunyuan_t2i": ("assets/configs/tiny_hunyuan_t2i.yaml", SCALED_IMAGE),
    # As configured: 1.4M-parameter UNet, 64x64 images, 8 DDIM steps, CFG 5 (one optimizer
    # step per iteration); the UNet's convolutions already dominate.
    "stable_diffusion": ("assets/configs/tiny_sd_t2i.yaml", []),
}


def batch_of(args: tuple, kwargs: dict) -> int:
    """Batch size of a network call: diffusers transformers take `hidden_states`, UNets `sample`."""
    x = args[0] if args else kwargs.get("hidden_states", kwargs.get("sample"))
    return x.shape[0]


def timed(fn, repeats: int) -> float:
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", choices=sorted(MODELS), default="hunyuan_video")
    parser.add_argument("--iterations", type=int, default=3)
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as out:
        config, preset = MODELS[args.model]
        cfg = load_config(ROOT / config,
                          preset + ["train.sample_every=0", "train.progress_bar=false", f"train.output_dir={out}",
                                    f"data.prompts_file={ROOT / 'assets/prompts/tiny.txt'}"] + args.overrides)
        c = setup(cfg)
        s = cfg.sampling
        calls: list[int] = []
        c.policy.transformer.register_forward_hook(
            lambda m, a, kw, o: calls.append(batch_of(a, kw)), with_kwargs=True)
        params = sum(p.numel() for p in c.policy.transformer.parameters())

        counted = train_iteration(0, c, cfg)  # warm-up, and the call count of one iteration
        calls_per_iteration = sum(calls)
        samples = cfg.train.prompts_per_iteration * s.group_size
        branches = 2 if cfg.model.cfg_scale > 1 else 1
        # Rows of the step plan (every step SDE by default; an SDE window with sampling.sde_window_size).
        rollout_rows, train_rows = counted["transformer_forwards_rollout"], counted["transformer_forwards_train"]
        if not s.sde_window_size:
            trained = num_trained_timesteps(s.num_steps - 1, cfg.policy_update.timestep_fraction)
            assert rollout_rows + train_rows == branches * (samples * s.num_steps + samples * trained)
        assert calls_per_iteration == rollout_rows + train_rows, \
            f"{calls_per_iteration} samples through the transformer, the trainer counted {rollout_rows + train_rows}"

        bs = s.rollout_batch_size
        x = torch.randn(bs, *c.latent_shape)
        cond = c.source.conditioning([0]).repeat_interleave(bs)
        policy = c.policy

        def forward():
            with torch.no_grad():
                policy.predict(x, 0.5, cond)

        def forward_backward():
            policy.predict(x, 0.5, cond).square().mean().backward()

        rows_per_call = bs * branches
        # Each iteration is timed beside its own bare calls, so that the machine's load
        # drifts into both alike; the ratio is the median of the pairs'.
        iteration_times, bare, phase = [], [], {}
        for i in range(1, args.iterations + 1):
            metrics = train_iteration(i, c, cfg)
            iteration_times.append(metrics["time_iteration"])
            for key in ("time_rollout", "time_decode", "time_reward", "time_train"):
                phase.setdefault(key, []).append(metrics[key])
            bare.append(timed(forward, rollout_rows // rows_per_call) + timed(forward_backward, train_rows // rows_per_call))
            c.optimizer.zero_grad(set_to_none=True)  # the bare backward's gradients are not the next step's

    iteration = statistics.median(iteration_times)
    bare_time = statistics.median(bare)
    print(f"transformer: {params / 1e6:.2f}M parameters, latent {tuple(c.latent_shape)}, "
          f"{samples} samples, {s.num_steps} steps, SDE window {s.sde_window_size or 'all'}")
    print(f"transformer rows per iteration: {calls_per_iteration} == rollout {rollout_rows} + training {train_rows}")
    print("phases (median s): " + ", ".join(f"{k[5:]} {statistics.median(v):.3f}" for k, v in phase.items()))
    print(f"iteration {iteration:.3f} s, bare forward + forward/backward {bare_time:.3f} s")
    ratios = sorted(t / b for t, b in zip(iteration_times, bare))
    print(f"overhead ratio: {statistics.median(ratios):.3f} (goal <= 1.10; pairs {ratios[0]:.3f} - {ratios[-1]:.3f})")
    alone = statistics.median((r + t) / b for r, t, b in zip(phase["time_rollout"], phase["time_train"], bare))
    print(f"rollout + update alone (no VAE decode, no reward): {alone:.3f}")


if __name__ == "__main__":
    main()
