"""Stable Diffusion 1.x text-to-image: the adapter (policy.py), its FLOP count (flops.py),
the released architecture (published.py), the tiny model (tiny.py) and the offline text
encoder (encoder.py). No sequence parallelism."""

from __future__ import annotations

from diffusers import AutoencoderKL, UNet2DConditionModel

from fastvideo_grpo.models.base import DIFFUSERS_BLOCK_LINEARS
from fastvideo_grpo.models.family import ModelFamily, Published
from fastvideo_grpo.models.stable_diffusion.flops import forward_flops
from fastvideo_grpo.models.stable_diffusion.policy import StableDiffusionPolicy, build_stable_diffusion
from fastvideo_grpo.models.stable_diffusion.published import SD15_UNET, SD15_VAE, text_dims
from fastvideo_grpo.models.stable_diffusion.tiny import write_folder

FAMILY = ModelFamily(
    name="stable_diffusion", build=build_stable_diffusion, pipeline="StableDiffusionPipeline",
    network=UNet2DConditionModel, component="unet", forward_flops=forward_flops, lora_targets=DIFFUSERS_BLOCK_LINEARS,
    published=Published("Stable Diffusion 1.5", StableDiffusionPolicy, SD15_UNET, AutoencoderKL, SD15_VAE, 77,
                        text_dims),
    write_tiny_folder=write_folder, encoder="fastvideo_grpo.models.stable_diffusion.encoder")
