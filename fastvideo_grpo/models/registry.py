"""The model families: model.family -> its `ModelFamily` entry (models/family.py).

A family is one folder, models/<family>/, whose __init__ exposes `FAMILY`; this package's
are registered below. A family from outside the package registers itself with
`register_family` in a module named in model.plugins, imported before model.family is
looked up (`model_family`).
"""

from __future__ import annotations

import torch

from fastvideo_grpo.plugins import import_plugins
from fastvideo_grpo.config import Config, ConfigError, ModelConfig, raise_problems
from fastvideo_grpo.models import flux, hunyuan_video, hunyuan_video_i2v, stable_diffusion, wan
from fastvideo_grpo.models import wan_ti2v, wan_ti2v_i2v
from fastvideo_grpo.models import hunyuan_video_15, hunyuan_video_15_i2v
from fastvideo_grpo.models.base import Policy
from fastvideo_grpo.models.family import ModelFamily

FAMILIES: dict[str, ModelFamily] = {}


def register_family(family: ModelFamily) -> ModelFamily:
    """Add `family` under its name; registering the same entry again is a no-op, another
    entry under a taken name an error."""
    if not isinstance(family, ModelFamily):
        raise TypeError(f"register_family: expected a ModelFamily, got {type(family).__name__}")
    if FAMILIES.get(family.name, family) is not family:
        raise ValueError(f"model family {family.name!r} is already registered")
    FAMILIES[family.name] = family
    return family


for _package in (hunyuan_video, hunyuan_video_i2v, flux, stable_diffusion, wan, wan_ti2v, wan_ti2v_i2v,
                 hunyuan_video_15, hunyuan_video_15_i2v):
    register_family(_package.FAMILY)


def load_plugins(plugins: list[str]) -> None:
    """Import each of model.plugins (a module name, or the path of a .py file) once per
    process; importing it registers its families."""
    import_plugins(plugins, "model.plugins", FAMILIES)


def model_family(cfg: ModelConfig) -> ModelFamily:
    """model.family's entry, after importing model.plugins."""
    load_plugins(cfg.plugins)
    if cfg.family not in FAMILIES:
        raise ConfigError(f"model.family: {cfg.family!r} is not one of {list(FAMILIES)}")
    return FAMILIES[cfg.family]


def check_sequence_parallel(cfg: Config) -> None:
    """parallel.sp_size > 1 only for a family that declares sequence parallelism."""
    family = model_family(cfg.model)
    if cfg.parallel.sp_size > 1 and family.sequence_parallel is None:
        supported = sorted(name for name, f in FAMILIES.items() if f.sequence_parallel is not None)
        raise ConfigError(f"parallel.sp_size: {cfg.parallel.sp_size!r} is invalid; expected 1 for model.family "
                          f"{cfg.model.family!r}; sequence parallelism is implemented for {supported} only")


def check_model_config(cfg: Config, may_be_empty: tuple[str, ...] = ()) -> None:
    """model.family is registered, and the config asks only what it supports: parallel.sp_size
    > 1, first-frame latents, a pretrained tiny folder, the family's own rules. Builds
    nothing: the train CLI (cli/train.py) and the trainer's setup run it with the config's own
    checks, before any process group or model exists. `may_be_empty` as in config.validate."""
    family = model_family(cfg.model)
    check_sequence_parallel(cfg)
    m, problems = cfg.model, []
    if family.image_conditioned and not cfg.data.image_latents_dir:
        problems.append(f"data.image_latents_dir: {cfg.data.image_latents_dir!r} is invalid; expected first-frame "
                        "latents (data_preprocess/preprocess_latents.py) for image-to-video")
    if m.size == "tiny" and m.path and not family.pretrained_tiny:
        problems.append(f"model.path: {m.path!r} is invalid; expected empty with model.size: tiny: model.family "
                        f"{m.family!r} builds its tiny model in process and would ignore this folder; set "
                        "model.size=full to train the folder's model")
    if not family.experts:
        problems += [f"model.{key}: {getattr(m, key)!r} is invalid; expected it unset: model.family {m.family!r} "
                     "has one network, no experts" for key in ("train_experts", "cfg_scale_2", "tiny_boundary_ratio")
                     if getattr(m, key)]
    if family.config_problems is not None:
        problems += family.config_problems(cfg)
    raise_problems(problems, may_be_empty)


def build_policy(cfg: ModelConfig, device: torch.device, text_dim: int, pooled_dim: int) -> Policy:
    return model_family(cfg).build(cfg, device, text_dim, pooled_dim)
