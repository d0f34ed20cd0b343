"""HunyuanVideo-1.5's released architecture, for the planner (`ModelFamily.published`)."""

from __future__ import annotations

# hunyuanvideo-community/HunyuanVideo-1.5-480p_t2v transformer/config.json (8.3e9 parameters):
# diffusers' HunyuanVideo15Transformer3DModel() defaults with the 480p conversion's
# target_size and task_type (diffusers' scripts/convert_hunyuan_video1_5_to_diffusers.py).
HUNYUAN_VIDEO_15_480P_T2V = dict(in_channels=65, out_channels=32, num_attention_heads=16, attention_head_dim=128,
                                 num_layers=54, num_refiner_layers=2, mlp_ratio=4.0, patch_size=1, patch_size_t=1,
                                 qk_norm="rms_norm", text_embed_dim=3584, text_embed_2_dim=1472, image_embed_dim=1152,
                                 rope_theta=256.0, rope_axes_dim=(16, 56, 56), target_size=640, task_type="i2v",
                                 use_meanflow=False)
# Its vae/config.json: AutoencoderKLHunyuanVideo15() defaults (4x temporal, 16x spatial
# compression to 32 channels).
HUNYUAN_VIDEO_15_VAE = dict(latent_channels=32, block_out_channels=(128, 256, 512, 1024, 1024), layers_per_block=2,
                            spatial_compression_ratio=16, temporal_compression_ratio=4, scaling_factor=1.03682)
# Qwen tokens per prompt: HunyuanVideo15Pipeline's tokenizer_max_length.
TEXT_TOKENS = 1000
# ByT5 tokens per prompt: the pipeline's tokenizer_2_max_length.
GLYPH_TOKENS = 256


def text_dims(config: dict) -> tuple[int, int]:
    """(text embedding dim, pooled dim) of one prompt's conditioning: Qwen2.5-VL's width, and
    GLYPH_TOKENS ByT5 tokens packed with their mask (policy.pack_glyphs)."""
    return config["text_embed_dim"], GLYPH_TOKENS * (config["text_embed_2_dim"] + 1)
