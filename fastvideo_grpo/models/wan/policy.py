"""Wan T2V policy: diffusers' WanTransformer3DModel and AutoencoderKLWan, used unchanged; for
Wan2.2 A14B both experts (`WanExperts`), each step run by its expert and guided with its scale.

The network predicts the flow-matching velocity at timestep sigma * 1000, as WanPipeline
calls it. Wan is not guidance-distilled: with model.cfg_scale > 1 the prediction is
classifier-free guided against the negative (empty) prompt, as the pipeline's guidance_scale.
UMT5's text is zero-padded to a fixed length and the network attends to all of it, so the
text is passed whole, without a mask.
"""

from __future__ import annotations

from pathlib import Path

import torch
from diffusers import AutoencoderKLWan, WanTransformer3DModel

from fastvideo_grpo.config import ConfigError, ModelConfig
from fastvideo_grpo.dtypes import DTYPES
from fastvideo_grpo.models.base import (RectifiedFlowSampling, TextConditioning, guided_prediction, load_pretrained,
                                        place_on_device, to_frames)
from fastvideo_grpo.models.wan.experts import (TRAINED, WanExperts, check_one_expert, experts_of,
                                               folder_boundary_ratio, freeze_untrained)
from fastvideo_grpo.models.wan.tiny import tiny_networks


class WanPolicy(RectifiedFlowSampling):
    def __init__(self, transformer: WanTransformer3DModel | WanExperts, vae: AutoencoderKLWan, cfg: ModelConfig,
                 device: torch.device):
        if isinstance(transformer, WanExperts):
            freeze_untrained(transformer, cfg)
        else:
            check_one_expert(cfg, f"model.path={cfg.path}" if cfg.path else "the tiny model (model.tiny_boundary_ratio: 0)")
        self.transformer = transformer
        self.vae = vae
        self.dtype = DTYPES[cfg.dtype]
        self.device = device
        self.cfg_scale = cfg.cfg_scale
        self.cfg_scale_2 = cfg.cfg_scale_2 or cfg.cfg_scale  # the low-noise expert's
        self.trained_experts = TRAINED[cfg.train_experts]
        self.temporal_ratio = vae.config.scale_factor_temporal
        self.spatial_ratio = vae.config.scale_factor_spatial

    @property
    def blocks(self) -> list[torch.nn.Module]:
        return [block for expert in experts_of(self.transformer) for block in expert.blocks]

    def high_noise(self, t: float) -> bool:
        """Whether sigma t is the high-noise expert's (`transformer`; the only one of Wan2.1)."""
        return not isinstance(self.transformer, WanExperts) or self.transformer.is_high_noise(t)

    def trains(self, t: float) -> bool:
        """Whether the update trains at sigma t: its expert is one model.train_experts trains."""
        return ("transformer" if self.high_noise(t) else "transformer_2") in self.trained_experts

    def latent_shape(self, num_frames: int, height: int, width: int) -> tuple[int, ...]:
        config = experts_of(self.transformer)[0].config
        _, ph, pw = config.patch_size
        step = self.spatial_ratio * ph, self.spatial_ratio * pw
        if height % step[0] or width % step[1] or (num_frames - 1) % self.temporal_ratio:
            raise ValueError(f"sampling.height/width/num_frames={height}x{width}x{num_frames}: Wan needs height and "
                             f"width multiples of {step[0]} and {step[1]} and num_frames 1 + a multiple of "
                             f"{self.temporal_ratio}")
        return (config.in_channels, (num_frames - 1) // self.temporal_ratio + 1,
                height // self.spatial_ratio, width // self.spatial_ratio)

    def predict(self, latents: torch.Tensor, t: float, cond: TextConditioning) -> torch.Tensor:
        return guided_prediction(lambda x, c: self._forward(x, t, c), latents, cond,
                                 self.cfg_scale if self.high_noise(t) else self.cfg_scale_2)

    def text_tokens(self, cond: TextConditioning) -> int:
        return cond.prompt_embeds.shape[1]

    def _timestep(self, latents: torch.Tensor, t: float, cond: TextConditioning) -> torch.Tensor:
        """fp32 sigma * 1000, as WanPipeline passes the scheduler's timesteps. [B]"""
        return torch.full((latents.shape[0],), t * 1000.0, device=self.device, dtype=torch.float32)

    def _forward(self, latents: torch.Tensor, t: float, cond: TextConditioning) -> torch.Tensor:
        timestep = self._timestep(latents, t, cond)
        # Through the network itself, never an expert alone: FSDP2 gathers the root's weights
        # in its forward.
        expert = {"high_noise": self.high_noise(t)} if isinstance(self.transformer, WanExperts) else {}
        with torch.autocast(self.device.type, dtype=self.dtype, enabled=self.dtype != torch.float32):
            out = self.transformer(
                hidden_states=latents.to(self.device, self.dtype),
                timestep=timestep,
                encoder_hidden_states=cond.prompt_embeds.to(self.device, self.dtype),
                return_dict=False,
                **expert,
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
    for expert in experts_of(transformer):
        if text_dim != expert.config.text_dim:
            raise ConfigError(f"the text embeddings (data.embeddings_dir) of width {text_dim} do not match "
                              f"model.path={cfg.path}: its transformer takes {expert.config.text_dim}-dim UMT5 "
                              "embeddings (text_dim)")


def load_experts(path: str | Path, transformer: WanTransformer3DModel) -> WanTransformer3DModel | WanExperts:
    """The folder's transformer, with its transformer_2 (fp32, as `load_pretrained` loads the
    first) when the folder holds two experts."""
    ratio = folder_boundary_ratio(Path(path))
    if ratio is None:
        return transformer
    transformer_2 = WanTransformer3DModel.from_pretrained(path, subfolder="transformer_2", torch_dtype=torch.float32)
    return WanExperts.from_experts(transformer, transformer_2, ratio)


def load_folder_network(root: Path) -> WanTransformer3DModel | WanExperts:
    """A diffusers Wan folder's network in fp32: its transformer, or both experts."""
    transformer = WanTransformer3DModel.from_pretrained(root, subfolder="transformer", torch_dtype=torch.float32)
    return load_experts(root, transformer)


def build_wan(cfg: ModelConfig, device: torch.device, text_dim: int, pooled_dim: int) -> WanPolicy:
    """`pooled_dim` is unused: Wan has no pooled text embedding."""
    if cfg.size == "tiny":
        transformer, vae = tiny_networks(cfg, text_dim)
    else:
        transformer, vae = load_pretrained(cfg, WanTransformer3DModel, "transformer", AutoencoderKLWan, "Wan")
        transformer = load_experts(cfg.path, transformer)
        if text_dim:
            check_text_dim(cfg, transformer, text_dim)
    place_on_device(transformer, vae, cfg, device)
    return WanPolicy(transformer, vae, cfg, device)
