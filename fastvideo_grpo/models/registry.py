"""The model families: model.family -> what the trainer, export and the tiny CLI need of it.

A new family is an adapter file (its Policy and build function), its tiny builder in
models/tiny/, and one line in FAMILIES.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from fastvideo_grpo.config import Config, ConfigError, ModelConfig
from fastvideo_grpo.models.base import Policy
from fastvideo_grpo.models.flux import build_flux
from fastvideo_grpo.models.hunyuan_video import build_hunyuan_video
from fastvideo_grpo.models.hunyuan_video_i2v import build_hunyuan_video_i2v
from fastvideo_grpo.models.stable_diffusion import build_stable_diffusion
from fastvideo_grpo.models.tiny.flux import write_folder as write_tiny_flux
from fastvideo_grpo.models.tiny.hunyuan_video import write_folder as write_tiny_hunyuan_video
from fastvideo_grpo.models.tiny.stable_diffusion import write_folder as write_tiny_stable_diffusion


@dataclass(frozen=True)
class ModelFamily:
    # The adapter: (model config, device, text_dim, pooled_dim) -> Policy.
    build: Callable[[ModelConfig, torch.device, int, int], Policy]
    # The diffusers pipeline class of the family's folders (export writes LoRA files with it).
    pipeline: str
    # Whether parallel/sequence_parallel.py can split the network's attention over sp ranks.
    sequence_parallel: bool
    # (folder, seed) -> a complete diffusers folder of the tiny model (`python -m
    # fastvideo_grpo.models.tiny`); None where the family's tiny model is built in process only.
    write_tiny_folder: Callable[[str | Path, int], Path] | None


FAMILIES: dict[str, ModelFamily] = {
    "hunyuan_video": ModelFamily(build_hunyuan_video, "HunyuanVideoPipeline", sequence_parallel=True,
                                 write_tiny_folder=write_tiny_hunyuan_video),
    # No tiny folder: HunyuanVideoImageToVideoPipeline's Llava text encoder and image processor
    # have no tiny counterpart yet; the tiny I2V model (model.size: tiny) is built in process.
    "hunyuan_video_i2v": ModelFamily(build_hunyuan_video_i2v, "HunyuanVideoImageToVideoPipeline",
                                     sequence_parallel=False, write_tiny_folder=None),
    "flux": ModelFamily(build_flux, "FluxPipeline", sequence_parallel=False,
                        write_tiny_folder=write_tiny_flux),
    "stable_diffusion": ModelFamily(build_stable_diffusion, "StableDiffusionPipeline", sequence_parallel=False,
                                    write_tiny_folder=write_tiny_stable_diffusion),
}


def model_family(name: str) -> ModelFamily:
    if name not in FAMILIES:
        raise ConfigError(f"model.family: {name!r} is not one of {list(FAMILIES)}")
    return FAMILIES[name]


def check_model_config(cfg: Config) -> None:
    """model.family is registered, and supports parallel.sp_size > 1 if that is asked for.
    Builds nothing: train.py runs it with the config's own checks, before any process group
    or model exists."""
    family = model_family(cfg.model.family)
    if cfg.parallel.sp_size > 1 and not family.sequence_parallel:
        supported = sorted(name for name, f in FAMILIES.items() if f.sequence_parallel)
        raise ConfigError(f"parallel.sp_size: {cfg.parallel.sp_size!r} is invalid; expected 1 for model.family "
                          f"{cfg.model.family!r}; sequence parallelism is implemented for {supported} only")


def build_policy(cfg: ModelConfig, device: torch.device, text_dim: int, pooled_dim: int) -> Policy:
    return model_family(cfg.family).build(cfg, device, text_dim, pooled_dim)
