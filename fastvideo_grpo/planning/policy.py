"""The planned config and its policy at full size on the meta device, and its text's shape."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import torch

from fastvideo_grpo.algorithms.registry import algorithm_of
from fastvideo_grpo.config import Config, ConfigError, load_config, validate
from fastvideo_grpo.dtypes import DTYPES
from fastvideo_grpo.models import Policy, build_policy, check_model_config, model_family

CPU = torch.device("cpu")

# Inputs the planner never reads; the shipped full-size configs leave them empty.
UNREAD_KEYS = ("model.path", "data.embeddings_dir", "data.image_latents_dir")


def load_plan_config(path: str | Path, overrides: list[str] = ()) -> Config:
    """The config exactly as the trainer loads it, except that the weight and data folders a
    full-size run needs may be empty (`UNREAD_KEYS`): the planner reads neither."""
    cfg = load_config(path, overrides, check=False)
    validate(cfg, may_be_empty=UNREAD_KEYS)
    check_model_config(cfg, may_be_empty=UNREAD_KEYS)
    algorithm_of(cfg)  # train.algorithm is in the table
    return cfg


def planned_policy(cfg: Config) -> tuple[Policy, str]:
    """The configured policy with its network and VAE on the meta device, and where the
    architecture came from. The tiny model is built as the trainer builds it, then moved."""
    m = cfg.model
    if m.size == "tiny":
        # SDPA whatever model.attention names: flash-attn need not import where a plan is made.
        policy = build_policy(dataclasses.replace(m, attention="sdpa"), CPU, m.tiny_text_dim, m.tiny_pooled_dim)
        policy.transformer.to("meta")
        policy.vae.to("meta")
        return policy, "model.size=tiny"
    family = model_family(m)
    if family.published is None:
        raise ConfigError(f"model.family: {m.family!r} has no published full-size architecture (its ModelFamily's "
                          "published is None); plan it with model.size=tiny")
    pub = family.released(m.published)
    name = pub.name
    root = Path(m.path) if m.path else None
    if root is not None and not root.is_dir():
        # A typo would otherwise plan the released architecture instead of the user's folder.
        raise FileNotFoundError(f"model.path={m.path}: no such folder (leave model.path empty to plan the released "
                                f"{name} architecture)")
    if root is not None:
        configs = []
        for sub in (family.component, "vae"):
            file = root / sub / "config.json"
            if not file.is_file():
                raise FileNotFoundError(f"model.path={m.path}: no {sub}/config.json; expected a diffusers-format "
                                        f"{name} folder")
            configs.append(json.loads(file.read_text()))
        network_config, vae_config = configs
        if family.folder_network_config is not None:
            network_config = family.folder_network_config(root)
        source = f"{root / family.component / 'config.json'}"
    else:
        network_config, vae_config = pub.network_config, pub.vae_config
        source = f"released {pub.name} config (model.path is empty)"
    with torch.device("meta"):
        network = family.network_class(network_config).from_config(network_config)
        vae = pub.vae.from_config(vae_config).to(DTYPES[m.dtype])
    vae.requires_grad_(False)
    return pub.policy(network, vae, m, CPU), source


def text_shape(cfg: Config, policy: Policy) -> tuple[int, int, int, torch.dtype]:
    """(tokens, text dim, pooled dim, dtype) of one prompt's precomputed conditioning."""
    m = cfg.model
    if m.size == "tiny":
        return cfg.data.max_text_tokens, m.tiny_text_dim, m.tiny_pooled_dim, torch.float32
    published = model_family(m).released(m.published)
    return (published.text_tokens, *published.text_dims(dict(policy.transformer.config)), torch.bfloat16)
