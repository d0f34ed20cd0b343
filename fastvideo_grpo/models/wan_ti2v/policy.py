"""Wan2.2 TI2V-5B text-to-video policy: Wan2.1's adapter (models/wan/policy.py) with
per-token timesteps, as WanPipeline calls a folder with `expand_timesteps`: the network gets
a [B, S] timestep, one per video token (all sigma * 1000 in text-to-video; the first-frame
tokens of image-to-video carry 0, models/wan_ti2v_i2v/), and modulates each token by its own.
The VAE is Wan2.2's (4x16x16 to 48 channels), normalised per channel as Wan2.1's.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from diffusers import AutoencoderKLWan, WanTransformer3DModel

from fastvideo_grpo.config import ConfigError, ModelConfig
from fastvideo_grpo.models.base import TextConditioning, load_pretrained, place_on_device
from fastvideo_grpo.models.wan.policy import WanPolicy, check_text_dim
from fastvideo_grpo.models.wan_ti2v.tiny import tiny_networks


def token_timesteps(latent_shape: torch.Size, t: float, patch_size: tuple[int, int, int], device: torch.device,
                    clean_first_frame: bool = False) -> torch.Tensor:
    """fp32 sigma * 1000 per video token of [B, C, T, H, W] latents, in the network's token
    order (frame, row, column of patches); the first latent frame's tokens at 0 with
    `clean_first_frame`. [B, S]"""
    pt, ph, pw = patch_size
    batch, _, frames, height, width = latent_shape
    timestep = torch.full((batch, frames // pt, (height // ph) * (width // pw)), t * 1000.0, dtype=torch.float32,
                          device=device)
    if clean_first_frame:
        timestep[:, 0] = 0.0
    return timestep.flatten(1)


class WanTI2VPolicy(WanPolicy):
    def _timestep(self, latents: torch.Tensor, t: float, cond: TextConditioning) -> torch.Tensor:
        return token_timesteps(latents.shape, t, self.transformer.config.patch_size, self.device)


def check_expand_timesteps(cfg: ModelConfig) -> None:
    """model.path is a TI2V folder: its model_index.json sets expand_timesteps (a Wan2.1 or
    A14B folder takes one timestep per sample: model.family wan)."""
    index = Path(cfg.path) / "model_index.json"
    try:
        expand = json.loads(index.read_text()).get("expand_timesteps")
    except (OSError, ValueError) as error:
        raise ConfigError(f"model.path={cfg.path}: cannot read {index} ({error}); expected a diffusers-format "
                          "Wan2.2-TI2V folder") from error
    if expand is not True:
        raise ConfigError(f"model.path={cfg.path}: {index} has expand_timesteps={expand!r}; model.family {cfg.family} "
                          "needs a Wan2.2-TI2V folder (expand_timesteps: true); a Wan2.1 folder is model.family wan")


def build_wan_ti2v(cfg: ModelConfig, device: torch.device, text_dim: int, pooled_dim: int,
                   policy_cls: type[WanTI2VPolicy] = WanTI2VPolicy) -> WanTI2VPolicy:
    """`pooled_dim` is unused: Wan has no pooled text embedding."""
    if cfg.size == "tiny":
        transformer, vae = tiny_networks(cfg, text_dim)
    else:
        check_expand_timesteps(cfg)
        transformer, vae = load_pretrained(cfg, WanTransformer3DModel, "transformer", AutoencoderKLWan, "Wan2.2-TI2V")
        if text_dim:
            check_text_dim(cfg, transformer, text_dim)
    place_on_device(transformer, vae, cfg, device)
    return policy_cls(transformer, vae, cfg, device)
