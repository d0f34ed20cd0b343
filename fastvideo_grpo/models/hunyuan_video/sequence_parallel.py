"""Ulysses sequence parallelism for HunyuanVideo, through an attention processor and hooks.

Each sp rank holds S/sp of a sample's video tokens (and all of its text tokens). Attention
all-to-alls the video q/k/v from [B, S/sp, H, D] to [B, S, H/sp, D], attends over the full
sequence with its H/sp heads, and all-to-alls back. The model file is untouched: hooks
split the patch embedding and RoPE tables and gather the output projection.
"""

from __future__ import annotations

import torch
from diffusers.models.attention_dispatch import dispatch_attention_fn
from diffusers.models.embeddings import apply_rotary_emb
from torch import nn

from fastvideo_grpo.models.attention import MaskedTextAttention
from fastvideo_grpo.parallel.distributed import World
from fastvideo_grpo.parallel.sequence_parallel import AllToAll, GatherPartial, GatherReplicated, own_chunk


class UlyssesAttnProcessor:
    """HunyuanVideo's joint video+text attention with the video tokens split over `group`."""

    def __init__(self, group, attention_backend=None):
        self.group = group
        self._attention_backend = attention_backend
        self._parallel_config = None

    def _heads(self, x: torch.Tensor, attn) -> torch.Tensor:
        return x.unflatten(2, (attn.heads, -1))

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, image_rotary_emb=None):
        text_len = encoder_hidden_states.shape[1]
        # Video tokens (local shard): [B, S/sp, H, D]
        query = self._heads(attn.to_q(hidden_states), attn)
        key = self._heads(attn.to_k(hidden_states), attn)
        value = self._heads(attn.to_v(hidden_states), attn)
        if attn.norm_q is not None:
            query, key = attn.norm_q(query), attn.norm_k(key)
        if image_rotary_emb is not None:
            query = apply_rotary_emb(query, image_rotary_emb, sequence_dim=1)
            key = apply_rotary_emb(key, image_rotary_emb, sequence_dim=1)

        # Text tokens (replicated): dual-stream blocks project them separately, single-stream
        # blocks with the video projections; text gets no RoPE either way. [B, L, H, D]
        if attn.add_q_proj is not None:
            text_q = self._heads(attn.add_q_proj(encoder_hidden_states), attn)
            text_k = self._heads(attn.add_k_proj(encoder_hidden_states), attn)
            text_v = self._heads(attn.add_v_proj(encoder_hidden_states), attn)
            if attn.norm_added_q is not None:
                text_q, text_k = attn.norm_added_q(text_q), attn.norm_added_k(text_k)
        else:
            text_q = self._heads(attn.to_q(encoder_hidden_states), attn)
            text_k = self._heads(attn.to_k(encoder_hidden_states), attn)
            text_v = self._heads(attn.to_v(encoder_hidden_states), attn)
            if attn.norm_q is not None:
                text_q, text_k = attn.norm_q(text_q), attn.norm_k(text_k)

        # [B, S/sp, H, D] -> [B, S, H/sp, D]; text keeps this rank's heads.
        query, key, value = (AllToAll.apply(t, self.group, 2, 1) for t in (query, key, value))
        text_q, text_k, text_v = (own_chunk(t, self.group, 2) for t in (text_q, text_k, text_v))
        video_len = query.shape[1]
        if attention_mask is not None:
            # The model built the mask for its local S/sp video tokens; video is never masked.
            video_mask = attention_mask.new_ones(*attention_mask.shape[:-1], video_len)
            attention_mask = torch.cat([video_mask, attention_mask[..., -text_len:]], dim=-1)
        out = dispatch_attention_fn(
            torch.cat([query, text_q], dim=1), torch.cat([key, text_k], dim=1), torch.cat([value, text_v], dim=1),
            attn_mask=attention_mask, dropout_p=0.0, is_causal=False,
            backend=self._attention_backend, parallel_config=self._parallel_config,
        )
        video_out = AllToAll.apply(out[:, :video_len], self.group, 1, 2).flatten(2, 3).to(query.dtype)
        text_out = GatherPartial.apply(out[:, video_len:], self.group, 2).flatten(2, 3).to(query.dtype)

        if getattr(attn, "to_out", None) is not None:
            video_out = attn.to_out[1](attn.to_out[0](video_out))
        if getattr(attn, "to_add_out", None) is not None:
            text_out = attn.to_add_out(text_out)
        return video_out, text_out


def split_video_tokens(transformer: nn.Module, world: World) -> None:
    """Hooks that give each sp rank its S/sp of the patch embedding's video tokens and of the
    RoPE tables, and gather the output projection's tokens: the module layout HunyuanVideo
    and HunyuanVideo-1.5 share (x_embedder, rope, proj_out)."""
    group = world.sp_group
    sp = world.sp_size
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


def apply_sequence_parallel(transformer: nn.Module, world: World) -> None:
    """Split a HunyuanVideo transformer's video tokens over the mesh's sp ranks."""
    split_video_tokens(transformer, world)
    group = world.sp_group
    # Only the joint video+text attentions; the text refiner attends over text alone.
    processors = {}
    for name, processor in transformer.attn_processors.items():
        if name.startswith(("transformer_blocks.", "single_transformer_blocks.")):
            ulysses = UlyssesAttnProcessor(group, getattr(processor, "_attention_backend", None))
            processor = processor.around(ulysses) if isinstance(processor, MaskedTextAttention) else ulysses
        processors[name] = processor
    transformer.set_attn_processor(processors)
