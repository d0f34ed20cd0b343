"""FLUX.1-dev T2I policy: diffusers' transformer and VAE, used unchanged.

Latents stay [B, C, h, w] everywhere outside this file, as the sampler and trainer expect;
`predict` packs them into FLUX's 2x2 patch tokens [B, h/2 * w/2, 4C] and unpacks the
output, exactly as `FluxPipeline` does. An image is a one-frame video to the rest of the
trainer: `decode` returns [B, 1, H, W, 3].
"""

from __future__ import annotations

import torch
from diffusers import AutoencoderKL, FluxTransformer2DModel

from fastvideo_grpo.config import ModelConfig
from fastvideo_grpo.dtypes import DTYPES
from fastvideo_grpo.models.base import (RectifiedFlowSampling, TextConditioning, guided_prediction, load_pretrained,
                                        place_on_device, to_frames)
from fastvideo_grpo.models.flux.tiny import tiny_networks


def pack_latents(latents: torch.Tensor) -> torch.Tensor:
    """[B, C, h, w] -> [B, h/2 * w/2, 4C]: each 2x2 patch one token (FluxPipeline._pack_latents)."""
    b, c, h, w = latents.shape
    x = latents.view(b, c, h // 2, 2, w // 2, 2).permute(0, 2, 4, 1, 3, 5)
    return x.reshape(b, (h // 2) * (w // 2), c * 4)


def unpack_latents(tokens: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """[B, h/2 * w/2, 4C] -> [B, C, h, w] for latent height h and width w; inverse of `pack_latents`."""
    b, _, channels = tokens.shape
    x = tokens.view(b, height // 2, width // 2, channels // 4, 2, 2).permute(0, 3, 1, 4, 2, 5)
    return x.reshape(b, channels // 4, height, width)


def image_ids(height: int, width: int, device: torch.device) -> torch.Tensor:
    """RoPE positions of the packed tokens, (0, row, col) each: [h/2 * w/2, 3]
    (FluxPipeline._prepare_latent_image_ids for latent height h and width w)."""
    rows, cols = torch.meshgrid(torch.arange(height // 2), torch.arange(width // 2), indexing="ij")
    ids = torch.stack([torch.zeros_like(rows), rows, cols], dim=-1)
    return ids.reshape(-1, 3).to(device, torch.float32)


class FluxPolicy(RectifiedFlowSampling):
    def __init__(self, transformer: FluxTransformer2DModel, vae: AutoencoderKL, cfg: ModelConfig,
                 device: torch.device):
        self.transformer = transformer
        self.vae = vae
        self.dtype = DTYPES[cfg.dtype]
        self.device = device
        # FluxPipeline passes the scale itself; the transformer multiplies it by 1000.
        self.guidance = cfg.guidance_scale
        self.cfg_scale = cfg.cfg_scale
        self.spatial_ratio = 2 ** (len(vae.config.block_out_channels) - 1)

    @property
    def blocks(self) -> list[torch.nn.Module]:
        return [*self.transformer.transformer_blocks, *self.transformer.single_transformer_blocks]

    def latent_shape(self, num_frames: int, height: int, width: int) -> tuple[int, ...]:
        if num_frames != 1:
            raise ValueError(f"sampling.num_frames={num_frames}: FLUX generates images; set sampling.num_frames=1")
        patch = 2 * self.spatial_ratio
        if height % patch or width % patch:
            raise ValueError(f"sampling.height/width={height}x{width}: FLUX needs multiples of {patch}")
        return self.vae.config.latent_channels, height // self.spatial_ratio, width // self.spatial_ratio

    def text_tokens(self, cond: TextConditioning) -> int:
        return cond.prompt_embeds.shape[1]

    def predict(self, latents: torch.Tensor, t: float, cond: TextConditioning) -> torch.Tensor:
        return guided_prediction(lambda x, c: self._forward(x, t, c), latents, cond, self.cfg_scale)

    def _forward(self, latents: torch.Tensor, t: float, cond: TextConditioning) -> torch.Tensor:
        batch, _, height, width = latents.shape
        # FluxPipeline calls the transformer with timestep = sigma (its t / 1000). The transformer
        # casts it to the dtype of its embedded hidden states (bf16 under autocast), in the
        # pipeline and in DanceGRPO alike, so its dtype here changes nothing.
        timestep = torch.full((batch,), t, device=self.device, dtype=self.dtype)
        guidance = torch.full((batch,), self.guidance, device=self.device, dtype=self.dtype)
        # T5 was run with padding and FLUX attends to it, so the text mask is not used; text
        # tokens all sit at position 0.
        text_ids = torch.zeros(cond.prompt_embeds.shape[1], 3, device=self.device)
        with torch.autocast(self.device.type, dtype=self.dtype, enabled=self.dtype != torch.float32):
            out = self.transformer(
                hidden_states=pack_latents(latents.to(self.device, self.dtype)),
                timestep=timestep,
                guidance=guidance,
                encoder_hidden_states=cond.prompt_embeds.to(self.device, self.dtype),
                pooled_projections=cond.pooled_embeds.to(self.device, self.dtype),
                txt_ids=text_ids,
                img_ids=image_ids(height, width, self.device),
                return_dict=False,
            )[0]
        return unpack_latents(out.float(), height, width)

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        cfg = self.vae.config
        z = latents.to(self.device, self.vae.dtype) / cfg.scaling_factor + cfg.shift_factor
        return to_frames(self.vae.decode(z, return_dict=False)[0])


def build_flux(cfg: ModelConfig, device: torch.device, text_dim: int, pooled_dim: int) -> FluxPolicy:
    if cfg.size == "tiny":
        transformer, vae = tiny_networks(cfg, text_dim, pooled_dim)
    else:
        transformer, vae = load_pretrained(cfg, FluxTransformer2DModel, "transformer", AutoencoderKL, "FLUX")
    if not transformer.config.guidance_embeds:
        raise ValueError(f"model.path={cfg.path}: the transformer has no guidance embedding; "
                         "expected guidance-distilled FLUX.1-dev")
    place_on_device(transformer, vae, cfg, device)
    return FluxPolicy(transformer, vae, cfg, device)
