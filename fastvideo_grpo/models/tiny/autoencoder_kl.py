"""The tiny image VAE of the families that use diffusers' AutoencoderKL (FLUX, SD)."""

from __future__ import annotations

from diffusers import AutoencoderKL

from fastvideo_grpo.config import ModelConfig


def tiny_autoencoder_kl(cfg: ModelConfig, latent_channels: int, **config) -> AutoencoderKL:
    """Four blocks of model.tiny_vae_channels: the 8x spatial compression of SD's and FLUX's
    VAEs. `config` adds the family's own settings (FLUX: scaling and shift factor, no quant convs)."""
    channels = cfg.tiny_vae_channels
    return AutoencoderKL(
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(channels,) * 4,
        layers_per_block=1,
        latent_channels=latent_channels,
        norm_num_groups=1,
        mid_block_add_attention=False,
        **config,
    )
