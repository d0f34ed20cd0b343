"""HunyuanVideo's released architecture, for the planner (`ModelFamily.published`)."""

from __future__ import annotations

# hunyuanvideo-community/HunyuanVideo transformer/config.json: diffusers'
# HunyuanVideoTransformer3DModel() defaults are this 12.8B model.
HUNYUAN_VIDEO = dict(in_channels=16, out_channels=16, num_attention_heads=24, attention_head_dim=128, num_layers=20,
                     num_single_layers=40, num_refiner_layers=2, mlp_ratio=4.0, patch_size=2, patch_size_t=1,
                     qk_norm="rms_norm", guidance_embeds=True, text_embed_dim=4096, pooled_projection_dim=768,
                     rope_theta=256.0, rope_axes_dim=(16, 56, 56))
# Its vae/config.json: AutoencoderKLHunyuanVideo() defaults.
HUNYUAN_VIDEO_VAE = dict(latent_channels=16, block_out_channels=(128, 256, 512, 512), layers_per_block=2,
                         scaling_factor=0.476986, spatial_compression_ratio=8, temporal_compression_ratio=4)


def text_dims(config: dict) -> tuple[int, int]:
    """(text embedding dim, pooled dim) of one prompt's conditioning: its text encoder's
    (LLaVA's) width and CLIP's pooled width."""
    return config["text_embed_dim"], config["pooled_projection_dim"]
