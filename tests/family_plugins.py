"""A model family from outside the package, as a user's would be: tests name this module
in model.plugins, so that every process that looks model.family up imports it.

`fake_wan` is a small rectified-flow text-to-image network whose blocks are named like
Wan2.1's (`blocks.N`, with `attn.to_q/to_k/to_v/to_out` and `ffn.0/ffn.2`), not like the
diffusers transformers the package's own families use (`transformer_blocks.N`), over the
tiny AutoencoderKL the package shares between its image families.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL, ConfigMixin, ModelMixin
from diffusers.configuration_utils import register_to_config
from diffusers.loaders import PeftAdapterMixin
from torch import nn

from fastvideo_grpo.config import ModelConfig
from fastvideo_grpo.dtypes import DTYPES
from fastvideo_grpo.models import ModelFamily, Published, TextConditioning, register_family
from fastvideo_grpo.models.base import RectifiedFlowSampling, guided_prediction, load_pretrained, place_on_device, to_frames
from fastvideo_grpo.models.flop_count import attention, linear
from fastvideo_grpo.models.tiny.autoencoder_kl import tiny_autoencoder_kl

NAME = "fake_wan"
PATCH = 2
LATENT_CHANNELS = 4
# The blocks' linears LoRA adapts: peft matches a module whose name ends in one of these.
LORA_TARGETS = r"blocks\.\d+\.(attn\.(to_q|to_k|to_v|to_out)|ffn\.(0|2))"


class FakeAttention(nn.Module):
    """The image tokens attend to themselves and to the (masked) text tokens."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.to_q, self.to_k, self.to_v, self.to_out = (nn.Linear(dim, dim) for _ in range(4))

    def forward(self, x: torch.Tensor, text: torch.Tensor, text_mask: torch.Tensor) -> torch.Tensor:
        context = torch.cat([x, text], dim=1)  # [B, N + L, D]
        q, k, v = (t.unflatten(2, (self.heads, -1)).transpose(1, 2)
                   for t in (self.to_q(x), self.to_k(context), self.to_v(context)))
        mask = torch.cat([text_mask.new_ones(x.shape[:2]), text_mask], dim=1).bool()[:, None, None]
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return self.to_out(out.transpose(1, 2).flatten(2))


class FakeBlock(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.attn = FakeAttention(dim, heads)
        self.ffn = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))

    def forward(self, x: torch.Tensor, text: torch.Tensor, text_mask: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x), text, text_mask)
        return x + self.ffn(self.norm2(x))


class FakeWanNetwork(ModelMixin, ConfigMixin, PeftAdapterMixin):
    @register_to_config
    def __init__(self, in_channels: int = LATENT_CHANNELS, dim: int = 64, heads: int = 4, num_layers: int = 2,
                 text_embed_dim: int = 32):
        super().__init__()
        self.patch_in = nn.Linear(in_channels * PATCH * PATCH, dim)
        self.time_in = nn.Linear(1, dim)
        self.text_in = nn.Linear(text_embed_dim, dim)
        self.blocks = nn.ModuleList(FakeBlock(dim, heads) for _ in range(num_layers))
        self.proj_out = nn.Linear(dim, in_channels * PATCH * PATCH)

    def forward(self, latents: torch.Tensor, timestep: torch.Tensor, text: torch.Tensor,
                text_mask: torch.Tensor) -> torch.Tensor:
        b, c, h, w = latents.shape  # [B, C, h, w] -> [B, h/2 * w/2, 4C]
        tokens = latents.unflatten(2, (h // PATCH, PATCH)).unflatten(4, (w // PATCH, PATCH))
        tokens = tokens.permute(0, 2, 4, 1, 3, 5).flatten(3).flatten(1, 2)
        x = self.patch_in(tokens) + self.time_in(timestep[:, None, None] / 1000)
        text = self.text_in(text)
        for block in self.blocks:
            x = block(x, text, text_mask)
        out = self.proj_out(x).unflatten(2, (c, PATCH, PATCH)).unflatten(1, (h // PATCH, w // PATCH))
        return out.permute(0, 3, 1, 4, 2, 5).reshape(b, c, h, w)


def fake_wan_flops(network: nn.Module, latent_shape: tuple[int, ...], text_tokens: int) -> int:
    """One row: every linear at 2 FLOPs per multiply-add, attention as 4 N (N + L) D."""
    config = network.config
    d, channels = config["dim"], config["in_channels"] * PATCH * PATCH
    _, height, width = latent_shape
    n, text = (height // PATCH) * (width // PATCH), text_tokens
    block = (2 * linear(n, d, d) + 2 * linear(n + text, d, d) + attention(n, n + text, d)
             + linear(n, d, 4 * d) + linear(n, 4 * d, d))
    return (linear(n, channels, d) + linear(1, 1, d) + linear(text, config["text_embed_dim"], d)
            + config["num_layers"] * block + linear(n, d, channels))


class FakeWanPolicy(RectifiedFlowSampling):
    def __init__(self, network: FakeWanNetwork, vae: AutoencoderKL, cfg: ModelConfig, device: torch.device):
        self.transformer = network
        self.vae = vae
        self.dtype = DTYPES[cfg.dtype]
        self.device = device
        self.cfg_scale = cfg.cfg_scale
        self.spatial_ratio = 2 ** (len(vae.config.block_out_channels) - 1)

    @property
    def blocks(self) -> list[nn.Module]:
        return list(self.transformer.blocks)

    def latent_shape(self, num_frames: int, height: int, width: int) -> tuple[int, ...]:
        if num_frames != 1:
            raise ValueError(f"sampling.num_frames={num_frames}: {NAME} generates images (num_frames 1)")
        return (self.transformer.config.in_channels, height // self.spatial_ratio, width // self.spatial_ratio)

    def text_tokens(self, cond: TextConditioning) -> int:
        return cond.prompt_embeds.shape[1]

    def predict(self, latents: torch.Tensor, t: float, cond: TextConditioning) -> torch.Tensor:
        return guided_prediction(lambda x, c: self._forward(x, t, c), latents, cond, self.cfg_scale)

    def _forward(self, latents: torch.Tensor, t: float, cond: TextConditioning) -> torch.Tensor:
        timestep = torch.full((latents.shape[0],), t * 1000.0, device=self.device)
        with torch.autocast(self.device.type, dtype=self.dtype, enabled=self.dtype != torch.float32):
            out = self.transformer(latents.to(self.device, self.dtype), timestep,
                                   cond.prompt_embeds.to(self.device, self.dtype), cond.attention_mask.to(self.device))
        return out.float()

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        z = latents.to(self.device, self.vae.dtype) / self.vae.config.scaling_factor
        return to_frames(self.vae.decode(z, return_dict=False)[0])


def build_fake_wan(cfg: ModelConfig, device: torch.device, text_dim: int, pooled_dim: int) -> FakeWanPolicy:
    if cfg.size == "tiny":
        torch.manual_seed(cfg.init_seed)
        network = FakeWanNetwork(dim=cfg.tiny_heads * cfg.tiny_head_dim, heads=cfg.tiny_heads,
                                 num_layers=cfg.tiny_layers, text_embed_dim=text_dim)
        vae = tiny_autoencoder_kl(cfg, LATENT_CHANNELS)
    else:
        network, vae = load_pretrained(cfg, FakeWanNetwork, "transformer", AutoencoderKL, NAME)
    place_on_device(network, vae, cfg, device)
    return FakeWanPolicy(network, vae, cfg, device)


# A 1.3B-parameter-sized release, for the planner.
PUBLISHED_NETWORK = dict(in_channels=LATENT_CHANNELS, dim=1536, heads=12, num_layers=30, text_embed_dim=4096)
PUBLISHED_VAE = dict(in_channels=3, out_channels=3, latent_channels=LATENT_CHANNELS,
                     block_out_channels=(128, 256, 512, 512), down_block_types=("DownEncoderBlock2D",) * 4,
                     up_block_types=("UpDecoderBlock2D",) * 4, layers_per_block=2, sample_size=512,
                     scaling_factor=0.18215)

FAMILY = register_family(ModelFamily(
    name=NAME, build=build_fake_wan, pipeline="WanPipeline", network=FakeWanNetwork, component="transformer",
    forward_flops=fake_wan_flops, lora_targets=LORA_TARGETS,
    published=Published("Fake-Wan-1.3B", FakeWanPolicy, PUBLISHED_NETWORK, AutoencoderKL, PUBLISHED_VAE, 512,
                        lambda config: (config["text_embed_dim"], 768))))
