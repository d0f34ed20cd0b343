"""HunyuanVideo-1.5 image-to-video policy: the text-to-video adapter (models/hunyuan_video_15/)
with the conditioning of diffusers' HunyuanVideo15ImageToVideoPipeline.

- The condition channels beside the latents hold the image's VAE latent on the first latent
  frame (zeros after) and a mask of ones on that frame (zeros after), as the pipeline's
  prepare_cond_latents_and_mask; every frame is sampled and decoded, as the pipeline does.
- The image's SigLIP tokens (729 x 1152 per sample in the released model) join the text
  tokens as the transformer's image tokens (`image_embeds`), in both classifier-free
  guidance branches, as the pipeline passes them.

Both come with the conditioning (`TextConditioning.image_latents`, `.image_embeds`), from
data_preprocess/preprocess_latents.py --family hunyuan_video_15_i2v through
`data.image_latents_dir`.
"""

from __future__ import annotations

import torch

from fastvideo_grpo.config import ModelConfig
from fastvideo_grpo.models.base import TextConditioning
from fastvideo_grpo.models.hunyuan_video_15.policy import HunyuanVideo15Policy, build_hunyuan_video_15
from fastvideo_grpo.models.hunyuan_video_15_i2v.tiny import as_image_to_video

PREPROCESS = "data_preprocess/preprocess_latents.py --family hunyuan_video_15_i2v"


class HunyuanVideo15I2VPolicy(HunyuanVideo15Policy):
    def condition(self, latents: torch.Tensor, cond: TextConditioning) -> torch.Tensor:
        """The first frame's latent and its mask, [B, C + 1, T, h, w]."""
        if cond.image_latents is None:
            raise ValueError(f"model.family=hunyuan_video_15_i2v needs first-frame latents: set data.image_latents_dir "
                             f"to the output of {PREPROCESS}")
        image = cond.image_latents.to(latents.device, latents.dtype)  # [B, C, 1, h, w]
        if image.shape[1:] != (latents.shape[1], 1, *latents.shape[-2:]):
            raise ValueError(f"first-frame latents are {tuple(image.shape[1:])} (C, 1, h, w), the sampled latents "
                             f"{tuple(latents.shape[1:])}: run {PREPROCESS} with this model's folder and "
                             "sampling.height/width")
        condition = super().condition(latents, cond)
        condition[:, :-1, :1] = image
        condition[:, -1, :1] = 1
        return condition

    def image_embeds(self, cond: TextConditioning, batch: int) -> torch.Tensor:
        dim = self.transformer.config.image_embed_dim
        if cond.image_embeds is None:
            raise ValueError("model.family=hunyuan_video_15_i2v needs the image encoder's tokens of each first frame "
                             f"(image_embeds): set data.image_latents_dir to the output of {PREPROCESS}")
        if cond.image_embeds.shape[-1] != dim:
            raise ValueError(f"the image tokens (data.image_latents_dir) are {cond.image_embeds.shape[-1]} wide, the "
                             f"transformer takes {dim} (image_embed_dim): run {PREPROCESS} with this model's folder")
        return cond.image_embeds

    def text_tokens(self, cond: TextConditioning) -> int:
        """Qwen's, ByT5's and the image's tokens: the forward's whole context (the FLOP count
        takes the image tokens as text tokens through the refiner; they take a cheaper
        projection instead)."""
        return super().text_tokens(cond) + cond.image_embeds.shape[1]


def build_hunyuan_video_15_i2v(cfg: ModelConfig, device: torch.device, text_dim: int,
                               pooled_dim: int) -> HunyuanVideo15I2VPolicy:
    policy = build_hunyuan_video_15(cfg, device, text_dim, pooled_dim, HunyuanVideo15I2VPolicy)
    if cfg.size == "tiny":
        as_image_to_video(policy.transformer)
    return policy
