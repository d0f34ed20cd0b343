"""Ulysses sequence parallelism for HunyuanVideo-1.5, through its joint attention processor
(attention.py) and hooks: each sp rank holds S/sp of a sample's video tokens and all of its
text. The model file is untouched: hooks split the patch embedding's tokens and the RoPE
tables and gather the output projection's tokens."""

from __future__ import annotations

from torch import nn

from fastvideo_grpo.models.hunyuan_video.sequence_parallel import split_video_tokens
from fastvideo_grpo.models.hunyuan_video_15.attention import set_joint_attention
from fastvideo_grpo.parallel.distributed import World


def apply_sequence_parallel(transformer: nn.Module, world: World) -> None:
    """Split a HunyuanVideo-1.5 transformer's video tokens over the mesh's sp ranks."""
    split_video_tokens(transformer, world)
    set_joint_attention(transformer, world.sp_group)
