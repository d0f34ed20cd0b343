"""HunyuanVideo image-to-video policy: first-frame conditioning as diffusers'
HunyuanVideoImageToVideoPipeline does it, chosen by the transformer's `image_condition_type`.

- "token_replace" (16 input channels): the first latent frame is replaced by the image
  latent, which the transformer embeds at timestep 0; only the other frames are sampled.
  Here the first frame follows the straight path from its noise to the image latent (an
  ODE step, so the final latents hold the image latent and decode to the image's frame);
  it is neither noised nor part of the log-prob.
- "latent_concat" (2C+1 input channels): the noisy latents are concatenated on channels
  with the image latent (first frame, zeros after) and a first-frame mask; every frame is
  sampled, and decoding drops the first temporal_ratio frames, as the pipeline does.

The image latents come with the conditioning (`TextConditioning.image_latents`), from
data_preprocess/preprocess_latents.py through `data.image_latents_dir`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from fastvideo_grpo.config import ModelConfig, SamplingConfig
from fastvideo_grpo.models.base import TextConditioning
from fastvideo_grpo.models.hunyuan_video.policy import HunyuanVideoPolicy, build_hunyuan_video
from fastvideo_grpo.sampling.samplers import RectifiedFlowSampler
from fastvideo_grpo.sampling.sde import StepResult

CONDITION_TYPES = ("token_replace", "latent_concat")


@dataclass
class FirstFrameSampler:
    """token_replace: the first latent frame follows the straight path to the image latent
    (an ODE step, no noise); the SDE and its log-prob cover the other frames."""

    inner: RectifiedFlowSampler

    @property
    def levels(self) -> torch.Tensor:
        return self.inner.levels

    def levels_at(self, positions) -> torch.Tensor:
        return self.inner.levels_at(positions)

    def sde_step(self, output, x, levels, j, noise=None, prev_sample=None) -> StepResult:
        rest = self.inner.sde_step(output[:, :, 1:], x[:, :, 1:], levels, j,
                                   noise=None if noise is None else noise[:, :, 1:],
                                   prev_sample=None if prev_sample is None else prev_sample[:, :, 1:])
        first = self.inner.ode_step(output[:, :, :1], x[:, :, :1], levels, j)
        # The first frame's x0_hat is the image latent (its velocity is the straight path to it).
        pred_original = torch.cat([self.inner.pred_original(output[:, :, :1], x[:, :, :1], levels, j),
                                   rest.pred_original], dim=2)
        return StepResult(torch.cat([first, rest.prev_sample], dim=2), rest.log_prob, rest.mean, rest.std,
                          pred_original)

    def ode_step(self, output, x, levels, j) -> torch.Tensor:
        return self.inner.ode_step(output, x, levels, j)

    def pred_original(self, output, x, levels, j) -> torch.Tensor:
        return self.inner.pred_original(output, x, levels, j)

    def noise_level(self, levels, j) -> tuple[float, float]:
        return self.inner.noise_level(levels, j)

    def scored_latents(self, last: StepResult) -> torch.Tensor:
        return self.inner.scored_latents(last)


class HunyuanVideoI2VPolicy(HunyuanVideoPolicy):
    def __init__(self, transformer, vae, cfg: ModelConfig, device: torch.device):
        super().__init__(transformer, vae, cfg, device)
        self.condition_type = transformer.config.image_condition_type
        if self.condition_type not in CONDITION_TYPES:
            raise ValueError(f"model.path={cfg.path or '(tiny)'}: the transformer's image_condition_type is "
                             f"{self.condition_type!r}; an image-to-video checkpoint has one of "
                             f"{list(CONDITION_TYPES)}")

    def latent_shape(self, num_frames: int, height: int, width: int) -> tuple[int, ...]:
        return (self.transformer.config.out_channels, *super().latent_shape(num_frames, height, width)[1:])

    @staticmethod
    def _image(cond: TextConditioning, like: torch.Tensor) -> torch.Tensor:
        if cond.image_latents is None:
            raise ValueError("model.family=hunyuan_video_i2v needs first-frame latents: set data.image_latents_dir "
                             "to the output of data_preprocess/preprocess_latents.py")
        image = cond.image_latents.to(like.device, like.dtype)  # [B, C, 1, h, w]
        if image.shape[-2:] != like.shape[-2:]:
            raise ValueError(f"first-frame latents are {tuple(image.shape[-2:])} (h, w), the sampled latents "
                             f"{tuple(like.shape[-2:])}: run preprocess_latents.py with sampling.height/width")
        return image

    def _forward(self, latents: torch.Tensor, t: float, cond: TextConditioning) -> torch.Tensor:
        image = self._image(cond, latents)
        if self.condition_type == "token_replace":
            model_input = torch.cat([image, latents[:, :, 1:]], dim=2)
        else:
            image_frames = torch.zeros_like(latents)
            image_frames[:, :, :1] = image
            mask = torch.zeros_like(latents[:, :1])
            mask[:, :, :1] = 1
            model_input = torch.cat([latents, image_frames, mask], dim=1)
        return super()._forward(model_input, t, cond)

    def predict(self, latents: torch.Tensor, t: float, cond: TextConditioning) -> torch.Tensor:
        out = super().predict(latents, t, cond)
        if self.condition_type == "token_replace":
            # The first frame's velocity is that of the straight path to the image latent.
            out = torch.cat([(latents[:, :, :1].float() - self._image(cond, out)) / t, out[:, :, 1:]], dim=2)
        return out

    def sampler(self, s: SamplingConfig) -> RectifiedFlowSampler:
        inner = super().sampler(s)
        return FirstFrameSampler(inner) if self.condition_type == "token_replace" else inner

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        video = super().decode(latents)
        return video[:, self.temporal_ratio:] if self.condition_type == "latent_concat" else video


def build_hunyuan_video_i2v(cfg: ModelConfig, device: torch.device, text_dim: int,
                            pooled_dim: int) -> HunyuanVideoI2VPolicy:
    """The tiny model is the token_replace variant without embedded guidance."""
    return build_hunyuan_video(cfg, device, text_dim, pooled_dim, HunyuanVideoI2VPolicy,
                               image_condition_type="token_replace", guidance_embeds=False)
