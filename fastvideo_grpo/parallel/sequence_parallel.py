"""Ulysses sequence parallelism's collectives, with their gradients; a model family applies
them to its network through an attention processor and hooks (its `sequence_parallel` entry,
e.g. models/hunyuan_video/sequence_parallel.py).

Each sp rank holds S/sp of a sample's tokens. Attention all-to-alls q/k/v from
[B, S/sp, H, D] to [B, S, H/sp, D], attends over the full sequence with its H/sp heads, and
all-to-alls back.

Gradients: every sp rank ends up with the part of each parameter gradient that flows
through its own tokens and heads, scaled by sp, so that the mean over sp ranks, which FSDP
computes along with the data-parallel mean, is the full gradient.
"""

from __future__ import annotations

import torch
import torch.distributed as dist


def all_to_all(x: torch.Tensor, group, scatter_dim: int, gather_dim: int) -> torch.Tensor:
    world = dist.get_world_size(group)
    send = torch.stack(x.chunk(world, dim=scatter_dim)).contiguous()
    recv = torch.empty_like(send)
    dist.all_to_all_single(recv, send, group=group)
    return torch.cat(recv.unbind(0), dim=gather_dim)


def all_gather(x: torch.Tensor, group, dim: int) -> torch.Tensor:
    parts = [torch.empty_like(x) for _ in range(dist.get_world_size(group))]
    dist.all_gather(parts, x.contiguous(), group=group)
    return torch.cat(parts, dim=dim)


def own_chunk(x: torch.Tensor, group, dim: int) -> torch.Tensor:
    """This rank's chunk as a tensor of its own, so the full tensor can be freed."""
    return x.chunk(dist.get_world_size(group), dim=dim)[dist.get_rank(group)].clone()


class AllToAll(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, group, scatter_dim: int, gather_dim: int):
        ctx.group, ctx.dims = group, (scatter_dim, gather_dim)
        return all_to_all(x, group, scatter_dim, gather_dim)

    @staticmethod
    def backward(ctx, grad):
        scatter_dim, gather_dim = ctx.dims
        return all_to_all(grad, ctx.group, gather_dim, scatter_dim), None, None, None


class GatherPartial(torch.autograd.Function):
    """All-gather whose consumers are replicated but receive partial gradients on each
    rank: backward sums them (reduce-scatter)."""

    @staticmethod
    def forward(ctx, x, group, dim: int):
        ctx.group, ctx.dim = group, dim
        return all_gather(x, group, dim)

    @staticmethod
    def backward(ctx, grad):
        grad = grad.contiguous()
        dist.all_reduce(grad, group=ctx.group)
        return own_chunk(grad, ctx.group, ctx.dim), None, None


class GatherReplicated(GatherPartial):
    """All-gather of the model output. Every rank computes the same loss from it, so each
    rank's output gradient is already complete: backward keeps its own slice, scaled by the
    group size so that the *average* of the sp ranks' parameter gradients (what FSDP's
    reduction computes) is the full gradient."""

    @staticmethod
    def backward(ctx, grad):
        return own_chunk(grad, ctx.group, ctx.dim) * dist.get_world_size(ctx.group), None, None
