"""Parallelism applied to an unmodified model, in a fixed order: SP, activation checkpointing, FSDP2,
then torch.compile per block."""

from __future__ import annotations

import inspect
import logging
from contextlib import contextmanager

import torch
from torch import nn
from torch.distributed.fsdp import CPUOffloadPolicy, FSDPModule, MixedPrecisionPolicy, fully_shard
from torch.distributed.tensor import DTensor
from torch.utils._pytree import tree_map_only

from fastvideo_grpo.config import Config
from fastvideo_grpo.models import check_sequence_parallel, model_family
from fastvideo_grpo.models.base import Policy
from fastvideo_grpo.parallel.distributed import World

logger = logging.getLogger(__name__)


# diffusers' names for the RoPE (cos, sin) tables in its transformers' block forwards.
ROTARY_ARGUMENTS = ("image_rotary_emb", "freqs_cis")


def cast_block_inputs(block: nn.Module, dtype: torch.dtype) -> None:
    """What FSDP2's cast_forward_inputs does to a block's inputs (floating tensors to the
    compute dtype), except to the RoPE tables: diffusers' pipelines compute the rotation in
    fp32 from fp32 tables, which a bf16 cast would round (0.4% on the tiny model's output)."""
    names = list(inspect.signature(block.forward).parameters)

    def cast(value):
        return tree_map_only(torch.Tensor, lambda t: t.to(dtype) if t.is_floating_point() else t, value)

    def hook(module, args, kwargs):
        args = tuple(a if i < len(names) and names[i] in ROTARY_ARGUMENTS else cast(a) for i, a in enumerate(args))
        return args, {k: v if k in ROTARY_ARGUMENTS else cast(v) for k, v in kwargs.items()}

    block.register_forward_pre_hook(hook, with_kwargs=True)


def apply_fsdp(model: nn.Module, blocks: list[nn.Module], world: World, param_dtype: torch.dtype,
               cpu_offload: bool) -> None:
    """fully_shard each block, then the root; bf16 compute with fp32 gradient reduction on GPU.

    The root does not cast its inputs: the adapters pass latents and embeddings in the compute
    dtype themselves, and the timestep in fp32, which a bf16 cast would round (981 -> 980).
    The blocks cast theirs but for the RoPE tables (`cast_block_inputs`)."""
    param_dtype = param_dtype if param_dtype != torch.float32 else None
    offload = {"offload_policy": CPUOffloadPolicy(pin_memory=world.device.type == "cuda")} if cpu_offload else {}
    block_policy = MixedPrecisionPolicy(param_dtype=param_dtype, reduce_dtype=torch.float32, cast_forward_inputs=False)
    root_policy = MixedPrecisionPolicy(param_dtype=param_dtype, reduce_dtype=torch.float32, cast_forward_inputs=False)
    for block in blocks:
        if param_dtype is not None:
            cast_block_inputs(block, param_dtype)
        fully_shard(block, mesh=world.dp_mesh, mp_policy=block_policy, **offload)
    fully_shard(model, mesh=world.dp_mesh, mp_policy=root_policy, **offload)


def apply_activation_checkpointing(model: nn.Module) -> None:
    """Recompute each block's activations in backward (diffusers' per-block checkpointing)."""
    model.enable_gradient_checkpointing()


def apply_compile(blocks: list[nn.Module]) -> None:
    """torch.compile each block in place (`nn.Module.compile`), as torchtitan compiles each
    transformer block: with dynamo inlining nn modules (torch's default), the blocks of one
    class reuse one compiled graph, and the module tree, its parameter names and so
    checkpoints stay as they are (no `_orig_mod`, unlike wrapping each in torch.compile). FSDP2's hooks
    run on the block's call, where dynamo leaves them eager (they are `_dynamo_disable`d);
    diffusers' activation checkpointing wraps the call from outside, so the recompute in
    backward reruns the compiled forward."""
    for block in blocks:
        block.compile()


def fsdp_param_dtype(cfg: Config) -> torch.dtype:
    """The dtype FSDP2 gathers and computes the parameters in: bf16 for model.dtype=bf16, else fp32."""
    return torch.bfloat16 if cfg.model.dtype == "bf16" else torch.float32


def parallelize(policy: Policy, world: World, cfg: Config) -> None:
    """Apply the parallelism to the policy's network and place it on the training device:
    whole without a mesh; under FSDP2 each block's weights move to the device as that block
    is sharded and only the rank's shards stay, so the network (loaded in host memory)
    is never whole on the device."""
    if world.sp_size > 1:
        check_sequence_parallel(cfg)
        model_family(cfg.model).sequence_parallel(policy.transformer, world)
    if cfg.parallel.activation_checkpointing and any(p.requires_grad for p in policy.transformer.parameters()):
        apply_activation_checkpointing(policy.transformer)
    if world.mesh is not None:
        apply_fsdp(policy.transformer, policy.blocks, world, fsdp_param_dtype(cfg), cfg.parallel.cpu_offload)
    elif not any(p.is_meta for p in policy.transformer.parameters()):  # a frozen copy is placed when filled
        policy.transformer.to(world.device)
    if cfg.model.compile:
        apply_compile(policy.blocks)


def reshard(model: nn.Module) -> None:
    """Free the unsharded parameters FSDP2 still holds, so that every parameter is its
    sharded DTensor again. A frozen network needs it before its weights are touched: with no
    backward, the root (reshard_after_forward off) keeps its parameters unsharded after a
    forward, as plain tensors."""
    for module in model.modules():
        if isinstance(module, FSDPModule):
            module.reshard()


def rollout_keeps_gathered(setting: str, gathered_bytes: int, free_bytes: int | None) -> bool:
    """Whether the rollout holds the network unsharded (parallel.rollout_reshard): `never`
    reshards, so it does; `always` does not; `auto` does when the gathered network
    (`gathered_bytes`, in the compute dtype) takes at most half the device memory not yet
    allocated at the rollout's start (`free_bytes`), leaving the other half to the rollout's
    activations and the VAE decode; with no device memory to budget (None: CPU), it does."""
    if setting != "auto":
        return setting == "never"
    return free_bytes is None or 2 * gathered_bytes <= free_bytes


def free_device_bytes(device: torch.device) -> int | None:
    """Device memory not allocated by tensors (the caching allocator's cache counts as
    free); None off CUDA."""
    if device.type != "cuda":
        return None
    return torch.cuda.get_device_properties(device).total_memory - torch.cuda.memory_allocated(device)


@contextmanager
def rollout_gathering(model: nn.Module, cfg: Config, device: torch.device):
    """Run a rollout with the FSDP2 blocks of `model` unsharded from their first forward to
    its end (one all-gather per block per rollout instead of one per forward) when
    `rollout_keeps_gathered` says so for parallel.rollout_reshard; the whole network is
    resharded when it ends."""
    blocks = [m for m in model.modules() if isinstance(m, FSDPModule) and m is not model]
    gathered = sum(p.numel() for p in model.parameters()) * fsdp_param_dtype(cfg).itemsize
    keep = blocks and rollout_keeps_gathered(cfg.parallel.rollout_reshard, gathered, free_device_bytes(device))
    for block in blocks if keep else ():
        block.set_reshard_after_forward(False, recurse=False)
    try:
        yield
    finally:
        for block in blocks if keep else ():
            block.set_reshard_after_forward(True, recurse=False)
        if blocks:  # the root's own weights too, which FSDP2 keeps gathered after a forward
            reshard(model)


def set_gradient_sync(model: nn.Module, enabled: bool) -> None:
    """Skip the gradient reduce-scatter on all but the last micro-batch of a window."""
    if isinstance(model, FSDPModule):
        model.set_requires_gradient_sync(enabled)


def clip_grad_norm(model: nn.Module, max_norm: float) -> float:
    params = [p for p in model.parameters() if p.grad is not None]
    norm = torch.nn.utils.clip_grad_norm_(params, max_norm)
    if isinstance(norm, DTensor):
        norm = norm.full_tensor()
    return norm.item()
