"""Wan2.2 TI2V-5B image-to-video: the text-to-video family's network, folder, FLOP count,
sequence parallelism and text encoder (models/wan_ti2v/), with first-frame conditioning
(policy.py) as WanImageToVideoPipeline does it.

A folder of its own, as hunyuan_video_i2v beside hunyuan_video: its rollout differs (the
first frame is given, not sampled), it needs first-frame latents (data.image_latents_dir),
and one folder is one family entry."""

from __future__ import annotations

import functools

from diffusers import AutoencoderKLWan, WanImageToVideoPipeline, WanTransformer3DModel

from fastvideo_grpo.models.family import ModelFamily, Published
from fastvideo_grpo.models.wan import LORA_TARGETS
from fastvideo_grpo.models.wan.published import TEXT_TOKENS, text_dims
from fastvideo_grpo.models.wan_ti2v.checks import sequence_split_problems
from fastvideo_grpo.models.wan_ti2v.flops import forward_flops
from fastvideo_grpo.models.wan_ti2v.published import WAN22_TI2V_5B, WAN22_VAE
from fastvideo_grpo.models.wan_ti2v.sequence_parallel import apply_sequence_parallel
from fastvideo_grpo.models.wan_ti2v.tiny import write_folder
from fastvideo_grpo.models.wan_ti2v_i2v.policy import WanTI2VImagePolicy, build_wan_ti2v_i2v

FAMILY = ModelFamily(
    name="wan_ti2v_i2v", build=build_wan_ti2v_i2v, pipeline="WanImageToVideoPipeline",
    network=WanTransformer3DModel, component="transformer", forward_flops=forward_flops, lora_targets=LORA_TARGETS,
    published=Published("Wan2.2-TI2V-5B", WanTI2VImagePolicy, WAN22_TI2V_5B, AutoencoderKLWan, WAN22_VAE,
                        TEXT_TOKENS, text_dims),
    sequence_parallel=apply_sequence_parallel,
    write_tiny_folder=functools.partial(write_folder, pipeline=WanImageToVideoPipeline),
    encoder="fastvideo_grpo.models.wan.encoder", image_conditioned=True, config_problems=sequence_split_problems)
