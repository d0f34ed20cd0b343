"""Wan2.1 T2V policy: diffusers' WanTransformer3DModel and AutoencoderKLWan, used unchanged.

The network predicts the flow-matching velocity at timestep sigma * 1000, as WanPipeline
calls it. Wan is not guidance-distilled: with model.cfg_scale > 1 the prediction is
classifier-free guided against the negative (empty) prompt, as the pipeline's guidance_scale.
UMT5's text is zero-padded to a fixed length and the network attends to all of it, so the
text is passed whole, without a mask.
"""

from __future__ import annotations

import torch
from diffusers import AutoencoderKLWan, WanTransformer3DModel

from fastvideo_grpo.config import ConfigError, ModelConfig
from fastvideo_grpo.dtypes import DTYPES
from fastvideo_grpo.models.base import (RectifiedFlowSampling, TextConditioning, guided_prediction, load_pretrained,
                                        place_on_device, to_frames)
from fastvideo_grpo.models.wan.tiny import tiny_networks


class WanPolicy(RectifiedFlowSampling):
    def __init__(self, transformer: WanTransformer3DModel, vae: AutoencoderKLWan, cfg: ModelConfig,
                 device: torch.device):
        self.transformer = transformer
        self.vae = vae
        self.dtype = DTYPES[cfg.dtype]
        self.device = device
        self.cfg_scale = cfg.cfg_scale
        self.temporal_ratio = vae.config.scale_factor_temporal
        self.spatial_ratio = vae.config.scale_factor_spatial

    @property
    def blocks(self) -> list[torch.nn.Module]:
        return list(self.transformer.blocks)

    def latent_shape(self, num_frames: int, height: int, width: int) -> tuple[int, ...]:
        _, ph, pw = self.transformer.config.patch_size
        step = self.spatial_ratio * ph, self.spatial_ratio * pw
        if height % step[0] or width % step[1] or (num_frames - 1) % self.temporal_ratio:
            raise ValueError(f"sampling.height/width/num_frames={height}x{width}x{num_frames}: Wan needs height and "
                             f"width multiples of {step[0]} and {step[1]} and num_frames 1 + a multiple of "
                             f"{self.temporal_ratio}")
        return (self.transformer.config.in_channels, (num_frames - 1) // self.temporal_ratio + 1,
                height // self.spatial_ratio, width // self.spatial_ratio)

    def predict(self, latents: torch.Tensor, t: float, cond: TextConditioning) -> torch.Tensor:
        return guided_prediction(lambda x, c: self._forward(x, t, c), latents, cond, self.cfg_scale)

    def text_tokens(self, cond: TextConditioning) -> int:
        return cond.prompt_embeds.shape[1]

    def _timestep(self, latents: torch.Tensor, t: float, cond: TextConditioning) -> torch.Tensor:
        """fp32 sigma * 1000, as WanPipeline passes the scheduler's timesteps. [B]"""
        return torch.full((latents.shape[0],), t * 1000.0, device=self.device, dtype=torch.float32)

    def _forward(self, latents: torch.Tensor, t: float, cond: TextConditioning) -> torch.Tensor:
        timestep = self._timestep(latents, t, cond)
        with torch.autocast(self.device.type, dtype=self.dtype, enabled=self.dtype != torch.float32):
            out = self.transformer(
                hidden_states=latents.to(self.device, self.dtype),
                timestep=timestep,
                encoder_hidden_states=cond.prompt_embeds.to(self.device, self.dtype),
                return_dict=False,
            )[0]
        return out.float()

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Un-normalise per channel as WanPipeline does (latents / (1 / std) + mean), then decode."""
        cfg = self.vae.config
        z = latents.to(self.device, self.vae.dtype)
        mean = torch.tensor(cfg.latents_mean).view(1, cfg.z_dim, 1, 1, 1).to(z.device, z.dtype)
        inverse_std = 1.0 / torch.tensor(cfg.latents_std).view(1, cfg.z_dim, 1, 1, 1).to(z.device, z.dtype)
        return to_frames(self.vae.decode(z / inverse_std + mean, return_dict=False)[0])


def check_text_dim(cfg: ModelConfig, transformer: WanTransformer3DModel, text_dim: int) -> None:
    if text_dim != transformer.config.text_dim:
        raise ConfigError(f"the text embeddings (data.embeddings_dir) of width {text_dim} do not match model.path="
                          f"{cfg.path}: its transformer takes {transformer.config.text_dim}-dim UMT5 embeddings "
                          "(text_dim)")


def build_wan(cfg: ModelConfig, device: torch.device, text_dim: int, pooled_dim: int) -> WanPolicy:
    """`pooled_dim` is unused: Wan has no pooled text embedding."""
    if cfg.size == "tiny":
        transformer, vae = tiny_networks(cfg, text_dim)
    else:
        transformer, vae = load_pretrained(cfg, WanTransformer3DModel, "transformer", AutoencoderKLWan, "Wan")
        if text_dim:
            check_text_dim(cfg, transformer, text_dim)
    place_on_device(transformer, vae, cfg, device)
    return WanPolicy(transformer, vae, cfg, device)
