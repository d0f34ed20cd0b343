"""CLI: pretrain the shapes world's text-to-video model by flow matching, on CPU.

    python -m fastvideo_grpo.pretrain [--output assets/shapes_model] [--steps N] [--seed 0]

A small HunyuanVideoTransformer3DModel learns the velocity (noise - data) of latents of
videos the shapes world renders for its pretraining scenes (the held-out colour-shape-count
triples never appear), conditioned on their captions through the tiny hashing text encoder.
The VAE is the fixed pixel-space codec of shapes/vae.py, so the latents are computed
directly (pool_latents) and every step sees fresh videos. The run depends only on --seed and
the arguments (a fixed thread count keeps CPU sums in one order); the learning rate is
constant after warmup, so the folder saved at step K is what --steps K writes.

Writes OUTPUT/{transformer (the EMA weights), vae, scheduler}/ (diffusers format),
text_encoder.json (the encoder's settings), pretrain.json (the arguments and the final
loss), and the loss curve as loss.jsonl and loss.png.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import math
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from diffusers import FlowMatchEulerDiscreteScheduler, HunyuanVideoTransformer3DModel

from fastvideo_grpo.algorithms.ema import init_ema, update_ema
from fastvideo_grpo.config import TINY_TEXT_ENCODER_FILE
from fastvideo_grpo.models.tiny.hashing_text_encoder import TinyTextEncoder
from fastvideo_grpo.training.outputs import plot_reward_curve
from fastvideo_grpo.shapes.vae import LATENT_CHANNELS, pool_latents, shapes_vae
from fastvideo_grpo.shapes.world import render, split_scenes

logger = logging.getLogger(__name__)

@dataclass
class PretrainConfig:
    seed: int = 0
    # The shipped assets/shapes_model is this run. Shape is learnt last: held-out shape
    # accuracy was flat at 0.25-0.29 up to step 6000 and 0.43 at step 10000.
    steps: int = 16000
    batch_size: int = 16
    lr: float = 2e-3
    warmup_steps: int = 100
    weight_decay: float = 0.0
    ema_decay: float = 0.995
    # Save the folder every this many steps (and at the end).
    save_every: int = 500
    # One thread: on shared cores two OpenMP threads wait on each other at every barrier
    # (measured 8x slower per step than one while other processes ran).
    threads: int = 1
    # The transformer: hidden size heads * head_dim, on latent patches of patch_size^2.
    heads: int = 4
    head_dim: int = 16
    layers: int = 2
    single_layers: int = 2
    mlp_ratio: float = 2.0
    # 4: 8x8 tokens per latent frame of 32x32 (8x8 pixels each), 192 tokens a video. A token
    # holds 3 * 4 * 4 = 48 latent values, fewer than the hidden size: at high noise the
    # velocity is mostly the input itself, which a narrower token would have to squeeze.
    patch_size: int = 4
    # The text encoder (fastvideo_grpo.models.tiny.hashing_text_encoder), as a run's model
    # and data sections name it: model.tiny_text_dim, model.tiny_pooled_dim, model.init_seed,
    # data.max_text_tokens.
    text_dim: int = 32
    pooled_dim: int = 32
    text_seed: int = 0
    max_text_tokens: int = 8
    # The sampler's shift, saved with the scheduler.
    shift: float = 3.0
    # The fraction of captions replaced by the empty one, the unconditional branch of
    # classifier-free guidance (model.cfg_scale > 1 at sampling).
    caption_dropout: float = 0.1


def build_transformer(cfg: PretrainConfig) -> HunyuanVideoTransformer3DModel:
    # RoPE splits each head's rotation pairs over (t, h, w), as the tiny model does.
    pairs = cfg.head_dim // 2
    pairs_t = max(1, pairs // 4)
    pairs_h = (pairs - pairs_t) // 2
    torch.manual_seed(cfg.seed)
    return HunyuanVideoTransformer3DModel(
        in_channels=LATENT_CHANNELS, out_channels=LATENT_CHANNELS, num_attention_heads=cfg.heads,
        attention_head_dim=cfg.head_dim, num_layers=cfg.layers, num_single_layers=cfg.single_layers,
        num_refiner_layers=1, mlp_ratio=cfg.mlp_ratio, patch_size=cfg.patch_size, patch_size_t=1,
        text_embed_dim=cfg.text_dim, pooled_projection_dim=cfg.pooled_dim,
        rope_axes_dim=(2 * pairs_t, 2 * pairs_h, 2 * (pairs - pairs_t - pairs_h)), guidance_embeds=False)


def text_encoder(cfg: PretrainConfig) -> TinyTextEncoder:
    return TinyTextEncoder(cfg.text_dim, cfg.pooled_dim, cfg.max_text_tokens, seed=cfg.text_seed)


def batch(cfg: PretrainConfig, step: int) -> tuple[torch.Tensor, list[str]]:
    """Step `step`'s clean latents [B, 3, T', H', W'] and captions (cfg.caption_dropout of them
    empty), from (seed, step) alone."""
    pool = split_scenes(held_out=False)
    rng = np.random.default_rng([cfg.seed, step])
    scenes = [pool[i] for i in rng.integers(len(pool), size=cfg.batch_size)]
    seeds = rng.integers(2**63, size=cfg.batch_size)
    dropped = rng.random(cfg.batch_size) < cfg.caption_dropout
    videos = torch.from_numpy(np.stack([render(s, int(k)) for s, k in zip(scenes, seeds)]))
    return pool_latents(videos), ["" if drop else s.caption() for s, drop in zip(scenes, dropped)]


def loss_at(model: HunyuanVideoTransformer3DModel, encoder: TinyTextEncoder, latents: torch.Tensor,
            captions: list[str], generator: torch.Generator) -> torch.Tensor:
    """Flow matching: x_s = (1 - s) x0 + s noise, s ~ logit-normal(0, 1); MSE to noise - x0."""
    b = latents.shape[0]
    sigma = torch.sigmoid(torch.randn(b, generator=generator))
    noise = torch.randn(latents.shape, generator=generator)
    s = sigma.view(b, 1, 1, 1, 1)
    noisy = (1 - s) * latents + s * noise
    cond = encoder(captions)
    pred = model(hidden_states=noisy, timestep=sigma * 1000.0, encoder_hidden_states=cond.prompt_embeds,
                 encoder_attention_mask=cond.attention_mask, pooled_projections=cond.pooled_embeds,
                 return_dict=False)[0]
    return (pred - (noise - latents)).pow(2).mean()


def save_folder(out: Path, cfg: PretrainConfig, model: HunyuanVideoTransformer3DModel,
                ema: dict[str, torch.Tensor], step: int, loss: float) -> None:
    """The folder with the EMA weights, written beside `out` and then moved over it."""
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    weights = {name: p.detach().clone() for name, p in model.named_parameters()}
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_(ema[name])
        model.save_pretrained(tmp / "transformer")
        for name, p in model.named_parameters():
            p.copy_(weights[name])
    shapes_vae().save_pretrained(tmp / "vae")
    FlowMatchEulerDiscreteScheduler(shift=cfg.shift).save_pretrained(tmp / "scheduler")
    (tmp / TINY_TEXT_ENCODER_FILE).write_text(json.dumps(
        {"class": "fastvideo_grpo.models.tiny.hashing_text_encoder.TinyTextEncoder", "tiny_text_dim": cfg.text_dim,
         "tiny_pooled_dim": cfg.pooled_dim, "init_seed": cfg.text_seed, "max_text_tokens": cfg.max_text_tokens},
        indent=2) + "\n")
    (tmp / "pretrain.json").write_text(json.dumps({"config": dataclasses.asdict(cfg), "step": step,
                                                   "loss_ema": loss}, indent=2) + "\n")
    for name in ("loss.jsonl", "loss.png"):
        if (out / name).is_file():
            shutil.copy(out / name, tmp / name)
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)


def pretrain(cfg: PretrainConfig, out: Path) -> float:
    """Train, saving `out` every cfg.save_every steps; returns the final smoothed loss."""
    torch.set_num_threads(cfg.threads)
    model = build_transformer(cfg)
    encoder = text_encoder(cfg)
    logger.info("transformer: %.3fM parameters", sum(p.numel() for p in model.parameters()) / 1e6)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda k: min(1.0, (k + 1) / cfg.warmup_steps))
    ema = init_ema(model)
    generator = torch.Generator().manual_seed(cfg.seed)
    out.mkdir(parents=True, exist_ok=True)
    log = out / "loss.jsonl"
    log.write_text("")
    rows, smoothed, start = [], math.nan, time.time()
    for step in range(1, cfg.steps + 1):
        latents, captions = batch(cfg, step)
        loss = loss_at(model, encoder, latents, captions, generator)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        update_ema(ema, model, min(cfg.ema_decay, (1 + step) / (10 + step)))
        value = loss.item()
        smoothed = value if math.isnan(smoothed) else 0.98 * smoothed + 0.02 * value
        row = {"step": step, "loss": value, "grad_norm": grad_norm.item(), "wall_s": round(time.time() - start, 2)}
        rows.append(row)
        with log.open("a") as f:
            f.write(json.dumps(row) + "\n")
        if step % 50 == 0:
            logger.info("step %d/%d loss %.4f (smoothed %.4f) %.2f s/step", step, cfg.steps, value, smoothed,
                        (time.time() - start) / step)
        if step % cfg.save_every == 0 or step == cfg.steps:
            curve = [{"iteration": r["step"], "loss": r["loss"]} for r in rows]
            plot_reward_curve({"pretrain": curve}, out / "loss.png", key="loss", window=50)
            save_folder(out, cfg, model, ema, step, smoothed)
    return smoothed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", default="assets/shapes_model")
    for field in dataclasses.fields(PretrainConfig):
        parser.add_argument(f"--{field.name.replace('_', '-')}", type=type(field.default), default=field.default)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    cfg = PretrainConfig(**{f.name: getattr(args, f.name) for f in dataclasses.fields(PretrainConfig)})
    pretrain(cfg, Path(args.output))
    return 0


if __name__ == "__main__":
    sys.exit(main())
