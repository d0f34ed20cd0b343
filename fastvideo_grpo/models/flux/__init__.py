"""FLUX.1 text-to-image: the adapter (policy.py), its FLOP count (flops.py), the released
architecture (published.py), the tiny model (tiny.py) and the offline text encoder
(encoder.py). No sequence parallelism."""

from __future__ import annotations

from diffusers import AutoencoderKL, FluxTransformer2DModel

from fastvideo_grpo.models.base import DIFFUSERS_BLOCK_LINEARS
from fastvideo_grpo.models.family import ModelFamily, Published
from fastvideo_grpo.models.flux.flops import forward_flops
from fastvideo_grpo.models.flux.policy import FluxPolicy, build_flux
from fastvideo_grpo.models.flux.published import FLUX_DEV, FLUX_VAE, text_dims
from fastvideo_grpo.models.flux.tiny import write_folder

FAMILY = ModelFamily(
    name="flux", build=build_flux, pipeline="FluxPipeline", network=FluxTransformer2DModel, component="transformer",
    forward_flops=forward_flops, lora_targets=DIFFUSERS_BLOCK_LINEARS,
    published=Published("FLUX.1-dev", FluxPolicy, FLUX_DEV, AutoencoderKL, FLUX_VAE, 512, text_dims),
    write_tiny_folder=write_folder, encoder="fastvideo_grpo.models.flux.encoder")
