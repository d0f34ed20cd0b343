"""Wan2.2 TI2V-5B text-to-video: Wan2.1's adapter with per-token timesteps (policy.py), its
FLOP count (flops.py), Ulysses sequence parallelism splitting the timesteps with the tokens
(sequence_parallel.py), the token split it needs (checks.py), the released architecture
(published.py) and the tiny model (tiny.py); the text encoder is Wan's (UMT5). Image-to-video
from the same folder is model.family wan_ti2v_i2v (models/wan_ti2v_i2v/)."""

from __future__ import annotations

from diffusers import AutoencoderKLWan, WanTransformer3DModel

from fastvideo_grpo.models.family import ModelFamily, Published
from fastvideo_grpo.models.wan import LORA_TARGETS
from fastvideo_grpo.models.wan.published import TEXT_TOKENS, text_dims
from fastvideo_grpo.models.wan_ti2v.checks import sequence_split_problems
from fastvideo_grpo.models.wan_ti2v.flops import forward_flops
from fastvideo_grpo.models.wan_ti2v.policy import WanTI2VPolicy, build_wan_ti2v
from fastvideo_grpo.models.wan_ti2v.published import WAN22_TI2V_5B, WAN22_VAE
from fastvideo_grpo.models.wan_ti2v.sequence_parallel import apply_sequence_parallel
from fastvideo_grpo.models.wan_ti2v.tiny import write_folder

FAMILY = ModelFamily(
    name="wan_ti2v", build=build_wan_ti2v, pipeline="WanPipeline", network=WanTransformer3DModel,
    component="transformer", forward_flops=forward_flops, lora_targets=LORA_TARGETS,
    published=Published("Wan2.2-TI2V-5B", WanTI2VPolicy, WAN22_TI2V_5B, AutoencoderKLWan, WAN22_VAE, TEXT_TOKENS,
                        text_dims),
    sequence_parallel=apply_sequence_parallel, write_tiny_folder=write_folder,
    encoder="fastvideo_grpo.models.wan.encoder", config_problems=sequence_split_problems)
