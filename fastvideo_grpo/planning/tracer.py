"""One training micro-batch and a small VAE decode, traced on fake tensors: the planned world
(the fake process group and the trainer's mesh), FSDPMemTracker over the parallelised
policy (and NFT's old policy), and MemTracker with FlopCounterMode over the decode."""

from __future__ import annotations

import dataclasses
import functools
import math
import os
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.distributed._tools.fsdp2_mem_tracker import FSDPMemTracker
from torch.distributed._tools.mem_tracker import MemTracker
from torch.testing._internal.distributed.fake_pg import FakeStore
from torch.utils.flop_counter import FlopCounterMode

from fastvideo_grpo.algorithms.registry import algorithm_of
from fastvideo_grpo.algorithms.learner import build_old
from fastvideo_grpo.config import Config
from fastvideo_grpo.dtypes import DTYPES
from fastvideo_grpo.models import Policy, TextConditioning, model_family
from fastvideo_grpo.models.lora import OLD, adapter_weights
from fastvideo_grpo.parallel import World, init_distributed
from fastvideo_grpo.parallel.fsdp import parallelize, reshard
from fastvideo_grpo.planning.counts import micro_batch_size
from fastvideo_grpo.planning.policy import CPU, text_shape
from fastvideo_grpo.sampling.step_plan import StepPlan


# The tracker's categories (FSDPMemTracker's reference types) -> the plan's.
TRACKED = {"Sharded Param": "sharded_parameters", "Unsharded Param": "unsharded_parameters",
           "Sharded Grad": "gradients", "Unsharded Grad": "gradients", "OptState": "optimizer_state",
           "Activation": "activations", "Inputs": "activations", "Buffer": "activations", "Temp": "temporary",
           "All Gather": "communication", "Reduce Scatter": "communication"}


@contextmanager
def fake_world(cfg: Config, world_size: int):
    """The planned world in this process: the fake process group (no communication) as rank 0
    of `world_size` ranks, and the trainer's mesh on it, built by `init_distributed` as under
    torchrun (which it recognises by RANK)."""
    if dist.is_initialized():
        raise RuntimeError("plan: this process already has a process group; the planner stands up its own")
    dist.init_process_group("fake", store=FakeStore(), rank=0, world_size=world_size)
    previous = os.environ.get("RANK")
    os.environ["RANK"] = "0"
    try:
        yield init_distributed("cpu", cfg.parallel.sp_size, cfg.parallel.dp_replicate)
    finally:
        if previous is None:
            del os.environ["RANK"]
        else:
            os.environ["RANK"] = previous
        dist.destroy_process_group()


class _PeakTracker(FSDPMemTracker):
    """FSDPMemTracker that keeps only the global peak: the per-module peaks it also records
    cost half the run time at full size and are not read here. `also`: more FSDP2 networks
    to follow as its own (NFT's old policy, a frozen copy): their shards, and the unsharded
    blocks their forward all-gathers and frees, are not Activations that stay."""

    def __init__(self, mod: nn.Module, optm, also: tuple[nn.Module, ...] = ()):
        super().__init__(mod, optm)
        if also:
            self._root_mod = nn.ModuleList([mod, *also])  # what it instruments: every FSDP2 module under it

    def _update_peak_stats(self, peak_state) -> None:
        for dev, snap in self._curr_mem_snap.items():
            if self._peak_mem.get(dev, 0) < snap["Total"]:
                self._peak_mem[dev] = snap["Total"]
                self._peak_mem_snap[dev] = dict(snap)

    def _fsdp_state_pre_forward(self, fsdp_mod, orig_fsdp_state_pre_fw):
        """A second forward of the network in one step (NFT's old policy, a second adapter on
        the same network) starts its per-module stats afresh: FSDPMemTracker takes a second
        root call for a next iteration and refuses it, and those stats are not read here."""
        inner = super()._fsdp_state_pre_forward(fsdp_mod, orig_fsdp_state_pre_fw)

        @functools.wraps(inner)
        def again(*args, **kwargs):
            if not self._mod_tracker.is_bw:
                self.memory_tracking.pop(fsdp_mod, None)
            return inner(*args, **kwargs)

        return again

    def _fsdp_param_group_post_backward(self, fsdp_mod, orig_fsdp_param_group_post_backward):
        """A block the step never ran (the expert of the other noise levels) is skipped: FSDP2
        calls its post-backward too, which has nothing to do, but FSDPMemTracker's wrapper
        reads the unsharded parameters such a block never had."""
        inner = super()._fsdp_param_group_post_backward(fsdp_mod, orig_fsdp_param_group_post_backward)

        @functools.wraps(inner)
        def unless_unused(*args, **kwargs):
            group = fsdp_mod._get_fsdp_state()._fsdp_param_group
            if group is not None and not all(hasattr(p, "_unsharded_param") for p in group.fsdp_params):
                return orig_fsdp_param_group_post_backward(*args, **kwargs)
            return inner(*args, **kwargs)

        return unless_unused


def _by_category(snapshot: dict) -> dict[str, int]:
    out = dict.fromkeys(TRACKED.values(), 0)
    for key, value in snapshot.items():
        name = getattr(key, "value", key)
        if name in TRACKED:
            out[TRACKED[name]] += value
    return out


@dataclass
class TrackedStep:
    peak: dict[str, int]  # bytes by category at the micro-batch's peak
    at_rest: dict[str, int]  # what persists between iterations: sharded parameters, optimizer state
    sharded_bytes: int  # this rank's fp32 shards of the policy's parameters
    trainable_sharded_bytes: int
    old_policy_bytes: int = 0  # NFT: this rank's fp32 shards of the old policy's own weights (tracked)


def conditioning(cfg: Config, policy: Policy, rows: int, latent_shape: tuple[int, ...]) -> TextConditioning:
    """`rows` prompts' conditioning at the planned text shape (`text_shape`): a negative one
    under CFG, first-frame latents for an image-conditioned family and its image encoder's
    tokens where its network reads them."""
    tokens, dim, pooled, dtype = text_shape(cfg, policy)
    family = model_family(cfg.model)

    def one() -> TextConditioning:
        return TextConditioning(torch.randn(rows, tokens, dim, dtype=dtype),
                                torch.ones(rows, tokens, dtype=torch.long), torch.randn(rows, pooled, dtype=dtype))

    cond = one()
    if cfg.model.cfg_scale > 1:
        cond.negative = one()
    if family.image_conditioned:
        cond.image_latents = torch.randn(rows, latent_shape[0], 1, *latent_shape[2:], dtype=dtype)
    if family.image_tokens is not None:
        cond.image_embeds = torch.randn(rows, *family.image_tokens(cfg), dtype=dtype)
    return cond


def _fp32_shard_bytes(params) -> int:
    """This rank's shards of `params` (DTensors) in fp32, the dtype FSDP2 keeps them in."""
    with torch.no_grad():
        return sum(p.to_local().numel() * 4 for p in params)


def track_micro_batch(cfg: Config, policy: Policy, world: World, plan: StepPlan) -> TrackedStep:
    """One training micro-batch of `policy` (meta, parallelised here) on fake tensors under
    FSDPMemTracker, as the trainer runs it (its algorithm's `planner_micro_batch`), then
    backward (gradient sync on: the last micro-batch of a step), clipping and the AdamW step,
    on each rank's local shards (the DTensors' own tensors, without DTensor's dispatch per op).
    NFT's old policy is built as setup builds it (`learner.build_old`): with LoRA a second adapter
    on the policy's network, else a frozen copy parallelised like the policy, which the
    tracker follows too (its forward all-gathers its own blocks); either way its shards are
    reported as old_policy, not as sharded_parameters.

    Steady state from a first step: AdamW creates its state in the step, so the forward and
    backward peak plus that state is the peak of any later micro-batch. The tracked step is
    the fused AdamW (one kernel, no temporaries; the foreach one reads its step counts as
    numbers, which fake tensors do not have). The trainer's AdamW is the fused one unless
    train.adam_implementation says otherwise: foreach holds one fp32 temporary per trained
    shard (sqrt of exp_avg_sq) during the step, for_loop one shard's at a time; the step's
    peak is the memory before it, plus the state, plus that temporary."""
    s, t = cfg.sampling, cfg.train
    # Eager: the plan is the eager model's memory (model.compile's fused kernels hold less).
    eager = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, compile=False))
    old = None
    if algorithm_of(cfg).old_policy:
        with torch.device("meta"):  # a second adapter's new layers on the meta device too
            old = build_old(policy, cfg.model)  # after LoRA, before FSDP, as setup builds it
    copied = old is not None and old.transformer is not policy.transformer
    parallelize(policy, world, eager)
    if copied:
        parallelize(old, world, eager)
    latent_shape = policy.latent_shape(s.num_frames, s.height, s.width)
    samples = micro_batch_size(cfg)
    trace = algorithm_of(cfg).planner_micro_batch(cfg, policy, old, plan, samples, latent_shape,
                                                  lambda rows: conditioning(cfg, policy, rows, latent_shape))
    with FakeTensorMode(allow_non_fake_inputs=True):
        with torch.no_grad():
            policy.transformer.to_empty(device=world.device)
            if copied:
                old.transformer.to_empty(device=world.device)
            params = list(policy.transformer.parameters())
            trainable = [p for p in params if p.requires_grad]
            shards = [p.to_local() for p in trainable]  # without autograd: the DTensors' own local tensors
            inputs = trace.inputs()
        optimizer = torch.optim.AdamW(shards, lr=t.lr, betas=(t.adam_beta1, t.adam_beta2), eps=t.adam_eps,
                                      weight_decay=t.weight_decay, fused=True)
        tracker = _PeakTracker(policy.transformer, optimizer, also=(old.transformer,) if copied else ())
        with tracker:
            trace.loss(*inputs).backward()
            backward_peak = _by_category(tracker.get_tracker_snapshot("peak")[world.device])
            # A trained weight this micro-batch did not reach (the expert of the other noise
            # levels) holds its sharded gradient from the step's other micro-batches, and has
            # optimizer state.
            unreached = _fp32_shard_bytes(p for p in trainable if p.grad is None)
            backward_peak["gradients"] += unreached
            with torch.no_grad():
                for param, shard in zip(trainable, shards):
                    shard.grad = param.grad.to_local() if param.grad is not None else torch.zeros_like(shard)
            torch.nn.utils.clip_grad_norm_(shards, t.grad_clip, foreach=True)
            before_step = _by_category(tracker.get_tracker_snapshot()[world.device])
            optimizer.step()
            state = _by_category(tracker.get_tracker_snapshot()[world.device])["optimizer_state"]
            optimizer.zero_grad(set_to_none=True)
            policy.transformer.zero_grad(set_to_none=True)
        if copied:  # its root stays unsharded after a forward without backward (fsdp.reshard)
            reshard(old.transformer)
    trainable_bytes = _fp32_shard_bytes(trainable)
    old_bytes = 0
    if copied:
        old_bytes = _fp32_shard_bytes(old.transformer.parameters())
    elif old is not None:
        old_bytes = _fp32_shard_bytes(adapter_weights(policy.transformer, OLD).values())
    backward_peak["optimizer_state"] += state
    before_step["optimizer_state"] += state
    before_step["temporary"] += {"fused": 0, "foreach": trainable_bytes,
                                 "for_loop": max((_fp32_shard_bytes([p]) for p in trainable), default=0)}[
        t.adam_implementation]
    # The old policy's shards, tracked with the policy's, are its own category.
    at_rest = {"sharded_parameters": backward_peak["sharded_parameters"] - old_bytes, "optimizer_state": state}
    peak = dict(max(backward_peak, before_step, key=lambda snap: sum(snap.values())))
    peak["sharded_parameters"] -= old_bytes
    own = _fp32_shard_bytes(params) - (0 if copied else old_bytes)  # the policy's, without an old adapter
    return TrackedStep(peak=peak, at_rest=at_rest, sharded_bytes=own, trainable_sharded_bytes=trainable_bytes,
                       old_policy_bytes=old_bytes)


def _materialize(module: nn.Module) -> None:
    """Fake storage for a module built on the meta device (nn.Module.to_empty cannot swap
    fake parameters in)."""
    for sub in module.modules():
        for name, p in sub._parameters.items():
            if p is not None:
                sub._parameters[name] = nn.Parameter(torch.empty_like(p, device=CPU), requires_grad=p.requires_grad)
        for name, b in sub._buffers.items():
            if b is not None:
                sub._buffers[name] = torch.empty_like(b, device=CPU)


class _Decode(nn.Module):
    """vae.decode as a module call, the unit MemTracker follows."""

    def __init__(self, vae: nn.Module):
        super().__init__()
        self.vae = vae

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.vae.decode(z, return_dict=False)[0]


@dataclass
class DecodeProbe:
    bytes_per_voxel: float  # activation peak of an untiled decode per decoded voxel
    flops_per_voxel: float


def probe_decode(policy: Policy, latent_shape: tuple[int, ...]) -> DecodeProbe:
    """A small untiled decode of the policy's VAE (at most 2 latent frames of 16 x 16) on fake
    tensors, under MemTracker and FlopCounterMode."""
    with torch.device("meta"):
        vae = type(policy.vae).from_config(policy.vae.config).to(policy.vae.dtype)
    small = (latent_shape[0], *(min(n, 2) for n in latent_shape[1:-2]), *(min(n, 16) for n in latent_shape[-2:]))
    with FakeTensorMode(allow_non_fake_inputs=True):
        _materialize(vae)
        decode = _Decode(vae).eval()
        z = torch.randn(1, *small, dtype=policy.vae.dtype)
        tracker = MemTracker()
        with torch.no_grad(), tracker, FlopCounterMode(display=False) as counter:
            pixels = decode(z)
        snapshot = {getattr(k, "value", k): v for k, v in tracker.get_tracker_snapshot("peak")[CPU].items()}
    voxels = pixels[0, 0].numel()
    activations = snapshot["Total"] - snapshot.get("Parameter", 0) - snapshot.get("Buffer", 0)
    return DecodeProbe(activations / voxels, counter.get_total_flops() / voxels)


def _covered(extent: int, tile: int, stride: int) -> float:
    """Decoded extent over `extent` when tiles of `tile` start every `stride`: the overlap's cost."""
    if extent <= tile:
        return 1.0
    return sum(min(tile, extent - start) for start in range(0, extent, stride)) / extent


def decode_estimate(cfg: Config, policy: Policy, probe: DecodeProbe) -> tuple[int, float]:
    """(working bytes of one VAE call, FLOPs per decoded video). With tiling, diffusers' tiled
    decode runs one tile at a time: HunyuanVideo's 3D tiles (tile_sample_min_height/width/num_frames
    + 1 causal frame, strides tile_sample_stride_*), Wan's spatial ones (no *_num_frames),
    AutoencoderKL's square tiles of sample_size overlapping by tile_overlap_factor."""
    s, m = cfg.sampling, cfg.model
    vae = policy.vae
    frames, height, width = s.num_frames, s.height, s.width
    tiled = m.vae_tiling == "on" or (m.vae_tiling == "auto" and m.size == "full")
    dims = [(frames, frames, frames), (height, height, height), (width, width, width)]
    if tiled and hasattr(vae, "tile_sample_min_height"):
        # A VAE with spatial tiles only (Wan's) is counted as holding every frame at once: an
        # upper bound (Wan's decodes frame by frame through a causal cache).
        frame_tile = getattr(vae, "tile_sample_min_num_frames", frames - 1) + 1
        # HunyuanVideo-1.5's VAE overlaps its tiles by tile_overlap_factor instead of strides.
        strides = [getattr(vae, f"tile_sample_stride_{side}", None)
                   or int(getattr(vae, f"tile_sample_min_{side}") * (1 - vae.tile_overlap_factor))
                   for side in ("height", "width")]
        dims = [(frames, frame_tile, getattr(vae, "tile_sample_stride_num_frames", frame_tile)),
                (height, vae.tile_sample_min_height, strides[0]), (width, vae.tile_sample_min_width, strides[1])]
    elif tiled and hasattr(vae, "tile_sample_min_size"):
        size = vae.tile_sample_min_size
        size = size[0] if isinstance(size, (list, tuple)) else size
        stride = int(size * (1 - vae.tile_overlap_factor))
        dims = [(frames, frames, frames), (height, size, stride), (width, size, stride)]
    at_once = math.prod(min(extent, tile) for extent, tile, _ in dims)
    overlap = math.prod(_covered(extent, tile, stride) for extent, tile, stride in dims)
    video_bytes = 3 * frames * height * width * torch.finfo(DTYPES[m.dtype]).bits // 8
    working = s.decode_batch_size * (probe.bytes_per_voxel * at_once + 2 * video_bytes)
    return int(working), probe.flops_per_voxel * frames * height * width * overlap
