"""Stable Diffusion (1.x) T2I policy: diffusers' UNet and VAE, used unchanged, sampled with
the DDIM SDE (eta > 0), whose transition is Gaussian.

The network predicts the noise eps; its sampler (`samplers.DDIMSampler`) steps through the
DDIM timesteps of diffusers' DDIMScheduler with SD's scheduler config. Images are videos
of one frame ([B, 1, H, W, 3]), so rewards and sample writing need nothing of their own.
"""

from __future__ import annotations

import torch
from diffusers import AutoencoderKL, UNet2DConditionModel

from fastvideo_grpo.config import ModelConfig, SamplingConfig
from fastvideo_grpo.dtypes import DTYPES
from fastvideo_grpo.models.base import TextConditioning, guided_prediction, load_pretrained, place_on_device, to_frames
from fastvideo_grpo.models.stable_diffusion.tiny import tiny_networks
from fastvideo_grpo.sampling.samplers import DDIMSampler
from fastvideo_grpo.sampling.sde import ddim_timesteps, scaled_linear_alphas_cumprod

# SD 1.x's scheduler config (scheduler/scheduler_config.json of the released folders).
NUM_TRAIN_TIMESTEPS = 1000
STEPS_OFFSET = 1
BETA_START, BETA_END = 0.00085, 0.012


class StableDiffusionPolicy:
    def __init__(self, unet: UNet2DConditionModel, vae: AutoencoderKL, cfg: ModelConfig, device: torch.device):
        # The trained network is called `transformer` by the Policy protocol; here it is a UNet.
        self.transformer = unet
        self.vae = vae
        self.dtype = DTYPES[cfg.dtype]
        self.device = device
        self.cfg_scale = cfg.cfg_scale
        self.spatial_ratio = 2 ** (len(vae.config.block_out_channels) - 1)
        self.alphas_cumprod = scaled_linear_alphas_cumprod(BETA_START, BETA_END, NUM_TRAIN_TIMESTEPS)
        # set_alpha_to_one=False: the step past the last timestep goes to alpha_bar_0.
        self.final_alpha_cumprod = float(self.alphas_cumprod[0])

    @property
    def blocks(self) -> list[torch.nn.Module]:
        unet = self.transformer
        return [*unet.down_blocks, unet.mid_block, *unet.up_blocks]

    def latent_shape(self, num_frames: int, height: int, width: int) -> tuple[int, ...]:
        if num_frames != 1:
            raise ValueError(f"sampling.num_frames={num_frames}: Stable Diffusion generates images (num_frames 1)")
        return (self.transformer.config.in_channels, height // self.spatial_ratio, width // self.spatial_ratio)

    def sampler(self, s: SamplingConfig) -> DDIMSampler:
        """DDIM over the leading-spaced timesteps of SD's scheduler; `shift` does not apply."""
        if s.sde_type != "dance":
            raise ValueError(f"sampling.sde_type={s.sde_type!r} is a rectified-flow SDE; Stable Diffusion samples "
                             "with the DDIM SDE: use 'dance'")
        return DDIMSampler(ddim_timesteps(s.num_steps, NUM_TRAIN_TIMESTEPS, STEPS_OFFSET), s.eta, self.alphas_cumprod,
                           self.final_alpha_cumprod)

    def _forward(self, latents: torch.Tensor, t: float, cond: TextConditioning) -> torch.Tensor:
        # fp32: in bf16 the integer timesteps above 256 would round (981 -> 980).
        timestep = torch.full((latents.shape[0],), t, device=self.device, dtype=torch.float32)
        with torch.autocast(self.device.type, dtype=self.dtype, enabled=self.dtype != torch.float32):
            out = self.transformer(
                latents.to(self.device, self.dtype),
                timestep,
                encoder_hidden_states=cond.prompt_embeds.to(self.device, self.dtype),
                return_dict=False,
            )[0]
        return out.float()

    def text_tokens(self, cond: TextConditioning) -> int:
        return cond.prompt_embeds.shape[1]

    def predict(self, latents: torch.Tensor, t: float, cond: TextConditioning) -> torch.Tensor:
        """The (guided) noise prediction eps at timestep t."""
        return guided_prediction(lambda x, c: self._forward(x, t, c), latents, cond, self.cfg_scale)

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        z = latents.to(self.device, self.vae.dtype) / self.vae.config.scaling_factor
        return to_frames(self.vae.decode(z, return_dict=False)[0])


def build_stable_diffusion(cfg: ModelConfig, device: torch.device, text_dim: int,
                           pooled_dim: int) -> StableDiffusionPolicy:
    if cfg.size == "tiny":
        unet, vae = tiny_networks(cfg, text_dim)
    else:
        unet, vae = load_pretrained(cfg, UNet2DConditionModel, "unet", AutoencoderKL, "Stable Diffusion")
    place_on_device(unet, vae, cfg, device)
    return StableDiffusionPolicy(unet, vae, cfg, device)
