"""HunyuanVideo T2V policy: diffusers' transformer and VAE, used unchanged."""

from __future__ import annotations

import torch
from diffusers import AutoencoderKLHunyuanVideo, HunyuanVideoTransformer3DModel

from fastvideo_grpo.config import ConfigError, ModelConfig
from fastvideo_grpo.dtypes import DTYPES
from fastvideo_grpo.models.attention import crop_text
from fastvideo_grpo.models.base import (RectifiedFlowSampling, TextConditioning, guided_prediction, load_pretrained,
                                        place_on_device, to_frames)
from fastvideo_grpo.models.hunyuan_video.tiny import tiny_networks


class HunyuanVideoPolicy(RectifiedFlowSampling):
    def __init__(self, transformer: HunyuanVideoTransformer3DModel, vae: AutoencoderKLHunyuanVideo,
                 cfg: ModelConfig, device: torch.device):
        self.transformer = transformer
        self.vae = vae
        self.dtype = DTYPES[cfg.dtype]
        self.device = device
        self.guidance = cfg.guidance_scale * 1000.0
        self.cfg_scale = cfg.cfg_scale
        self.temporal_ratio = vae.config.temporal_compression_ratio
        self.spatial_ratio = vae.config.spatial_compression_ratio

    @property
    def blocks(self) -> list[torch.nn.Module]:
        return [*self.transformer.transformer_blocks, *self.transformer.single_transformer_blocks]

    def latent_shape(self, num_frames: int, height: int, width: int) -> tuple[int, ...]:
        return (
            self.transformer.config.in_channels,
            (num_frames - 1) // self.temporal_ratio + 1,
            height // self.spatial_ratio,
            width // self.spatial_ratio,
        )

    def predict(self, latents: torch.Tensor, t: float, cond: TextConditioning) -> torch.Tensor:
        return guided_prediction(lambda x, c: self._forward(x, t, c), latents, cond, self.cfg_scale)

    def text_tokens(self, cond: TextConditioning) -> int:
        """The longest prompt's: `_forward` crops the padding no row attends to."""
        return crop_text(cond.prompt_embeds, cond.attention_mask)[0].shape[1]

    def _forward(self, latents: torch.Tensor, t: float, cond: TextConditioning) -> torch.Tensor:
        batch = latents.shape[0]
        # fp32, as HunyuanVideoPipeline passes it: in bf16, t*1000 rounds by up to 2 (750 -> 752).
        timestep = torch.full((batch,), t * 1000.0, device=self.device, dtype=torch.float32)
        # Guidance-distilled checkpoints embed the guidance scale; others (I2V) have no such input.
        guidance = (torch.full((batch,), self.guidance, device=self.device, dtype=self.dtype)
                    if self.transformer.config.guidance_embeds else None)
        text, text_mask = crop_text(cond.prompt_embeds, cond.attention_mask)
        # With FSDP mixed precision the weights are already bf16; unsharded they are fp32 and
        # autocast does the casting.
        with torch.autocast(self.device.type, dtype=self.dtype, enabled=self.dtype != torch.float32):
            out = self.transformer(
                hidden_states=latents.to(self.device, self.dtype),
                timestep=timestep,
                encoder_hidden_states=text.to(self.device, self.dtype),
                encoder_attention_mask=text_mask.to(self.device),
                pooled_projections=cond.pooled_embeds.to(self.device, self.dtype),
                guidance=guidance,
                return_dict=False,
            )[0]
        return out.float()

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        z = latents.to(self.device, self.vae.dtype) / self.vae.config.scaling_factor
        return to_frames(self.vae.decode(z, return_dict=False)[0])


def check_text_dims(cfg: ModelConfig, transformer: HunyuanVideoTransformer3DModel, text_dim: int,
                    pooled_dim: int) -> None:
    expected = {"model.tiny_text_dim": (text_dim, transformer.config.text_embed_dim),
                "model.tiny_pooled_dim": (pooled_dim, transformer.config.pooled_projection_dim)}
    for key, (given, folder) in expected.items():
        if given != folder:
            raise ConfigError(f"{key}={given} does not match model.path={cfg.path}: its transformer takes "
                              f"{folder}-dim text embeddings")


def build_hunyuan_video(cfg: ModelConfig, device: torch.device, text_dim: int, pooled_dim: int,
                        policy_cls: type[HunyuanVideoPolicy] = HunyuanVideoPolicy,
                        **tiny_config) -> HunyuanVideoPolicy:
    """`policy_cls` and `tiny_config` (overrides of the tiny transformer) serve the variants (I2V)."""
    if cfg.size == "tiny" and cfg.path:
        # A pretrained tiny model (assets/shapes_model): the folder's architecture and weights.
        transformer, vae = load_pretrained(cfg, HunyuanVideoTransformer3DModel, "transformer",
                                           AutoencoderKLHunyuanVideo, "HunyuanVideo")
        check_text_dims(cfg, transformer, text_dim, pooled_dim)
    elif cfg.size == "tiny":
        transformer, vae = tiny_networks(cfg, text_dim, pooled_dim, **tiny_config)
    else:
        transformer, vae = load_pretrained(cfg, HunyuanVideoTransformer3DModel, "transformer",
                                           AutoencoderKLHunyuanVideo, "HunyuanVideo")
        vae.enable_tiling()
    place_on_device(transformer, vae, cfg, device)
    return policy_cls(transformer, vae, cfg, device)
