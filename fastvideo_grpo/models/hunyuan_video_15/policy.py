"""HunyuanVideo-1.5 T2V policy: diffusers' HunyuanVideo15Transformer3DModel and
AutoencoderKLHunyuanVideo15, used unchanged, called as HunyuanVideo15Pipeline calls them.

The network predicts the flow-matching velocity at timestep sigma * 1000 (in the network's
dtype, as the pipeline casts it). Its input is the latents with, channel-wise, the condition
latents and their mask: zeros for text-to-video, as the pipeline's
prepare_cond_latents_and_mask. The model is not guidance-distilled: with model.cfg_scale > 1
the prediction is classifier-free guided against the empty prompt, as the pipeline's guider.

Its text is two sequences: Qwen2.5-VL's hidden states with their mask (prompt_embeds,
attention_mask) and ByT5's embeddings of the prompt's quoted glyph text with theirs, which
ride in the pooled slot of the shared conditioning, packed per sample as
[mask (T), embeddings (T x text_embed_2_dim)] (`pack_glyphs`); a token is valid where its
mask entry is exactly 1, as encode_prompt's masks are 0 or 1 (the in-process tiny encoder's
random pooled vector holds none: a prompt with no quoted text).
Padding that no row attends to is cropped from both (their masks decide; the network masks
and reorders the rest), and T2V passes no image tokens: the pipeline's 729 all-masked zeros
change no video token.
"""

from __future__ import annotations

import contextlib

import torch
from diffusers import AutoencoderKLHunyuanVideo15, HunyuanVideo15Transformer3DModel
from torch._subclasses.fake_tensor import is_fake

from fastvideo_grpo.config import ConfigError, ModelConfig
from fastvideo_grpo.dtypes import DTYPES
from fastvideo_grpo.models.attention import crop_text
from fastvideo_grpo.models.base import (RectifiedFlowSampling, TextConditioning, guided_prediction, load_pretrained,
                                        place_on_device, to_frames)
from fastvideo_grpo.models.hunyuan_video_15.attention import set_joint_attention
from fastvideo_grpo.models.hunyuan_video_15.tiny import tiny_networks
from fastvideo_grpo.models.hunyuan_video_15.traced import traced


def pack_glyphs(embeds: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """ByT5's [B, T, D] embeddings and [B, T] mask -> one [B, T * (D + 1)] row per sample."""
    return torch.cat([mask.to(embeds.dtype), embeds.flatten(1)], dim=1)


def unpack_glyphs(packed: torch.Tensor, dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """`pack_glyphs`'s inverse: [B, T * (dim + 1)] -> embeddings [B, T, dim], mask [B, T] (int64)."""
    if packed.shape[1] % (dim + 1):
        raise ValueError(f"the pooled conditioning of width {packed.shape[1]} is not ByT5 glyph tokens of width "
                         f"{dim} + 1 (text_embed_2_dim and its mask): re-run "
                         "data_preprocess/preprocess_hunyuan_video_15_embeddings.py (data.embeddings_dir), or set "
                         f"model.tiny_pooled_dim to a multiple of {dim + 1}")
    tokens = packed.shape[1] // (dim + 1)
    return packed[:, tokens:].unflatten(1, (tokens, dim)), (packed[:, :tokens] == 1).long()


def crop_glyphs(embeds: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The glyph tokens cut to the longest row's valid ones; none where no prompt quotes text."""
    if is_fake(mask):
        return embeds, mask
    length = int(mask.sum(dim=1).max()) if mask.numel() else 0
    return embeds[:, :length], mask[:, :length]


class HunyuanVideo15Policy(RectifiedFlowSampling):
    def __init__(self, transformer: HunyuanVideo15Transformer3DModel, vae: AutoencoderKLHunyuanVideo15,
                 cfg: ModelConfig, device: torch.device):
        # The network as this adapter runs it (here, so that the planner's policy, built from
        # the published config, runs it so too).
        set_joint_attention(transformer)
        tie_dead_text_path(transformer)
        # One video at a time: the VAE's mid-block attention builds its causal mask per batch row
        # and cannot broadcast it over a batch of more than one (diffusers 0.42.1).
        vae.enable_slicing()
        self.transformer = transformer
        self.vae = vae
        self.dtype = DTYPES[cfg.dtype]
        self.device = device
        self.cfg_scale = cfg.cfg_scale
        self.temporal_ratio = vae.config.temporal_compression_ratio
        self.spatial_ratio = vae.config.spatial_compression_ratio

    @property
    def blocks(self) -> list[torch.nn.Module]:
        return list(self.transformer.transformer_blocks)

    def latent_shape(self, num_frames: int, height: int, width: int) -> tuple[int, ...]:
        p, pt = self.transformer.config.patch_size, self.transformer.config.patch_size_t
        step = self.spatial_ratio * p
        if height % step or width % step or (num_frames - 1) % (self.temporal_ratio * pt):
            raise ValueError(f"sampling.height/width/num_frames={height}x{width}x{num_frames}: HunyuanVideo-1.5 "
                             f"needs height and width multiples of {step} and num_frames 1 + a multiple of "
                             f"{self.temporal_ratio * pt}")
        return (self.vae.config.latent_channels, (num_frames - 1) // self.temporal_ratio + 1,
                height // self.spatial_ratio, width // self.spatial_ratio)

    def predict(self, latents: torch.Tensor, t: float, cond: TextConditioning) -> torch.Tensor:
        return guided_prediction(lambda x, c: self._forward(x, t, c), latents, cond, self.cfg_scale)

    def _text(self, cond: TextConditioning) -> tuple[torch.Tensor, ...]:
        text, text_mask = crop_text(cond.prompt_embeds, cond.attention_mask)
        glyphs, glyph_mask = crop_glyphs(*unpack_glyphs(cond.pooled_embeds, self.transformer.config.text_embed_2_dim))
        return text, text_mask, glyphs, glyph_mask

    def text_tokens(self, cond: TextConditioning) -> int:
        """Qwen's and ByT5's tokens that `_forward` keeps."""
        text, _, glyphs, _ = self._text(cond)
        return text.shape[1] + glyphs.shape[1]

    def condition(self, latents: torch.Tensor, cond: TextConditioning) -> torch.Tensor:
        """The condition latents and their mask, [B, C + 1, T, h, w]: zeros for text-to-video."""
        b, c, *size = latents.shape
        return latents.new_zeros(b, c + 1, *size)

    def image_embeds(self, cond: TextConditioning, batch: int) -> torch.Tensor:
        """The image tokens, [B, N, image_embed_dim]: none for text-to-video."""
        return torch.zeros(batch, 0, self.transformer.config.image_embed_dim, device=self.device, dtype=self.dtype)

    def _forward(self, latents: torch.Tensor, t: float, cond: TextConditioning) -> torch.Tensor:
        batch = latents.shape[0]
        x = latents.to(self.device, self.dtype)
        hidden = torch.cat([x, self.condition(x, cond)], dim=1)
        # sigma * 1000 in the network's dtype, as the pipeline casts the scheduler's timestep.
        timestep = torch.full((batch,), t * 1000.0, device=self.device, dtype=torch.float32).to(self.dtype)
        text, text_mask, glyphs, glyph_mask = self._text(cond)
        image = self.image_embeds(cond, batch)
        planned = traced(self.transformer) if is_fake(hidden) else contextlib.nullcontext()
        with planned, torch.autocast(self.device.type, dtype=self.dtype, enabled=self.dtype != torch.float32):
            out = self.transformer(
                hidden_states=hidden,
                timestep=timestep,
                encoder_hidden_states=text.to(self.device, self.dtype),
                encoder_attention_mask=text_mask.to(self.device),
                encoder_hidden_states_2=glyphs.to(self.device, self.dtype),
                encoder_attention_mask_2=glyph_mask.to(self.device),
                image_embeds=image.to(self.device, self.dtype),
                return_dict=False,
            )[0]
        return out.float()

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        z = latents.to(self.device, self.vae.dtype) / self.vae.config.scaling_factor
        return to_frames(self.vae.decode(z, return_dict=False)[0])


def tie_dead_text_path(transformer: HunyuanVideo15Transformer3DModel) -> None:
    """The last block's text stream after its attention (to_add_out, ff_context, their LoRA
    adapters) feeds nothing: the network returns the video tokens. Its output joins the
    network's at weight zero (the same numbers), so that those parameters get a zero gradient
    rather than none, and the optimizer (and so every checkpoint) holds state for every
    trainable parameter."""
    text = {}

    def keep_text(module, inputs, output):
        text["last"] = output[1]

    def add_text(module, inputs, output):
        # One element reaches every parameter of the path (a sum of all could overflow in bf16).
        dead = 0.0 * text.pop("last").flatten()[0]
        if isinstance(output, tuple):
            return (output[0] + dead, *output[1:])
        output.sample = output.sample + dead  # return_dict=True
        return output

    transformer.transformer_blocks[-1].register_forward_hook(keep_text)
    transformer.register_forward_hook(add_text)


def check_text_dims(cfg: ModelConfig, transformer: HunyuanVideo15Transformer3DModel, text_dim: int,
                    pooled_dim: int) -> None:
    glyph = transformer.config.text_embed_2_dim
    if text_dim != transformer.config.text_embed_dim:
        raise ConfigError(f"the text embeddings (data.embeddings_dir) of width {text_dim} do not match model.path="
                          f"{cfg.path}: its transformer takes {transformer.config.text_embed_dim}-dim Qwen2.5-VL "
                          "embeddings (text_embed_dim)")
    if pooled_dim % (glyph + 1):
        raise ConfigError(f"the pooled embeddings (data.embeddings_dir) of width {pooled_dim} are not ByT5 glyph "
                          f"tokens of model.path={cfg.path}: its transformer takes {glyph}-dim ByT5 embeddings "
                          f"(text_embed_2_dim), packed with their mask in rows of {glyph + 1}; re-run "
                          "data_preprocess/preprocess_hunyuan_video_15_embeddings.py")


def build_hunyuan_video_15(cfg: ModelConfig, device: torch.device, text_dim: int, pooled_dim: int,
                           policy_cls: type = HunyuanVideo15Policy) -> HunyuanVideo15Policy:
    if cfg.size == "tiny":
        transformer, vae = tiny_networks(cfg, text_dim)
    else:
        transformer, vae = load_pretrained(cfg, HunyuanVideo15Transformer3DModel, "transformer",
                                           AutoencoderKLHunyuanVideo15, "HunyuanVideo-1.5")
        if text_dim:
            check_text_dims(cfg, transformer, text_dim, pooled_dim)
    place_on_device(transformer, vae, cfg, device)
    return policy_cls(transformer, vae, cfg, device)
