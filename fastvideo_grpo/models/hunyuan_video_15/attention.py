"""HunyuanVideo-1.5's joint video+text attention, as diffusers' HunyuanVideo15AttnProcessor2_0
computes it, with two changes that leave every video token's output unchanged:

- the text mask masks keys only ([B, 1, 1, S + L]), not the padded text queries as well:
  those rows are never read (the output keeps the video tokens, and a padded text token is a
  masked key in every later block); a key mask is what MaskedTextAttention hands to the
  flash kernels, and an all-ones mask arrives as None (no mask);
- with a process group, the video tokens are split over its ranks (Ulysses): q/k/v are
  all-to-all'ed from [B, S/sp, H, D] to [B, S, H/sp, D], each rank attends with its H/sp
  heads over the whole video and the whole text (which every rank holds), and the outputs
  go back.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from diffusers.models.attention_dispatch import dispatch_attention_fn
from diffusers.models.embeddings import apply_rotary_emb

from fastvideo_grpo.models.attention import MaskedTextAttention
from fastvideo_grpo.parallel.sequence_parallel import AllToAll, GatherPartial, own_chunk


class JointAttention:
    def __init__(self, group=None, attention_backend=None):
        self.group = group
        self._attention_backend = attention_backend
        self._parallel_config = None

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, image_rotary_emb=None):
        def heads(x: torch.Tensor) -> torch.Tensor:
            return x.unflatten(2, (attn.heads, -1))

        # Video tokens (this rank's under sequence parallelism): [B, S, H, D]
        query, key = attn.norm_q(heads(attn.to_q(hidden_states))), attn.norm_k(heads(attn.to_k(hidden_states)))
        value = heads(attn.to_v(hidden_states))
        if image_rotary_emb is not None:
            query = apply_rotary_emb(query, image_rotary_emb, sequence_dim=1)
            key = apply_rotary_emb(key, image_rotary_emb, sequence_dim=1)
        # Text tokens (replicated), no RoPE: [B, L, H, D]
        text_q, text_k = heads(attn.add_q_proj(encoder_hidden_states)), heads(attn.add_k_proj(encoder_hidden_states))
        text_v = heads(attn.add_v_proj(encoder_hidden_states))
        if attn.norm_added_q is not None:
            text_q = attn.norm_added_q(text_q)
        if attn.norm_added_k is not None:
            text_k = attn.norm_added_k(text_k)
        if self.group is not None:
            # [B, S/sp, H, D] -> [B, S, H/sp, D]; the text keeps this rank's heads.
            query, key, value = (AllToAll.apply(t, self.group, 2, 1) for t in (query, key, value))
            text_q, text_k, text_v = (own_chunk(t, self.group, 2) for t in (text_q, text_k, text_v))
        video_len = query.shape[1]
        if attention_mask is not None:  # [B, L] text mask -> [B, 1, 1, S + L] key mask
            attention_mask = F.pad(attention_mask.bool(), (video_len, 0), value=True)[:, None, None, :]
        out = dispatch_attention_fn(
            torch.cat([query, text_q], dim=1), torch.cat([key, text_k], dim=1), torch.cat([value, text_v], dim=1),
            attn_mask=attention_mask, dropout_p=0.0, is_causal=False, backend=self._attention_backend,
            parallel_config=self._parallel_config)
        video_out, text_out = out[:, :video_len], out[:, video_len:]
        if self.group is not None:
            video_out = AllToAll.apply(video_out, self.group, 1, 2)
            text_out = GatherPartial.apply(text_out, self.group, 2)
        video_out = attn.to_out[1](attn.to_out[0](video_out.flatten(2, 3).to(query.dtype)))
        return video_out, attn.to_add_out(text_out.flatten(2, 3).to(query.dtype))


def set_joint_attention(transformer, group=None) -> None:
    """JointAttention in every dual-stream block (the token refiner keeps its own); under
    model.attention's wrapper (MaskedTextAttention), the wrapper keeps its backends."""
    processors = {}
    for name, processor in transformer.attn_processors.items():
        if name.startswith("transformer_blocks."):
            joint = JointAttention(group, getattr(processor, "_attention_backend", None))
            processor = processor.around(joint) if isinstance(processor, MaskedTextAttention) else joint
        processors[name] = processor
    transformer.set_attn_processor(processors)
