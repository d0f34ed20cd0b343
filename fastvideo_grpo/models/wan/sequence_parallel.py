"""Ulysses sequence parallelism for Wan, through an attention processor and hooks.

Each sp rank holds S/sp of a sample's video tokens. Self-attention (attn1) all-to-alls q/k/v
from [B, S/sp, H, D] to [B, S, H/sp, D], attends over the whole video with its H/sp heads,
and all-to-alls back. Cross-attention (attn2) needs no communication: the rank's video
queries read the whole text, which every rank holds. The model file is untouched: hooks
split the first block's input and the RoPE tables and gather the output projection's
tokens (where diffusers' own context-parallel plan for Wan splits and gathers).
"""

from __future__ import annotations

import torch
from diffusers.models.attention_dispatch import dispatch_attention_fn
from torch import nn

from fastvideo_grpo.models.attention import MaskedTextAttention
from fastvideo_grpo.models.wan.experts import experts_of
from fastvideo_grpo.parallel.distributed import World
from fastvideo_grpo.parallel.sequence_parallel import AllToAll, GatherReplicated, own_chunk


def apply_rotary_emb(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """WanAttnProcessor's rotation of interleaved pairs: x [B, S, H, D], tables [1, S, 1, D]."""
    x1, x2 = x.unflatten(-1, (-1, 2)).unbind(-1)
    cos, sin = cos[..., 0::2], sin[..., 1::2]
    out = torch.empty_like(x)
    out[..., 0::2] = x1 * cos - x2 * sin
    out[..., 1::2] = x1 * sin + x2 * cos
    return out.type_as(x)


class UlyssesSelfAttention:
    """WanAttnProcessor's self-attention with the video tokens split over `group`."""

    def __init__(self, group, attention_backend=None):
        self.group = group
        self._attention_backend = attention_backend
        self._parallel_config = None

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, rotary_emb=None):
        # Local video tokens; the q/k norms are per token (over all heads). [B, S/sp, H, D]
        query = attn.norm_q(attn.to_q(hidden_states)).unflatten(2, (attn.heads, -1))
        key = attn.norm_k(attn.to_k(hidden_states)).unflatten(2, (attn.heads, -1))
        value = attn.to_v(hidden_states).unflatten(2, (attn.heads, -1))
        if rotary_emb is not None:  # the rank's rows of the tables
            query, key = apply_rotary_emb(query, *rotary_emb), apply_rotary_emb(key, *rotary_emb)
        # [B, S/sp, H, D] -> [B, S, H/sp, D]
        query, key, value = (AllToAll.apply(t, self.group, 2, 1) for t in (query, key, value))
        out = dispatch_attention_fn(query, key, value, attn_mask=attention_mask, dropout_p=0.0, is_causal=False,
                                    backend=self._attention_backend, parallel_config=self._parallel_config)
        out = AllToAll.apply(out, self.group, 1, 2).flatten(2, 3).type_as(query)
        return attn.to_out[1](attn.to_out[0](out))


def apply_sequence_parallel(network: nn.Module, world: World) -> None:
    """Split a Wan network's video tokens (each expert's) over the mesh's sp ranks."""
    for transformer in experts_of(network):
        split_tokens_of(transformer, world)


def split_tokens_of(transformer: nn.Module, world: World) -> None:
    group, sp = world.sp_group, world.sp_size
    heads = transformer.config.num_attention_heads
    if heads % sp:
        raise ValueError(f"parallel.sp_size={sp} must divide the model's {heads} attention heads")

    def split_tokens(module, args):
        hidden_states, *rest = args
        if hidden_states.shape[1] % sp:
            raise ValueError(f"sequence parallel: {hidden_states.shape[1]} video tokens do not split over "
                             f"parallel.sp_size={sp}; change sampling.height/width/num_frames")
        return (own_chunk(hidden_states, group, 1), *rest)

    def split_rope(module, inputs, output):
        return tuple(own_chunk(table, group, 1) for table in output)  # [1, S, 1, D]

    def gather_tokens(module, inputs, output):
        return GatherReplicated.apply(output, group, 1)

    transformer.blocks[0].register_forward_pre_hook(split_tokens)
    transformer.rope.register_forward_hook(split_rope)
    transformer.proj_out.register_forward_hook(gather_tokens)
    processors = {}
    for name, processor in transformer.attn_processors.items():
        if ".attn1." in f".{name}":
            ulysses = UlyssesSelfAttention(group, getattr(processor, "_attention_backend", None))
            processor = processor.around(ulysses) if isinstance(processor, MaskedTextAttention) else ulysses
        processors[name] = processor
    transformer.set_attn_processor(processors)
