"""HunyuanVideo image-to-video: its own adapter (policy.py: first-frame conditioning) over
the text-to-video family's network, FLOP count, tiny model and text encoder.

A folder of its own, not a second entry of hunyuan_video/: it is its own model.family with
its own pipeline, published config and data (first-frame latents), and one folder is one
family entry."""

from __future__ import annotations

from diffusers import AutoencoderKLHunyuanVideo, HunyuanVideoTransformer3DModel

from fastvideo_grpo.models.base import DIFFUSERS_BLOCK_LINEARS
from fastvideo_grpo.models.family import ModelFamily, Published
from fastvideo_grpo.models.hunyuan_video.flops import forward_flops
from fastvideo_grpo.models.hunyuan_video.published import HUNYUAN_VIDEO, HUNYUAN_VIDEO_VAE, text_dims
from fastvideo_grpo.models.hunyuan_video_i2v.policy import HunyuanVideoI2VPolicy, build_hunyuan_video_i2v

# hunyuanvideo-community/HunyuanVideo-I2V-33ch: image latent and mask concatenated on channels,
# no embedded guidance (trained with classifier-free guidance, as hunyuan_i2v.yaml does).
HUNYUAN_VIDEO_I2V = {**HUNYUAN_VIDEO, "in_channels": 33, "guidance_embeds": False,
                     "image_condition_type": "latent_concat"}

# No tiny folder: HunyuanVideoImageToVideoPipeline's Llava text encoder and image processor
# have no tiny counterpart yet; the tiny I2V model (model.size: tiny) is built in process.
# No sequence parallelism: parallel.sp_size must be 1.
# The text-only embeddings of the text-to-video encoder: the I2V pipeline's Llava would also
# embed the image into the prompt, which no preprocessing computes yet; the first-frame
# latents come from data_preprocess/preprocess_latents.py.
FAMILY = ModelFamily(
    name="hunyuan_video_i2v", build=build_hunyuan_video_i2v, pipeline="HunyuanVideoImageToVideoPipeline",
    network=HunyuanVideoTransformer3DModel, component="transformer", forward_flops=forward_flops,
    lora_targets=DIFFUSERS_BLOCK_LINEARS,
    published=Published("HunyuanVideo-I2V-33ch", HunyuanVideoI2VPolicy, HUNYUAN_VIDEO_I2V, AutoencoderKLHunyuanVideo,
                        HUNYUAN_VIDEO_VAE, 256, text_dims),
    encoder="fastvideo_grpo.models.hunyuan_video.encoder", image_conditioned=True)
