"""Shared builders for tests: the tiny policy and its conditioning; waiting on a run; mp4 bytes;
multi-process runs and their comparison; first-frame latents for image-to-video; what a
written PNG shows."""

import json
import socket
import time
from pathlib import Path

import torch

from fastvideo_grpo.models import build_policy
from fastvideo_grpo.models.tiny.hashing_text_encoder import TinyTextEncoder


def tiny_policy(cfg):
    return build_policy(cfg.model, torch.device("cpu"), cfg.model.tiny_text_dim, cfg.model.tiny_pooled_dim)


def tiny_conditioning(cfg, prompts, group_size):
    encoder = TinyTextEncoder(cfg.model.tiny_text_dim, cfg.model.tiny_pooled_dim, cfg.data.max_text_tokens)
    return encoder(prompts).repeat_interleave(group_size)


def tiny_rollout(cfg, policy, cond, batch_size, seed_parts=(0, 0, 0), shared_noise=True, plan=None,
                 keep_trajectory=True):
    import dataclasses

    from fastvideo_grpo.sampling.rollout import rollout

    s = dataclasses.replace(cfg.sampling, rollout_batch_size=batch_size, shared_noise=shared_noise)
    shape = policy.latent_shape(s.num_frames, s.height, s.width)
    return rollout(policy, cond, s, shape, seed_parts, torch.device("cpu"), plan=plan, keep_trajectory=keep_trajectory)


def free_port() -> int:
    """A port nothing listens on now, for a rendezvous the suite's other jobs cannot take."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_lines(path, count: int, timeout_s: float = 120, poll_s: float = 0.2) -> None:
    """Wait until the file at `path` (a run's metrics.jsonl) holds `count` complete lines,
    or `timeout_s` passes; the caller's assertions then say what went wrong."""
    deadline = time.time() + timeout_s
    while time.time() < deadline and not (path.exists() and path.read_text().count("\n") >= count):
        time.sleep(poll_s)


def run_update(policy, optimizer, scheduler, ro, cond, advantages, plan, cfg) -> dict:
    """One update_policy call in this process; its statistics, reduced."""
    from fastvideo_grpo.metrics import IterationStats
    from fastvideo_grpo.parallel import World
    from fastvideo_grpo.algorithms.grpo import update_policy
    from fastvideo_grpo.algorithms.learner import Learner

    stats = IterationStats()
    learner = Learner(policy=policy, reference=None, optimizer=optimizer, scheduler=scheduler)
    update_policy(learner, ro, cond, advantages, plan, cfg, stats)
    return stats.reduce(World(0, 1, torch.device("cpu"), None))


# mp4 in memory with imageio-ffmpeg, for a reward that needs an encoded file (a VLM
# processor, an external tool). Not decord (the reference's reader): decord 0.6.0 fails on
# frames whose width is not a multiple of 32 (a 48-pixel-wide video: "The size must exactly match").
def encode_mp4(frames, fps: int) -> bytes:
    """uint8 [T, H, W, 3] -> H.264 mp4 bytes, without touching the disk."""
    import imageio.v3 as iio

    return iio.imwrite("<bytes>", frames.numpy(), extension=".mp4", fps=fps, codec="libx264", macro_block_size=1)


def decode_mp4(data: bytes):
    """mp4 bytes -> (uint8 [T, H, W, 3], frames per second)."""
    import imageio.v3 as iio
    import numpy as np

    fps = float(iio.immeta(data, extension=".mp4").get("fps", 0.0))
    return torch.from_numpy(np.ascontiguousarray(iio.imread(data, extension=".mp4", index=None))), fps


# Metrics that measure wall-clock time, excluded when runs are compared.
TIMING = ("time_", "samples_per_s", "tflops_per_gpu", "mfu")


def read_jsonl(path) -> list[dict]:
    """The records of a JSONL file (metrics.jsonl, eval.jsonl, manifests), in order."""
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


# Multi-process runs: torchrun --nproc_per_node=2 with gloo, compared to one process.
ROOT = Path(__file__).resolve().parents[1]
DIST = ROOT / "tests" / "dist"
# adam_eps: weights whose true gradient is 0 (a key bias under softmax) get rounding-level
# gradients that Adam with eps=1e-8 turns into lr-sized steps of arbitrary sign.
COMMON = ["train.adam_eps=1e-4", "parallel.activation_checkpointing=true", "train.iterations=3", "train.sample_every=0",
          "train.progress_bar=false", "train.gradient_accumulation_steps=1000", "sampling.group_size=4",
          "sampling.rollout_batch_size=4", "sampling.decode_batch_size=4"]


def run(args, nproc=None, timeout=300, env=None):
    """`python ARGS`, or `torchrun --nproc_per_node=NPROC ARGS`, one thread a process, with
    `env` added to the environment; fails the test with the output's tail unless it exits 0."""
    import os
    import subprocess
    import sys

    env = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
    launcher = [sys.executable]
    if nproc:
        launcher += ["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"]
    result = subprocess.run(launcher + [str(a) for a in args], capture_output=True, text=True, env=env,
                            cwd=ROOT, timeout=timeout)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    return result


def rewound_copy(run_folder, dest, step):
    """A copy of a finished run folder as it stood when its checkpoint after `step` iterations
    was the newest: later checkpoints removed, `latest` naming it. Resuming the copy does what
    resuming a run stopped there does, without training the first `step` iterations again."""
    import shutil

    from fastvideo_grpo.checkpoint.folders import step_folders

    shutil.copytree(run_folder, dest, ignore=shutil.ignore_patterns(".lock", "final_params.pt"))
    checkpoints = Path(dest) / "checkpoints"
    assert (checkpoints / f"step_{step}").is_dir(), f"{run_folder} has no checkpoint after {step} iterations"
    for folder in step_folders(checkpoints):
        if int(folder.name.removeprefix("step_")) > step:
            shutil.rmtree(folder)
    (checkpoints / "latest").write_text(f"step_{step}\n")
    return Path(dest)


def assert_same_training(one, many):
    """Two runs of tests/dist/train_run.py (one process, several) trained the same weights
    and logged the same metrics."""
    import pytest

    a, b = torch.load(one / "final_params.pt"), torch.load(many / "final_params.pt")
    assert a.keys() == b.keys()
    diff = sum(((a[k] - b[k]) ** 2).sum() for k in a).sqrt()
    norm = sum((a[k] ** 2).sum() for k in a).sqrt()
    assert diff / norm < 1e-5
    # Per tensor, reduction order differences of ~1e-7 pass through three Adam steps; the
    # sharded forward differs from the unsharded one by ~5e-7 in the latents, which can flip
    # a decoded pixel's rounding and so move a reward by ~1e-6.
    for k in a:
        assert (a[k] - b[k]).abs().max() <= 2e-4 * a[k].abs().max() + 1e-7, k
    for r1, r2 in zip(read_jsonl(one / "metrics.jsonl"), read_jsonl(many / "metrics.jsonl"), strict=True):
        for key in ("reward_mean", "grad_norm", "ratio_mean"):
            # After an Adam step a gradient differs more: Adam divides each element's ~1e-7
            # difference by that element's own (small) gradient scale, and fused AdamW
            # rounds 1 ulp apart from the for-loop kernel (on sharded and whole tensors alike).
            rel = 1e-5 if r1["iteration"] == 0 or key != "grad_norm" else 5e-5
            assert r2[key] == pytest.approx(r1[key], rel=rel), key
        assert abs(r2["loss"] - r1["loss"]) < 1e-6
        assert r2["ratio_dev_first_update"] == 0.0


def smooth_image(rng, size: int = 32):
    """A colour gradient: uint8 [size, size, 3]."""
    import numpy as np

    y, x = np.mgrid[0:size, 0:size] / (size - 1)
    c = rng.uniform(0.2, 1, 3)
    return (np.stack([c[0] * x, c[1] * y, c[2] * (1 - x)], -1) * 255).astype(np.uint8)


def write_image_latents(folder: Path, count: int = 8) -> Path:
    """First-frame latents for image-to-video: `count` gradient images (one per prompt of
    assets/prompts/tiny.txt by default) encoded by preprocess_latents.py with the tiny
    HunyuanVideo VAE at 32x32; returns the latents folder (data.image_latents_dir)."""
    import sys

    import imageio.v3 as iio
    import numpy as np

    from fastvideo_grpo.models.hunyuan_video.tiny import write_folder

    sys.path.insert(0, str(ROOT / "data_preprocess"))
    import preprocess_latents

    model = write_folder(folder / "hunyuan")
    rng = np.random.default_rng(0)
    for i in range(count):
        iio.imwrite(folder / f"{i}.png", smooth_image(rng))
    (folder / "inputs.txt").write_text("".join(f"{i}.png\n" for i in range(count)))
    preprocess_latents.main(["--model-path", str(model), "--inputs", str(folder / "inputs.txt"), "--output",
                             str(folder / "latents"), "--height", "32", "--width", "32", "--dtype", "fp32",
                             "--device", "cpu"])
    return folder / "latents"


CLIP_MEAN, CLIP_STD = [0.48145466, 0.4578275, 0.40821073], [0.26862954, 0.26130258, 0.27577711]


def tiny_clip(model_folder, processor_folder, logit_scale: float | None = None):
    """A random tiny CLIPModel saved in model_folder, its word tokenizer and a 32x32 image
    processor in processor_folder (CLIP's mean/std); returns (model, tokenizer)."""
    import math

    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel

    from fastvideo_grpo.models.tiny.text_encoders import word_tokenizer

    tok = word_tokenizer(["<pad>", "<unk>", "<|startoftext|>", "<|endoftext|>"], "<|startoftext|>", "<|endoftext|>", 77)
    torch.manual_seed(0)
    model = CLIPModel(CLIPConfig(
        text_config=dict(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=4, max_position_embeddings=77, pad_token_id=tok.pad_token_id,
                         bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id),
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=4,
                           image_size=32, patch_size=8), projection_dim=16))
    if logit_scale is not None:
        with torch.no_grad():
            model.logit_scale.fill_(math.log(logit_scale))
    model.save_pretrained(model_folder)
    tok.save_pretrained(processor_folder)
    CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}, image_mean=CLIP_MEAN,
                       image_std=CLIP_STD).save_pretrained(processor_folder)
    return model.eval(), tok


def read_png(path):
    """The decoded image, uint8 [H, W, 3] (alpha dropped); an error for anything but a PNG."""
    import numpy as np
    from PIL import Image

    with Image.open(path) as image:
        assert image.format == "PNG", f"{path}: {image.format}, expected PNG"
        return np.asarray(image.convert("RGB"))


def curve_pixels(image, index: int):
    """(rows, columns) of the pixels drawn exactly in the index-th colour of matplotlib's
    default cycle: the opaque line of the index-th run of a reward-curve plot."""
    import matplotlib
    import numpy as np
    from matplotlib.colors import to_rgb

    colour = to_rgb(matplotlib.rcParams["axes.prop_cycle"].by_key()["color"][index])
    return np.nonzero((image == np.round(np.array(colour) * 255).astype(np.uint8)).all(axis=-1))
