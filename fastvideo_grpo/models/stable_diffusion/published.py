"""Stable Diffusion 1.5's released architecture, for the planner (`ModelFamily.published`)."""

from __future__ import annotations

# stable-diffusion-v1-5 unet/config.json; diffusers' defaults differ in cross_attention_dim (1280).
SD15_UNET = dict(sample_size=64, in_channels=4, out_channels=4, block_out_channels=(320, 640, 1280, 1280),
                 layers_per_block=2, cross_attention_dim=768, attention_head_dim=8)
SD15_VAE = dict(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(128, 256, 512, 512),
                down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
                layers_per_block=2, sample_size=512, scaling_factor=0.18215)


def text_dims(config: dict) -> tuple[int, int]:
    """(text embedding dim, pooled dim) of one prompt's conditioning: CLIP ViT-L's width, and
    a pooled 768 that the preprocessing does not store (SD has none: its encoder stores [n, 0]),
    which the planner counts, a few KB over."""
    return config["cross_attention_dim"], 768
