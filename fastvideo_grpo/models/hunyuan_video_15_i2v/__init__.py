"""HunyuanVideo-1.5 image-to-video: its own adapter (policy.py: the first-frame condition
channels and the image's SigLIP tokens), tiny folder (tiny.py), offline image encoder
(image_encoder.py) and released architecture with its image tokens (published.py), over the
text-to-video family's network, text encoder, FLOP count, sequence parallelism and token
split (models/hunyuan_video_15/).

A folder of its own, as hunyuan_video_i2v beside hunyuan_video: its own pipeline, data
(first-frame latents and image tokens) and tiny folder, and one folder is one family entry."""

from __future__ import annotations

from diffusers import AutoencoderKLHunyuanVideo15, HunyuanVideo15Transformer3DModel

from fastvideo_grpo.models.family import ModelFamily, Published
from fastvideo_grpo.models.hunyuan_video_15 import LORA_TARGETS
from fastvideo_grpo.models.hunyuan_video_15.checks import sequence_split_problems
from fastvideo_grpo.models.hunyuan_video_15.flops import forward_flops
from fastvideo_grpo.models.hunyuan_video_15.published import HUNYUAN_VIDEO_15_VAE, TEXT_TOKENS, text_dims
from fastvideo_grpo.models.hunyuan_video_15.sequence_parallel import apply_sequence_parallel
from fastvideo_grpo.models.hunyuan_video_15_i2v.policy import HunyuanVideo15I2VPolicy, build_hunyuan_video_15_i2v
from fastvideo_grpo.models.hunyuan_video_15_i2v.published import HUNYUAN_VIDEO_15_480P_I2V, image_tokens
from fastvideo_grpo.models.hunyuan_video_15_i2v.tiny import write_folder

FAMILY = ModelFamily(
    name="hunyuan_video_15_i2v", build=build_hunyuan_video_15_i2v, pipeline="HunyuanVideo15ImageToVideoPipeline",
    network=HunyuanVideo15Transformer3DModel, component="transformer", forward_flops=forward_flops,
    lora_targets=LORA_TARGETS,
    published=Published("HunyuanVideo-1.5-480p-I2V", HunyuanVideo15I2VPolicy, HUNYUAN_VIDEO_15_480P_I2V,
                        AutoencoderKLHunyuanVideo15, HUNYUAN_VIDEO_15_VAE, TEXT_TOKENS, text_dims),
    sequence_parallel=apply_sequence_parallel, write_tiny_folder=write_folder,
    encoder="fastvideo_grpo.models.hunyuan_video_15.encoder", image_conditioned=True,
    image_encoder="fastvideo_grpo.models.hunyuan_video_15_i2v.image_encoder", image_tokens=image_tokens,
    config_problems=sequence_split_problems)
