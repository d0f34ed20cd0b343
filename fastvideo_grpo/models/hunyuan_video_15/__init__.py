"""HunyuanVideo-1.5 text-to-video: the adapter (policy.py), its joint attention (attention.py),
its FLOP count (flops.py), Ulysses sequence parallelism (sequence_parallel.py) and the token
split it needs (checks.py), the released architecture (published.py), the tiny model
(tiny.py) and the offline Qwen2.5-VL + ByT5 text encoder (encoder.py)."""

from __future__ import annotations

from diffusers import AutoencoderKLHunyuanVideo15, HunyuanVideo15Transformer3DModel

from fastvideo_grpo.models.family import ModelFamily, Published
from fastvideo_grpo.models.hunyuan_video_15.checks import sequence_split_problems
from fastvideo_grpo.models.hunyuan_video_15.flops import forward_flops
from fastvideo_grpo.models.hunyuan_video_15.policy import HunyuanVideo15Policy, build_hunyuan_video_15
from fastvideo_grpo.models.hunyuan_video_15.published import (HUNYUAN_VIDEO_15_480P_T2V, HUNYUAN_VIDEO_15_VAE,
                                                              TEXT_TOKENS, text_dims)
from fastvideo_grpo.models.hunyuan_video_15.sequence_parallel import apply_sequence_parallel
from fastvideo_grpo.models.hunyuan_video_15.tiny import write_folder

# Each dual-stream block's video and text attention projections and both MLPs; the token
# refiner, the glyph and image projections, the embedders and the output projection keep
# their weights.
LORA_TARGETS = (r"transformer_blocks\.\d+\.(attn\.(to_q|to_k|to_v|to_out\.0|add_q_proj|add_k_proj|add_v_proj"
                r"|to_add_out)|ff\.net\.(0\.proj|2)|ff_context\.net\.(0\.proj|2))")

FAMILY = ModelFamily(
    name="hunyuan_video_15", build=build_hunyuan_video_15, pipeline="HunyuanVideo15Pipeline",
    network=HunyuanVideo15Transformer3DModel, component="transformer", forward_flops=forward_flops,
    lora_targets=LORA_TARGETS,
    published=Published("HunyuanVideo-1.5-480p-T2V", HunyuanVideo15Policy, HUNYUAN_VIDEO_15_480P_T2V,
                        AutoencoderKLHunyuanVideo15, HUNYUAN_VIDEO_15_VAE, TEXT_TOKENS, text_dims),
    sequence_parallel=apply_sequence_parallel, write_tiny_folder=write_folder,
    encoder="fastvideo_grpo.models.hunyuan_video_15.encoder", config_problems=sequence_split_problems)
