"""Wan2.2 TI2V-5B image-to-video policy, as diffusers' WanImageToVideoPipeline samples a
folder with `expand_timesteps`: the first latent frame of the network's input is the image's
latent (normalised as the VAE's latents are), its tokens carry timestep 0, and the other
frames are sampled at the step's timestep. The pipeline discards the first frame's
prediction and writes the image latent over it at the end; here the first frame follows the
straight path from its noise to the image latent (an ODE step, as HunyuanVideo-I2V's
token_replace: `FirstFrameSampler`), so it is neither noised nor part of the log-prob, and
the final latents hold the image latent.

The image latents come with the conditioning (`TextConditioning.image_latents`), from
data_preprocess/preprocess_latents.py through `data.image_latents_dir`.
"""

from __future__ import annotations

import torch

from fastvideo_grpo.config import ModelConfig, SamplingConfig
from fastvideo_grpo.models.base import TextConditioning
from fastvideo_grpo.models.hunyuan_video_i2v.policy import FirstFrameSampler
from fastvideo_grpo.models.wan_ti2v.policy import WanTI2VPolicy, build_wan_ti2v, token_timesteps


class WanTI2VImagePolicy(WanTI2VPolicy):
    @staticmethod
    def _image(cond: TextConditioning, like: torch.Tensor) -> torch.Tensor:
        if cond.image_latents is None:
            raise ValueError("model.family=wan_ti2v_i2v needs first-frame latents: set data.image_latents_dir to the "
                             "output of data_preprocess/preprocess_latents.py")
        image = cond.image_latents.to(like.device, like.dtype)  # [B, C, 1, h, w]
        if image.shape[1:] != (like.shape[1], 1, *like.shape[-2:]):
            raise ValueError(f"first-frame latents are {tuple(image.shape[1:])} (C, 1, h, w), the sampled latents "
                             f"{tuple(like.shape[1:])}: run preprocess_latents.py with this model's folder and "
                             "sampling.height/width")
        return image

    def _timestep(self, latents: torch.Tensor, t: float, cond: TextConditioning) -> torch.Tensor:
        return token_timesteps(latents.shape, t, self.transformer.config.patch_size, self.device,
                               clean_first_frame=True)

    def _forward(self, latents: torch.Tensor, t: float, cond: TextConditioning) -> torch.Tensor:
        # The pipeline's (1 - mask) * image + mask * latents, mask 0 on the first frame: the same values.
        return super()._forward(torch.cat([self._image(cond, latents), latents[:, :, 1:]], dim=2), t, cond)

    def predict(self, latents: torch.Tensor, t: float, cond: TextConditioning) -> torch.Tensor:
        out = super().predict(latents, t, cond)
        # The first frame's velocity is that of the straight path to the image latent.
        return torch.cat([(latents[:, :, :1].float() - self._image(cond, out)) / t, out[:, :, 1:]], dim=2)

    def sampler(self, s: SamplingConfig) -> FirstFrameSampler:
        return FirstFrameSampler(super().sampler(s))


def build_wan_ti2v_i2v(cfg: ModelConfig, device: torch.device, text_dim: int, pooled_dim: int) -> WanTI2VImagePolicy:
    return build_wan_ti2v(cfg, device, text_dim, pooled_dim, WanTI2VImagePolicy)
