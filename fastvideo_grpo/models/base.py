"""What the sampler and trainer need from a generator model, independent of its family."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Protocol

import torch
from torch import nn

from fastvideo_grpo.config import ModelConfig, SamplingConfig
from fastvideo_grpo.dtypes import DTYPES
from fastvideo_grpo.models.attention import apply_attention
from fastvideo_grpo.sampling.samplers import RectifiedFlowSampler, Sampler
from fastvideo_grpo.sampling.sde import sigma_schedule

logger = logging.getLogger(__name__)


@dataclass
class TextConditioning:
    """Per-sample conditioning: the prompt's embeddings, and where a model needs them the
    empty prompt's (classifier-free guidance) and a first-frame latent (image-to-video)."""

    prompt_embeds: torch.Tensor  # [B, L, D]
    attention_mask: torch.Tensor  # [B, L], ones then zeros
    pooled_embeds: torch.Tensor  # [B, P]
    # The unconditional (empty-prompt) embeddings, one row per sample like the above, for
    # classifier-free guidance; None when the source has none.
    negative: "TextConditioning | None" = None
    # Image-to-video: the VAE latent of each sample's first frame, [B, C, 1, h, w].
    image_latents: torch.Tensor | None = None
    # Image-to-video, where the family reads them: the image encoder's tokens of each
    # sample's first frame, [B, N, D].
    image_embeds: torch.Tensor | None = None

    def _map(self, fn: Callable[[torch.Tensor], torch.Tensor]) -> "TextConditioning":
        negative = self.negative._map(fn) if self.negative is not None else None
        image_latents = fn(self.image_latents) if self.image_latents is not None else None
        image_embeds = fn(self.image_embeds) if self.image_embeds is not None else None
        return TextConditioning(fn(self.prompt_embeds), fn(self.attention_mask), fn(self.pooled_embeds), negative,
                                image_latents, image_embeds)

    def select(self, index: torch.Tensor | slice | list[int]) -> "TextConditioning":
        return self._map(lambda t: t[index])

    def repeat_interleave(self, repeats: int) -> "TextConditioning":
        return self._map(lambda t: t.repeat_interleave(repeats, dim=0))

    def to(self, device: torch.device | str, dtype: torch.dtype | None = None) -> "TextConditioning":
        # The mask keeps its integer dtype.
        return self._map(lambda t: t.to(device, dtype if t.is_floating_point() else None))


def guided_prediction(forward: Callable[[torch.Tensor, TextConditioning], torch.Tensor], latents: torch.Tensor,
                      cond: TextConditioning, cfg_scale: float) -> torch.Tensor:
    """Classifier-free guidance: uncond + cfg_scale * (cond - uncond), both branches from ONE
    forward over [uncond; cond] (2B rows), so that rollout and training see the same numbers.
    cfg_scale <= 1 is the plain conditional forward."""
    if cfg_scale <= 1:
        return forward(latents, cond)
    negative = cond.negative
    if negative is None:
        raise ValueError(f"model.cfg_scale={cfg_scale} needs the empty-prompt embedding, but the conditioning "
                         "has none: re-run data_preprocess/ to write negative.safetensors next to the shards")
    both = TextConditioning(*(torch.cat([n, c]) for n, c in (
        (negative.prompt_embeds, cond.prompt_embeds), (negative.attention_mask, cond.attention_mask),
        (negative.pooled_embeds, cond.pooled_embeds))))
    if cond.image_latents is not None:  # both branches see the image, as in diffusers' I2V pipeline
        both.image_latents = torch.cat([cond.image_latents, cond.image_latents])
    if cond.image_embeds is not None:
        both.image_embeds = torch.cat([cond.image_embeds, cond.image_embeds])
    uncond, conditional = forward(torch.cat([latents, latents]), both).chunk(2)
    return uncond + cfg_scale * (conditional - uncond)


class Policy(Protocol):
    """A model adapter. The trainer only ever talks to a model through these members."""

    # The trained network; parallelism and the optimizer are applied to it.
    transformer: nn.Module
    # Its blocks, in order: the units of FSDP sharding and activation checkpointing.
    blocks: list[nn.Module]

    def latent_shape(self, num_frames: int, height: int, width: int) -> tuple[int, ...]:
        """Shape of one sample's latent, without the batch dim."""

    def predict(self, latents: torch.Tensor, t: float, cond: TextConditioning) -> torch.Tensor:
        """Network output at noise level t (a sigma, or a DDIM timestep), as fp32 with the
        latents' shape; with classifier-free guidance the guided output (`guided_prediction`)."""

    def sampler(self, s: SamplingConfig) -> Sampler:
        """The family's sampler for these settings (`samplers.py`): noise levels, SDE and ODE steps."""

    def text_tokens(self, cond: TextConditioning) -> int:
        """How many text tokens a forward on `cond` runs its network over (FLOP counts)."""

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Clean latents [B, *latent_shape] -> uint8 video frames [B, T, H, W, 3] on CPU."""


class RectifiedFlowSampling:
    """`sampler` for a network that predicts the velocity (noise - data)."""

    def sampler(self, s: SamplingConfig) -> RectifiedFlowSampler:
        return RectifiedFlowSampler(sigma_schedule(s.num_steps, s.shift), s.eta, s.sde_type, s.cps_log_prob, s.shift)


def to_frames(pixels: torch.Tensor) -> torch.Tensor:
    """VAE output [B, 3, T, H, W] or, for images, [B, 3, H, W] in [-1, 1] -> uint8 frames
    [B, T, H, W, 3] on CPU (T = 1 for images)."""
    frames = ((pixels.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    if frames.ndim == 4:
        frames = frames[:, :, None]
    return frames.permute(0, 2, 3, 4, 1).cpu()


def load_pretrained(cfg: ModelConfig, network_cls: type, network_folder: str, vae_cls: type,
                    what: str) -> tuple[nn.Module, nn.Module]:
    """The trained network (fp32: FSDP's mixed precision casts it per block) and the VAE
    (in model.dtype) from the local diffusers-format folder model.path."""
    root = Path(cfg.path)
    for sub in (network_folder, "vae"):
        if not (root / sub / "config.json").is_file():
            raise FileNotFoundError(
                f"model.path={cfg.path}: no {sub}/config.json; expected a diffusers-format {what} folder")
    network = network_cls.from_pretrained(root, subfolder=network_folder, torch_dtype=torch.float32)
    vae = vae_cls.from_pretrained(root, subfolder="vae", torch_dtype=DTYPES[cfg.dtype])
    return network, vae


def place_on_device(network: nn.Module, vae: nn.Module, cfg: ModelConfig, device: torch.device) -> None:
    """Attention backend, and a frozen VAE in model.dtype (tiled per model.vae_tiling) on
    `device`. The network stays where it was loaded (host memory): `parallel.parallelize`
    places it, sharded block by block under FSDP, so that no rank holds it whole on the device."""
    apply_attention(network, cfg.attention)
    vae.to(device, DTYPES[cfg.dtype]).requires_grad_(False).eval()
    if cfg.vae_tiling == "on" or (cfg.vae_tiling == "auto" and cfg.size == "full"):
        vae.enable_tiling()
    logger.info("%s: %.2fM parameters", type(network).__name__, sum(p.numel() for p in network.parameters()) / 1e6)


# LoRA's targets in diffusers' transformers (`ModelFamily.lora_targets`): the attention
# projections and MLP linears of every dual- and single-stream block (a UNet's
# transformer blocks: self- and cross-attention attn1/attn2); the text refiner, embedders,
# convolutions and the final projection keep their weights.
DIFFUSERS_BLOCK_LINEARS = (
    r".*(transformer_blocks|single_transformer_blocks)\.\d+\."
    r"(attn[12]?\.(to_q|to_k|to_v|to_out\.0|add_q_proj|add_k_proj|add_v_proj|to_add_out)"
    r"|ff\.net\.(0\.proj|2)|ff_context\.net\.(0\.proj|2)|proj_mlp|proj_out)"
)
