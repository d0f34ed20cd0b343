"""HunyuanVideo text-to-video: the adapter (policy.py), its FLOP count (flops.py), Ulysses
sequence parallelism (sequence_parallel.py) and the token split it needs (checks.py), the
released architecture (published.py), the tiny model (tiny.py) and the offline text encoder
(encoder.py)."""

from __future__ import annotations

from diffusers import AutoencoderKLHunyuanVideo, HunyuanVideoTransformer3DModel

from fastvideo_grpo.models.base import DIFFUSERS_BLOCK_LINEARS
from fastvideo_grpo.models.family import ModelFamily, Published
from fastvideo_grpo.models.hunyuan_video.checks import sequence_split_problems
from fastvideo_grpo.models.hunyuan_video.flops import forward_flops
from fastvideo_grpo.models.hunyuan_video.policy import HunyuanVideoPolicy, build_hunyuan_video
from fastvideo_grpo.models.hunyuan_video.published import HUNYUAN_VIDEO, HUNYUAN_VIDEO_VAE, text_dims
from fastvideo_grpo.models.hunyuan_video.sequence_parallel import apply_sequence_parallel
from fastvideo_grpo.models.hunyuan_video.tiny import write_folder

FAMILY = ModelFamily(
    name="hunyuan_video", build=build_hunyuan_video, pipeline="HunyuanVideoPipeline",
    network=HunyuanVideoTransformer3DModel, component="transformer", forward_flops=forward_flops,
    lora_targets=DIFFUSERS_BLOCK_LINEARS,
    published=Published("HunyuanVideo", HunyuanVideoPolicy, HUNYUAN_VIDEO, AutoencoderKLHunyuanVideo,
                        HUNYUAN_VIDEO_VAE, 256, text_dims),
    sequence_parallel=apply_sequence_parallel, write_tiny_folder=write_folder,
    encoder="fastvideo_grpo.models.hunyuan_video.encoder", pretrained_tiny=True,
    config_problems=sequence_split_problems)
