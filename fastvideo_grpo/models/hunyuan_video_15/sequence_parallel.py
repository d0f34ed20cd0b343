"""Ulysses sequence parallelism for HunyuanVideo-1.5, through its joint attention processor
(attention.py) and hooks: each sp rank holds S/sp of a sample's video tokens and all of its
text. The model file is untouched: hooks split the patch embedding's tokens and the RoPE
tables and gather the output projection's tokens."""

from __future__ import annotations

from torch import nn

from fastvideo_grpo.models.hunyuan_video_15.attention import set_joint_attention
from fastvideo_grpo.parallel.distributed import World
from fastvideo_grpo.parallel.sequence_parallel import GatherReplicated, own_chunk


def apply_sequence_parallel(transformer: nn.Module, world: World) -> None:
    """Split a HunyuanVideo-1.5 transformer's video tokens over the mesh's sp ranks."""
    group, sp = world.sp_group, world.sp_size
    heads = transformer.config.num_attention_heads
    if heads % sp:
        raise ValueError(f"parallel.sp_size={sp} must divide the model's {heads} attention heads")

    def split_tokens(module, inputs, output):  # [B, S, D]
        if output.shape[1] % sp:
            raise ValueError(f"sequence parallel: {output.shape[1]} video tokens do not split over "
                             f"parallel.sp_size={sp}; change sampling.height/width/num_frames")
        return own_chunk(output, group, 1)

    def split_rope(module, inputs, output):  # ([S, D], [S, D])
        return tuple(own_chunk(table, group, 0) for table in output)

    def gather_tokens(module, inputs, output):
        return GatherReplicated.apply(output, group, 1)

    transformer.x_embedder.register_forward_hook(split_tokens)
    transformer.rope.register_forward_hook(split_rope)
    transformer.proj_out.register_forward_hook(gather_tokens)
    set_joint_attention(transformer, group)
