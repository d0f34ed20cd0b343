"""The terms a family's FLOP formula (its `ModelFamily.forward_flops`) is written in: one
row's matmuls at 2 FLOPs per multiply-add and attention's two [S, S] products as 4 S^2 D,
the convention of torch's `FlopCounterMode`, which `counter` runs for networks with no
short closed form (a UNet's convolutions at five resolutions)."""

from __future__ import annotations

import torch
from torch.utils.flop_counter import FlopCounterMode, sdpa_backward_flop_count, sdpa_flop_count


def linear(rows: int, fan_in: int, fan_out: int) -> int:
    return 2 * rows * fan_in * fan_out


def attention(queries: int, keys: int, dim: int) -> int:
    """softmax(Q K^T) V over all heads: two products of 2 * queries * keys * dim each."""
    return 4 * queries * keys * dim


def mlp_embedder(fan_in: int, dim: int) -> int:
    """diffusers' TimestepEmbedding / PixArtAlphaTextProjection on one row: fan_in -> dim -> dim."""
    return linear(1, fan_in, dim) + linear(1, dim, dim)


def _cpu_attention(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    return sdpa_flop_count(query_shape, key_shape, value_shape)


def _cpu_attention_backward(grad_out_shape, query_shape, key_shape, value_shape, *args, out_shape=None,
                            **kwargs) -> int:
    return sdpa_backward_flop_count(grad_out_shape, query_shape, key_shape, value_shape)


# torch's CPU attention kernels have no formula in FlopCounterMode; they are the same attention.
CPU_ATTENTION = {torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: _cpu_attention,
                 torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward: _cpu_attention_backward}


def counter() -> FlopCounterMode:
    """FlopCounterMode that also counts torch's CPU attention."""
    return FlopCounterMode(display=False, custom_mapping=CPU_ATTENTION)
