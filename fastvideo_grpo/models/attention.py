"""Attention kernels by model.attention, and text padding that does not rule them out.

HunyuanVideo pads every prompt's text to one length, and diffusers masks the padding on each
call: a [B, 1, 1, S + L] boolean key mask for the joint video+text attention and a
[B, 1, L, L] one in the token refiner, built even when no row is padded. flash-attn raises on
any mask, and SDPA leaves its flash kernel for the memory-efficient one. So:

- the adapter crops the text to the longest row's valid tokens (`crop_text`): where every
  row has that many, no token is padding and the masks are all ones;
- `MaskedTextAttention` hands an all-ones mask to the kernel as no mask (the same numbers:
  nothing was masked), and a mask that still masks (rows of different lengths) to the
  backend's masked kernel: flash-attn's varlen kernel over each row's valid keys, or SDPA
  with the mask.

Backends are diffusers' (`dispatch_attention_fn`), set on each processor; whether one can
run is whether its kernels import (diffusers' check), not the device: a flash-attn build on
the Python path is used on any device that it computes on.
"""

from __future__ import annotations

import collections
import copy

import torch
from diffusers.models.attention_dispatch import (AttentionBackendName, _check_attention_backend_requirements,
                                                 dispatch_attention_fn)
from diffusers.models.attention_processor import Attention, AttnProcessor2_0
from torch import nn
from torch._subclasses.fake_tensor import is_fake

# model.attention -> diffusers backends (for calls without a mask, for calls with a key mask).
# The flash-attn ones compute with the varlen kernel where rows keep different numbers of
# keys: each query attends to its row's valid keys, as with the mask.
BACKENDS: dict[str, tuple[str, str]] = {
    "sdpa": ("native", "native"),
    "flash": ("flash", "flash_varlen"),
    "flash_varlen": ("flash_varlen", "flash_varlen"),
    "flash3": ("_flash_3", "_flash_varlen_3"),
    "flash3_varlen": ("_flash_varlen_3", "_flash_varlen_3"),
}


def _has_values(tensor: torch.Tensor) -> bool:
    """False for the planner's fake tensors, whose values cannot be read."""
    return not is_fake(tensor)


def crop_text(embeds: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Text embeddings [B, L, D] and their mask [B, L] (ones, then zeros) cut to the longest
    row's valid tokens: padding that no row attends to costs every layer's time and, where it
    leaves a mask, the flash kernels. One device-to-host read of the mask."""
    if not _has_values(mask):
        return embeds, mask
    length = max(int(mask.sum(dim=1).max()), 1)
    return embeds[:, :length], mask[:, :length]


class AllOnes:
    """Whether a mask is all ones, read from the device once per mask: diffusers builds one
    per forward (and one in HunyuanVideo's token refiner) and hands the same tensor to every
    block, and activation checkpointing's recompute hands it again."""

    def __init__(self, remembered: int = 4):
        self._seen: collections.deque[tuple[torch.Tensor, bool]] = collections.deque(maxlen=remembered)

    @torch.compiler.disable  # a device-to-host read: a compiled block breaks its graph here
    def __call__(self, mask: torch.Tensor) -> bool:
        for seen, ones in self._seen:
            if seen is mask:
                return ones
        # A fake tensor (the planner) keeps its mask: the kernels' memory is the same.
        ones = _has_values(mask) and bool(mask.all())
        self._seen.append((mask, ones))
        return ones


class PlainAttention:
    """diffusers' AttnProcessor2_0 for an `Attention` without its optional parts (`is_plain`):
    HunyuanVideo's token refiner, the SD UNet's self- and cross-attention; through
    `dispatch_attention_fn`, so that model.attention's kernels run there too. The mask, where
    there is one, is [B, 1 or H, queries, keys] (the refiner's)."""

    _attention_backend = None
    _parallel_config = None

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, image_rotary_emb=None):
        context = hidden_states if encoder_hidden_states is None else encoder_hidden_states
        # [B, S, H, D]
        query, key, value = (proj(x).unflatten(2, (attn.heads, -1)) for proj, x in (
            (attn.to_q, hidden_states), (attn.to_k, context), (attn.to_v, context)))
        out = dispatch_attention_fn(query, key, value, attn_mask=attention_mask, dropout_p=0.0, is_causal=False,
                                    backend=self._attention_backend, parallel_config=self._parallel_config)
        return attn.to_out[1](attn.to_out[0](out.flatten(2, 3).to(query.dtype)))


def is_plain(attn: nn.Module) -> bool:
    """An `Attention` that AttnProcessor2_0 runs as projections, SDPA and the output
    projection alone: 3-dim inputs, no norms, no residual, no rescaling."""
    return (isinstance(attn, Attention) and isinstance(attn.processor, AttnProcessor2_0)
            and attn.spatial_norm is None and attn.group_norm is None and attn.norm_q is None
            and attn.norm_k is None and attn.norm_cross is None and not attn.residual_connection
            and attn.rescale_output_factor == 1.0)


def _with_backend(processor, backend: str):
    copied = copy.copy(processor)
    copied._attention_backend = backend
    return copied


class MaskedTextAttention:
    """A diffusers attention processor that calls `dispatch_attention_fn` (HunyuanVideo's,
    FLUX's, the Ulysses one), run with the backend for no mask unless the mask masks."""

    def __init__(self, processor, backends: tuple[str, str], all_ones: AllOnes):
        self.backends, self.all_ones = backends, all_ones
        self.unmasked = _with_backend(processor, backends[0])
        self.masked = _with_backend(processor, backends[1])

    def around(self, processor) -> "MaskedTextAttention":
        """`processor` with this one's backends (sequence parallelism swaps processors)."""
        return MaskedTextAttention(processor, self.backends, self.all_ones)

    # The signature is diffusers' joint-attention one: Attention.forward passes a processor
    # only the keyword arguments that its __call__ names.
    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, image_rotary_emb=None):
        if attention_mask is None or self.all_ones(attention_mask):
            return self.unmasked(attn, hidden_states, encoder_hidden_states, None, image_rotary_emb)
        return self.masked(attn, hidden_states, encoder_hidden_states, attention_mask, image_rotary_emb)


def apply_attention(network: nn.Module, name: str) -> None:
    """Run every attention of `network` with model.attention's kernels."""
    unmasked, masked = BACKENDS[name]
    for backend in {unmasked, masked}:
        try:  # diffusers' set_attention_backend check, without its process-wide default backend
            _check_attention_backend_requirements(AttentionBackendName(backend))
        except RuntimeError as e:
            raise RuntimeError(f"model.attention={name!r}: {e}") from e
    all_ones = AllOnes()
    for module in network.modules():
        if is_plain(module):
            module.set_processor(PlainAttention())
        if hasattr(getattr(module, "processor", None), "_attention_backend"):
            module.set_processor(MaskedTextAttention(module.processor, (unmasked, masked), all_ones))
