"""Wan text-to-video's released architectures, for the planner (`ModelFamily.published`)."""

from __future__ import annotations

# Wan-AI/Wan2.1-T2V-1.3B-Diffusers transformer/config.json (1.42e9 parameters).
WAN21_T2V_1_3B = dict(patch_size=(1, 2, 2), num_attention_heads=12, attention_head_dim=128, in_channels=16,
                      out_channels=16, text_dim=4096, freq_dim=256, ffn_dim=8960, num_layers=30, cross_attn_norm=True,
                      qk_norm="rms_norm_across_heads", eps=1e-6, image_dim=None, added_kv_proj_dim=None,
                      rope_max_seq_len=1024)
# Wan-AI/Wan2.1-T2V-14B-Diffusers transformer/config.json (1.43e10 parameters): diffusers'
# WanTransformer3DModel() defaults.
WAN21_T2V_14B = dict(WAN21_T2V_1_3B, num_attention_heads=40, ffn_dim=13824, num_layers=40)
# Wan-AI/Wan2.2-T2V-A14B-Diffusers: transformer/ (high noise) and transformer_2/ (low noise),
# each the 14B architecture, switched at model_index.json's boundary_ratio 0.875 (2.86e10
# parameters, 1.43e10 active per step); a WanExperts config.
WAN22_T2V_A14B = dict(_class_name="WanExperts", transformer_config=WAN21_T2V_14B, transformer_2_config=WAN21_T2V_14B,
                      boundary_ratio=0.875, num_train_timesteps=1000)
# Both folders' vae/config.json: AutoencoderKLWan() defaults (4x temporal, 8x spatial
# compression to 16 channels, normalised per channel by latents_mean and latents_std); lists,
# as the VAE concatenates them.
WAN21_VAE = dict(base_dim=96, z_dim=16, dim_mult=[1, 2, 4, 4], num_res_blocks=2, attn_scales=[],
                 temperal_downsample=[False, True, True], dropout=0.0)
# Tokens per prompt: WanPipeline's max_sequence_length, UMT5 padded with zeros to it.
TEXT_TOKENS = 512


def text_dims(config: dict) -> tuple[int, int]:
    """(text embedding dim, pooled dim) of one prompt's conditioning: UMT5-XXL's width (the
    experts' alike), and no pooled embedding (the preprocessing stores [n, 0])."""
    return config.get("transformer_config", config)["text_dim"], 0
