"""Offline VAE latents of reference images (or a video's first frame) for image-to-video
conditioning, in the same shard + manifest format as the text embeddings.

    python data_preprocess/preprocess_latents.py --model-path HUNYUAN_FOLDER \\
        --inputs images.txt --output data/latents --height 480 --width 480

`--inputs` lists one image or video path a line (relative paths are read from the list's
folder). Each is resized to cover height x width and center-cropped, scaled to [-1, 1],
encoded with the model's VAE (the posterior mode, as diffusers' I2V pipelines do) and
normalised as the model's pipeline feeds them (`normalise`): shard key `latents`
[n, C, T, h, w] (T = 1 for a video VAE, no T for an image VAE). With `--family` naming a
family that conditions on an image encoder's tokens too (`ModelFamily.image_encoder`, e.g.
hunyuan_video_15_i2v's SigLIP), each frame's tokens are written as `image_embeds` [n, N, D].
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import os
import sys
from pathlib import Path

import diffusers
import imageio.v3 as iio
import numpy as np
import PIL.Image
import torch
import torch.nn.functional as F

from fastvideo_grpo.cli.args import number
from fastvideo_grpo.data.preprocess import RERUN_HELP, preprocess, read_lines, report_blank_lines
from fastvideo_grpo.dtypes import DTYPES
from fastvideo_grpo.models.registry import FAMILIES
from fastvideo_grpo.parallel import init_distributed, shutdown

logger = logging.getLogger("preprocess_latents")
VIDEO_SUFFIXES = {".mp4", ".mov", ".avi", ".mkv", ".webm", ".gif"}


def read_input_list(path: Path) -> list[Path]:
    """The listed files, read as prompt files are (UTF-8, lines end at \\n or \\r\\n, a
    control character is an error naming the line); blank lines are skipped and counted."""
    if not path.is_file():
        raise FileNotFoundError(f"--inputs {path} does not exist")
    lines = read_lines(path)
    report_blank_lines(path, [number for number, line in lines if not line.strip()])
    files = [Path(line.strip()) for _, line in lines if line.strip()]
    files = [f if f.is_absolute() else path.parent / f for f in files]
    missing = [str(f) for f in files if not f.is_file()]
    if missing:
        raise FileNotFoundError(f"--inputs {path} lists {len(missing)} missing files, e.g. {missing[:3]}")
    if not files:
        raise ValueError(f"--inputs {path} lists no files")
    return files


def load_frame(path: Path, height: int, width: int) -> torch.Tensor:
    """The image (or a video's first frame), covering height x width, center-cropped. [3, H, W] in [-1, 1]"""
    frame = iio.imread(path, index=0) if path.suffix.lower() in VIDEO_SUFFIXES else iio.imread(path)
    frame = np.asarray(frame)
    if frame.ndim == 2:
        frame = np.repeat(frame[..., None], 3, axis=-1)
    # As diffusers' VaeImageProcessor scales (x / 255, then 2x - 1): an image already at
    # height x width gives the pipelines' own pixels, bit for bit.
    x = torch.from_numpy(frame[..., :3].astype(np.float32) / 255.0).permute(2, 0, 1) * 2.0 - 1.0
    scale = max(height / x.shape[1], width / x.shape[2])
    size = (max(height, round(x.shape[1] * scale)), max(width, round(x.shape[2] * scale)))
    if size != tuple(x.shape[1:]):
        x = F.interpolate(x[None], size=size, mode="bilinear", antialias=True, align_corners=False)[0]
    top, left = (size[0] - height) // 2, (size[1] - width) // 2
    return x[:, top:top + height, left:left + width].clamp(-1, 1)


def file_stamp(path: str) -> list[int]:
    """Size and modification time: a file replaced under the same path makes its shard stale
    (cheap to check on every re-run, unlike hashing every image or video)."""
    stat = Path(path).stat()
    return [stat.st_size, stat.st_mtime_ns]


def load_vae(model_path: Path, dtype: torch.dtype, device: torch.device):
    config = model_path / "vae" / "config.json"
    if not config.is_file():
        raise FileNotFoundError(f"--model-path {model_path}: no vae/config.json")
    cls = getattr(diffusers, json.loads(config.read_text())["_class_name"])
    vae = cls.from_pretrained(model_path, subfolder="vae", torch_dtype=dtype).to(device).eval()
    # One image a forward, as the I2V pipelines encode it: a batch rounds differently, and
    # HunyuanVideo-1.5's VAE cannot encode more than one at a time (diffusers 0.42.1).
    if hasattr(vae, "enable_slicing"):
        vae.enable_slicing()
    return vae


def normalise(vae, latents: torch.Tensor) -> torch.Tensor:
    """Per channel by the VAE's latents_mean and latents_std where its config sets them (Wan:
    (z - mean) * (1 / std) in fp32, as WanImageToVideoPipeline computes it), else times its
    scaling factor in the VAE's dtype (HunyuanVideo's I2V pipeline)."""
    config = vae.config
    if config.get("latents_mean") is not None and config.get("latents_std") is not None:
        latents = latents.float()
        shape = (1, len(config.latents_mean)) + (1,) * (latents.ndim - 2)
        mean = torch.tensor(config.latents_mean).view(shape).to(latents.device, latents.dtype)
        inverse_std = 1.0 / torch.tensor(config.latents_std).view(shape).to(latents.device, latents.dtype)
        return (latents - mean) * inverse_std
    return latents * config.scaling_factor


def to_image(frame: torch.Tensor) -> PIL.Image.Image:
    """`load_frame`'s [3, H, W] in [-1, 1] back to 8-bit RGB: the file's own pixels when it was
    not resized, so an image encoder sees what the pipeline hands it."""
    pixels = ((frame + 1.0) * 127.5).round().clamp(0, 255).to(torch.uint8)
    return PIL.Image.fromarray(pixels.permute(1, 2, 0).contiguous().numpy())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=RERUN_HELP.format(
        items="files (path, size and modification time)", settings="resolved --model-path, --height, --width, --family's image encoder"))
    parser.add_argument("--model-path", required=True, type=Path)
    parser.add_argument("--inputs", required=True, type=Path, help="a file listing image/video paths")
    parser.add_argument("--output", required=True)
    parser.add_argument("--height", type=number(int, 1), required=True)
    parser.add_argument("--width", type=number(int, 1), required=True)
    parser.add_argument("--shard-size", type=number(int, 1), default=256)
    parser.add_argument("--batch-size", type=number(int, 1), default=4)
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="bf16")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--overwrite", action="store_true", help="re-encode every shard, even unchanged ones")
    parser.add_argument("--family", choices=sorted(FAMILIES), default=None,
                        help="the model family: one with an image encoder also gets its tokens (image_embeds)")
    args = parser.parse_args(argv)
    rank = int(os.environ.get("RANK", 0))
    logging.basicConfig(level=logging.INFO if rank == 0 else logging.WARNING,
                        format=f"%(asctime)s [rank{rank}] %(name)s: %(message)s")

    world = init_distributed(args.device)
    files = read_input_list(args.inputs)
    vae = load_vae(args.model_path, torch.float32 if world.device.type == "cpu" else torch.bfloat16, world.device)
    video_vae = "temporal_compression_ratio" in vae.config or "scale_factor_temporal" in vae.config
    image_encoder = FAMILIES[args.family].image_encoder if args.family else None
    embed = (importlib.import_module(image_encoder).image_embedder(args.model_path, world.device)
             if image_encoder else None)

    def encode(paths: list[str]):
        frames = [load_frame(Path(p), args.height, args.width) for p in paths]
        x = torch.stack(frames)
        if video_vae:
            x = x[:, :, None]  # [B, 3, 1, H, W]
        with torch.no_grad():
            latents = normalise(vae, vae.encode(x.to(world.device, vae.dtype)).latent_dist.mode())
        tensors = {"latents": latents.float().cpu()}
        if embed is not None:
            tensors["image_embeds"] = embed([to_image(frame) for frame in frames]).float().cpu()
        return tensors, 0

    settings = {"encoder": "vae_latents", "model_path": str(args.model_path.resolve()), "height": args.height,
                "width": args.width, **({"image_encoder": image_encoder} if image_encoder else {})}
    counts = preprocess([str(f) for f in files], encode, args.output, world, args.shard_size, args.batch_size,
                        args.dtype, args.overwrite, item_key="path", settings=settings, identify=file_stamp)
    logger.info("%d inputs; rank %d: %s", len(files), world.rank, counts)
    shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
