"""Wan2.1 and Wan2.2 A14B text-to-video: the adapter (policy.py), Wan2.2's two experts as one
network (experts.py), its FLOP count (flops.py), Ulysses sequence parallelism
(sequence_parallel.py) and the token split it needs (checks.py), the released architectures
(published.py), the tiny models (tiny.py) and the offline UMT5 text encoder (encoder.py)."""

from __future__ import annotations

from diffusers import AutoencoderKLWan, WanTransformer3DModel

from fastvideo_grpo.models.family import ModelFamily, Published
from fastvideo_grpo.models.wan.checks import wan_problems
from fastvideo_grpo.models.wan.experts import WanExperts, export_components, folder_network_config
from fastvideo_grpo.models.wan.flops import forward_flops
from fastvideo_grpo.models.wan.policy import WanPolicy, build_wan, load_folder_network
from fastvideo_grpo.models.wan.published import (TEXT_TOKENS, WAN21_T2V_1_3B, WAN21_T2V_14B, WAN21_VAE,
                                                 WAN22_T2V_A14B, text_dims)
from fastvideo_grpo.models.wan.sequence_parallel import apply_sequence_parallel
from fastvideo_grpo.models.wan.tiny import write_folder, write_moe_folder

# Each block's self-attention (attn1) and cross-attention (attn2) projections and its MLP (of
# either expert: transformer.blocks..., transformer_2.blocks...); the embedders and the output
# projection keep their weights.
LORA_TARGETS = r"(transformer(_2)?\.)?blocks\.\d+\.(attn[12]\.(to_q|to_k|to_v|to_out\.0)|ffn\.net\.(0\.proj|2))"


def published(name: str, network_config: dict) -> Published:
    return Published(name, WanPolicy, network_config, AutoencoderKLWan, WAN21_VAE, TEXT_TOKENS, text_dims)


FAMILY = ModelFamily(
    name="wan", build=build_wan, pipeline="WanPipeline", network=WanTransformer3DModel, component="transformer",
    forward_flops=forward_flops, lora_targets=LORA_TARGETS,
    published=(published("Wan2.1-T2V-1.3B", WAN21_T2V_1_3B), published("Wan2.1-T2V-14B", WAN21_T2V_14B),
               published("Wan2.2-T2V-A14B", WAN22_T2V_A14B)),
    sequence_parallel=apply_sequence_parallel, write_tiny_folder=write_folder,
    encoder="fastvideo_grpo.models.wan.encoder", config_problems=wan_problems,
    tiny_folders={"wan_moe": write_moe_folder}, networks=(WanExperts,), export_components=export_components,
    folder_network_config=folder_network_config, load_folder_network=load_folder_network, experts=True)
