"""FLUX.1-dev's released architecture, for the planner (`ModelFamily.published`)."""

from __future__ import annotations

# black-forest-labs/FLUX.1-dev transformer/config.json; diffusers' defaults differ in
# guidance_embeds (False: FLUX.1-schnell).
FLUX_DEV = dict(patch_size=1, in_channels=64, num_layers=19, num_single_layers=38, attention_head_dim=128,
                num_attention_heads=24, joint_attention_dim=4096, pooled_projection_dim=768, guidance_embeds=True,
                axes_dims_rope=(16, 56, 56))
# Its vae/config.json; diffusers' AutoencoderKL() defaults are a one-block toy.
FLUX_VAE = dict(in_channels=3, out_channels=3, latent_channels=16, block_out_channels=(128, 256, 512, 512),
                down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
                layers_per_block=2, sample_size=1024, scaling_factor=0.3611, shift_factor=0.1159,
                use_quant_conv=False, use_post_quant_conv=False)


def text_dims(config: dict) -> tuple[int, int]:
    """(text embedding dim, pooled dim) of one prompt's conditioning: T5's width and CLIP's pooled width."""
    return config["joint_attention_dim"], config["pooled_projection_dim"]
