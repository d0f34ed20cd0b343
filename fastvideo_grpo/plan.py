"""Will it fit? A config's per-rank memory and time, planned on a CPU before any GPU is paid for.

    python -m fastvideo_grpo.plan --config C [section.key=value ...] --nodes N --gpus-per-node G \\
        --gpu-memory-gb M [--ranks-per-node P] [--host-memory-gb H] [--peak-tflops T] [--mfu F] \\
        [--reserve-gb R] [--json]

The configured network is built at full size on the meta device (shapes, no storage) from
`model.path`'s transformer/ (or unet/) config.json when that folder exists, else from the
family's released config (`ModelFamily.published`). The planned world is stood up in this process with
the fake process group (rank 0 of nodes x ranks per node, no communication), the trainer's own mesh
(`init_distributed`) and parallelism (`parallelize`: sequence parallelism, activation
checkpointing, FSDP2 per block then root, bf16 parameters, fp32 reduction) are applied to
it, the weights become fake tensors, and one training micro-batch runs under
`FSDPMemTracker`: for GRPO the adapter's `predict` at the configured latent shape, the
sampler's SDE step and the clipped GRPO loss; for NFT (train.algorithm=nft) the clean
latents noised afresh, the policy's `predict`, the old policy's without autograd and
`nft.nft_loss` (nft.micro_batch_loss; GRPO's is grpo.micro_batch_loss, the update's own); then
backward, gradient clipping and the AdamW step (fused, on
the local shards; the step state it creates is added to the forward/backward peak, as at any
later step, and with train.adam_implementation=foreach its one fp32 temporary per shard to
the step's; for_loop holds one shard's at a time, fused none). Not modelled: the CUDA caching
allocator and the streams on which FSDP2 overlaps its collectives on GPU (a buffer may live a
block longer than on CPU) - what the fragmentation item of the reserve is for. Attention is
torch's SDPA on CPU whatever model.attention names: flash-attn's kernels, as SDPA's flash and
memory-efficient ones, hold O(tokens) memory (the output and its log-sum-exp), never the
[tokens, tokens] scores. The text is planned at its full length: a run crops it to the
longest prompt of each forward.

NFT's old policy is built as the trainer builds it (`learner.build_old`) and tracked with the
policy: `old_policy` is its shards - with LoRA a second frozen adapter on the policy's own
network (the adapter's weights only), else a frozen full copy (the sharded fp32 weights,
and its forward all-gathers its own blocks). NFT's rollout plan is `step_plan.ode_plan` (every
step deterministic, sampled by the old policy); its micro-batches are nft.micro_batch_size
(else sampling.rollout_batch_size) samples at one level, train.gradient_accumulation_steps
samples an optimizer step, each kept sample trained at max(1, int(N x policy_update.timestep_fraction))
levels.

What the tracker does not see is estimated from shapes and labelled so:
- `trajectory`: prompts x G x (visited levels) latents in fp32, their log-probs, the scored
  latents and the rollout's conditioning, on the device unless sampling.trajectory_device=cpu
  (under NFT only the scored latents and the conditioning: its training reads nothing else);
- `accumulated_gradient`: with parallel.reduce_grads_every_micro_batch=false and more than one
  micro-batch per optimizer step, FSDP2 holds every trained parameter's unsharded gradient
  between micro-batches, upcast to the fp32 reduce dtype (`FSDPParam.to_accumulated_grad_if_needed`):
  trained parameters x 4 bytes;
- `vae_weights` (parameters x dtype bytes) and `vae_decode`: the activation bytes per decoded
  voxel (pixel x frame) of a small untiled decode, tracked on fake tensors with MemTracker,
  times the voxels decoded at once (one tile when model.vae_tiling is on) times
  sampling.decode_batch_size, plus twice the decoded batch (the tiles kept for blending and
  their concatenation);
- `ema` (train.ema_decay > 0) and `reference` (grpo.kl_weight > 0, nft.kl_weight > 0 for NFT):
  a copy of the sharded fp32 weights each (the reference's forward is not included);
- with parallel.cpu_offload the sharded parameters, gradients and optimizer state are moved to
  the host column;
- `loading`: the largest FSDP unit (a block, or the root's own weights) whole in fp32, as
  `parallelize` moves it from host memory to the device before keeping its shards;
- `rollout_gathered`: the network in the compute dtype, when parallel.rollout_reshard keeps it
  gathered through the rollout (`fsdp.rollout_keeps_gathered`, from the decode phase's
  tensors at the rollout's start; reported under `rollout_reshard`);
- `reward_model`: the reward models' GPU memory (`REWARD_GPU_GB`), on the planned rank when
  reward.device is its GPU (a reward process on a GPU below --ranks-per-node, or inline
  scoring on CUDA); a reward GPU of its own is checked on its own (`reward`, fits_by.reward_gpu);
- the reserve, assumed: `cuda_context` (CUDA_CONTEXT_BYTES), `nccl_buffers`
  (NCCL_COMMUNICATOR_BYTES per communicator of the mesh) and `fragmentation` (FRAGMENTATION
  of each phase's tensors); --reserve-gb replaces them with one `reserved` number.

Three phases peak: setup (the policy's fp32 shards beside the unit being sharded, or then the
frozen copies' and EMA's shards, and the VAE: `setup_phase`), the training micro-batch
(tracked + trajectory + accumulated gradient + VAE weights + EMA/reference/old policy) and the
rollout's VAE decode (persistent state + trajectory + VAE + the gathered network). The
rollout's forward runs without autograd: fewer activations than the training step's, beside
the decode phase's state. A node's host
memory peaks while it loads: parallel.loaders_per_node ranks at a time each hold the fp32
network (`host_per_node`). The plan fits when the peak phase fits --gpu-memory-gb, the
node's host peak --host-memory-gb and a reward GPU of its own the reward models. GB are
2**30 bytes. FLOPs per rank per iteration, the count the trainer logs its TFLOP/s from
(flops.py, one row's forward from the network's config): rollout = forwards (the step plan's,
a shared prefix once per group; NFT: G x N per prompt) x one forward; training = forward + backward (2 forwards, 1
with LoRA) + the recompute of activation checkpointing per trained (sample, timestep), +1
forward per frozen network (KL reference, NFT's old policy); decode = FLOPs per decoded voxel
of the small decode x voxels x the tiles' overlap. Seconds = FLOPs / (peak TFLOPS x MFU).

`--json` prints one object with these keys: config, overrides, family, architecture,
world {nodes, gpus_per_node, ranks_per_node, world_size, dp_replicate, dp_shard, sp_size},
gpu_memory_gb, reserve_gb (the reserve at the peak phase), reserve_items_gb {item: GB}, fits,
fits_by {gpu, host, reward_gpu}, headroom_gb, parameters, trainable_parameters, peak_gb,
peak_phase, setup_peak_gb, micro_batch_peak_gb (the tracked step alone), memory_gb {category:
GB at the peak phase}, memory_by_phase_gb {setup, train, decode: {category: GB}}, host_gb
{category: GB per rank}, host_memory_gb, host_per_node_gb {loading, training},
host_peak_per_node_gb, reward {mode, device, models, gpu_gb, unestimated, gpu,
shared_with_training_rank}, rollout_reshard {setting, keeps_gathered, gathered_gb}, tracked, estimated
(category names; old_policy is tracked), flops {rollout, train, decode, total}, forwards
{rollout, train} (rows through the network per rank, as the trainer counts them in
transformer_forwards_rollout / _train: CFG's second row and the frozen networks' forwards included),
seconds_per_iteration, peak_tflops, mfu, knobs [{override, peak_gb, headroom_gb, fits,
lower_bound}] (the knobs that fit, each re-planned), knobs_checked (every knob tried;
lower_bound: not re-planned because what it leaves unchanged is already over the budget),
notes, plan_seconds, plan_cpu_seconds (the plan's own time, knobs included).
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import logging
import math
import os
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.distributed._tools.fsdp2_mem_tracker import FSDPMemTracker
from torch.distributed._tools.mem_tracker import MemTracker
from torch.testing._internal.distributed.fake_pg import FakeStore
from torch.utils.flop_counter import FlopCounterMode

from fastvideo_grpo.algorithms import grpo, nft
from fastvideo_grpo.algorithms.learner import build_old
from fastvideo_grpo.algorithms.registry import algorithm_of
from fastvideo_grpo.cli.args import number
from fastvideo_grpo.config import Config, ConfigError, load_config, to_dict, validate
from fastvideo_grpo.dtypes import DTYPES
from fastvideo_grpo.flops import forward_flops, frozen_forwards, iteration_flops
from fastvideo_grpo.models import Policy, TextConditioning, build_policy, check_model_config, model_family
from fastvideo_grpo.models.lora import OLD, adapter_weights, apply_lora
from fastvideo_grpo.parallel import World, init_distributed
from fastvideo_grpo.parallel.fsdp import fsdp_param_dtype, parallelize, reshard, rollout_keeps_gathered
from fastvideo_grpo.quiet import silence_library_noise
from fastvideo_grpo.sampling.rollout import rows_per_sample
from fastvideo_grpo.sampling.step_plan import StepPlan

logger = logging.getLogger(__name__)

GB = 2**30
CPU = torch.device("cpu")


# Inputs the planner never reads; the shipped full-size configs leave them empty.
UNREAD_KEYS = ("model.path", "data.embeddings_dir", "data.image_latents_dir")
# Config keys that change no tensor of the tracked micro-batch: a knob that only sets these
# reuses the tracked result.
UNTRACKED_KEYS = (("sampling", "trajectory_device"), ("sampling", "decode_batch_size"),
                  ("parallel", "reduce_grads_every_micro_batch"), ("parallel", "device"),
                  ("parallel", "rollout_reshard"), ("parallel", "loaders_per_node"))
# The tracker's categories (FSDPMemTracker's reference types) -> the plan's.
TRACKED = {"Sharded Param": "sharded_parameters", "Unsharded Param": "unsharded_parameters",
           "Sharded Grad": "gradients", "Unsharded Grad": "gradients", "OptState": "optimizer_state",
           "Activation": "activations", "Inputs": "activations", "Buffer": "activations", "Temp": "temporary",
           "All Gather": "communication", "Reduce Scatter": "communication"}
CATEGORIES = ("sharded_parameters", "loading", "unsharded_parameters", "rollout_gathered", "gradients",
              "accumulated_gradient", "optimizer_state", "activations", "temporary", "communication", "trajectory",
              "vae_weights", "vae_decode", "ema", "reference", "old_policy", "reward_model", "cuda_context",
              "nccl_buffers", "fragmentation", "reserved")
# Assumed, not planned: the reserve's items (or --reserve-gb's one number).
ASSUMED = ("cuda_context", "nccl_buffers", "fragmentation", "reserved")
# The CUDA context with cuBLAS/cuDNN's kernels and workspaces, per GPU.
CUDA_CONTEXT_BYTES = int(0.75 * GB)
# One NCCL communicator's buffers (channels x peers x protocol buffers; NVLS on H100 takes more).
NCCL_COMMUNICATOR_BYTES = int(0.5 * GB)
# The caching allocator's fragmentation: cached blocks no request of the moment fits, as a
# fraction of the allocated bytes.
FRAGMENTATION = 0.10
# A reward model's GPU memory: weights and a batch of reward.max_batch videos' activations.
# VideoAlign: Qwen2-VL-2B in bf16 (4.1 GB of weights); HPS-v2.1 and PickScore: a ViT-H-14
# CLIP in fp32 (3.7 GB); clip: a ViT-L/14 CLIP in fp32 (1.6 GB; model.path may name another).
# A model not listed is noted, not counted.
REWARD_GPU_GB = {"videoalign": 6.0, "hps": 5.0, "pickscore": 5.0, "clip": 2.5}


@dataclass(frozen=True)
class Cluster:
    nodes: int
    gpus_per_node: int
    gpu_memory_gb: float
    peak_tflops: float = 989.0  # H100/H800 SXM bf16 dense
    mfu: float = 0.35
    reserve_gb: float | None = None  # None: the itemised estimate (CUDA context, NCCL, fragmentation)
    ranks_per_node: int = 0  # training processes per node; 0: one per GPU
    host_memory_gb: float = 1024.0

    @property
    def node_ranks(self) -> int:
        return self.ranks_per_node or self.gpus_per_node

    @property
    def world_size(self) -> int:
        return self.nodes * self.node_ranks


def load_plan_config(path: str | Path, overrides: list[str] = ()) -> Config:
    """The config exactly as the trainer loads it, except that the weight and data folders a
    full-size run needs may be empty (`UNREAD_KEYS`): the planner reads neither."""
    cfg = load_config(path, overrides, check=False)
    validate(cfg, may_be_empty=UNREAD_KEYS)
    check_model_config(cfg, may_be_empty=UNREAD_KEYS)
    algorithm_of(cfg)  # train.algorithm is in the table
    return cfg


def planned_policy(cfg: Config) -> tuple[Policy, str]:
    """The configured policy with its network and VAE on the meta device, and where the
    architecture came from. The tiny model is built as the trainer builds it, then moved."""
    m = cfg.model
    if m.size == "tiny":
        # SDPA whatever model.attention names: flash-attn need not import where a plan is made.
        policy = build_policy(dataclasses.replace(m, attention="sdpa"), CPU, m.tiny_text_dim, m.tiny_pooled_dim)
        policy.transformer.to("meta")
        policy.vae.to("meta")
        return policy, "model.size=tiny"
    family = model_family(m)
    pub = family.published
    if pub is None:
        raise ConfigError(f"model.family: {m.family!r} has no published full-size architecture (its ModelFamily's "
                          "published is None); plan it with model.size=tiny")
    name = pub.name
    root = Path(m.path) if m.path else None
    if root is not None and not root.is_dir():
        # A typo would otherwise plan the released architecture instead of the user's folder.
        raise FileNotFoundError(f"model.path={m.path}: no such folder (leave model.path empty to plan the released "
                                f"{name} architecture)")
    if root is not None:
        configs = []
        for sub in (family.component, "vae"):
            file = root / sub / "config.json"
            if not file.is_file():
                raise FileNotFoundError(f"model.path={m.path}: no {sub}/config.json; expected a diffusers-format "
                                        f"{name} folder")
            configs.append(json.loads(file.read_text()))
        network_config, vae_config = configs
        source = f"{root / family.component / 'config.json'}"
    else:
        network_config, vae_config = pub.network_config, pub.vae_config
        source = f"released {pub.name} config (model.path is empty)"
    with torch.device("meta"):
        network = family.network.from_config(network_config)
        vae = pub.vae.from_config(vae_config).to(DTYPES[m.dtype])
    vae.requires_grad_(False)
    return pub.policy(network, vae, m, CPU), source


def text_shape(cfg: Config, policy: Policy) -> tuple[int, int, int, torch.dtype]:
    """(tokens, text dim, pooled dim, dtype) of one prompt's precomputed conditioning."""
    m = cfg.model
    if m.size == "tiny":
        return cfg.data.max_text_tokens, m.tiny_text_dim, m.tiny_pooled_dim, torch.float32
    config = policy.transformer.config
    dim = next(config[k] for k in ("text_embed_dim", "joint_attention_dim", "cross_attention_dim") if k in config)
    return model_family(m).published.text_tokens, dim, config.get("pooled_projection_dim", 768), torch.bfloat16


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


def kept_per_prompt(cfg: Config) -> int:
    """Samples of a group that train: policy_update.best_of of them, else the whole group."""
    return cfg.policy_update.best_of or cfg.sampling.group_size


def trained_timesteps(cfg: Config, plan: StepPlan) -> int:
    """Timesteps each kept sample trains at: NFT draws them from all the sampler's levels,
    GRPO from the plan's trainable transitions."""
    return algorithm_of(cfg).trained_timesteps(cfg, plan)


def samples_per_step(cfg: Config) -> int:
    """Kept samples of one optimizer step (train.gradient_accumulation_steps counts samples)."""
    return min(cfg.train.gradient_accumulation_steps, cfg.train.prompts_per_iteration * kept_per_prompt(cfg))


def micro_batch_limit(cfg: Config) -> int:
    """Most samples of one micro-batch of a step: GRPO's mirror the rollout batches (a stored
    log-prob matches only the same batch's forward); NFT's are nft.micro_batch_size."""
    return algorithm_of(cfg).micro_batch_samples(cfg)


def micro_batch_size(cfg: Config) -> int:
    """Samples of the largest training micro-batch: one optimizer step's samples of one
    rollout batch (GRPO) or of one NFT micro-batch."""
    return min(micro_batch_limit(cfg), samples_per_step(cfg))


def _conditioning(cfg: Config, policy: Policy, rows: int, latent_shape: tuple[int, ...]) -> TextConditioning:
    tokens, dim, pooled, dtype = text_shape(cfg, policy)

    def one() -> TextConditioning:
        return TextConditioning(torch.randn(rows, tokens, dim, dtype=dtype),
                                torch.ones(rows, tokens, dtype=torch.long), torch.randn(rows, pooled, dtype=dtype))

    cond = one()
    if cfg.model.cfg_scale > 1:
        cond.negative = one()
    if model_family(cfg.model).image_conditioned:
        cond.image_latents = torch.randn(rows, latent_shape[0], 1, *latent_shape[2:], dtype=dtype)
    return cond


def _as_numbers(sampler):
    """The sampler with its tensors (noise levels, DDIM's alpha_bar) as Python lists: the steps
    only read numbers from them, and under fake tensors a tensor's element has no value."""
    if isinstance(sampler, torch.Tensor):
        return sampler.tolist()
    if not dataclasses.is_dataclass(sampler):
        return sampler
    fields = {f.name: getattr(sampler, f.name) for f in dataclasses.fields(sampler)}
    return dataclasses.replace(sampler, **{name: _as_numbers(value) for name, value in fields.items()
                                           if isinstance(value, torch.Tensor) or dataclasses.is_dataclass(value)})


@dataclass
class MicroBatchTrace:
    """An algorithm's training micro-batch for `track_micro_batch`: `inputs()` makes, under
    fake tensors and without autograd, what the rollout stored for it; `loss(*inputs)` runs
    the micro-batch's forwards to its loss, under the tracker."""

    inputs: object
    loss: object


def grpo_micro_batch(cfg: Config, policy: Policy, plan: StepPlan, samples: int,
                     latent_shape: tuple[int, ...]) -> MicroBatchTrace:
    """The GRPO update's micro-batch through grpo.micro_batch_loss: predict at the first
    trained transition, the SDE step to the stored next latent, the clipped loss. The KL
    reference's forward is left out, as NFT's (its weights are estimated)."""
    s = cfg.sampling
    sampler = _as_numbers(policy.sampler(s))
    schedule = plan.schedule(policy.sampler(s)).tolist()
    step = plan.trainable[0]

    def inputs():
        return (torch.randn(samples, 2, *latent_shape), torch.randn(samples), torch.randn(samples),
                _conditioning(cfg, policy, samples, latent_shape))

    def loss(trajectory, old_log_prob, advantages, cond):
        x, x_next = trajectory[:, 0].clone(), trajectory[:, 1].clone()  # the trainer indexes the store: copies
        return grpo.micro_batch_loss(policy, None, sampler, schedule, step, x, x_next, old_log_prob, advantages,
                                     cond.select(slice(0, samples)), cfg.grpo.clip_range).loss

    return MicroBatchTrace(inputs, loss)


def nft_micro_batch(cfg: Config, policy: Policy, old: Policy, samples: int,
                    latent_shape: tuple[int, ...]) -> MicroBatchTrace:
    """nft_update's micro-batch through nft.micro_batch_loss: the stored clean latents noised
    at one level, the policy's predict, the old policy's without autograd, the NFT loss. The
    KL reference's forward is left out, as GRPO's (its weights are estimated)."""
    sampler = _as_numbers(policy.sampler(cfg.sampling))

    def inputs():
        return torch.randn(samples, *latent_shape), torch.randn(samples), _conditioning(cfg, policy, samples,
                                                                                        latent_shape)

    def loss(scored, advantages, cond):
        x0 = scored.clone()  # the trainer indexes the rollout's scored latents: a copy
        eps = torch.randn_like(x0)
        return nft.micro_batch_loss(policy, old, None, sampler, sampler.levels, 0, x0, eps, advantages,
                                    cond.select(slice(0, samples)), cfg.nft, cfg.policy_update.adv_clip_max).loss

    return MicroBatchTrace(inputs, loss)


def _fp32_shard_bytes(params) -> int:
    """This rank's shards of `params` (DTensors) in fp32, the dtype FSDP2 keeps them in."""
    with torch.no_grad():
        return sum(p.to_local().numel() * 4 for p in params)


def track_micro_batch(cfg: Config, policy: Policy, world: World, plan: StepPlan) -> TrackedStep:
    """One training micro-batch of `policy` (meta, parallelised here) on fake tensors under
    FSDPMemTracker, as the trainer runs it (`grpo_micro_batch`, `nft_micro_batch`), then
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
    trace = (nft_micro_batch(cfg, policy, old, samples, latent_shape) if old is not None
             else grpo_micro_batch(cfg, policy, plan, samples, latent_shape))
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
            with torch.no_grad():
                for param, shard in zip(trainable, shards):
                    shard.grad = param.grad.to_local() if param.grad is not None else None
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
    + 1 causal frame, strides tile_sample_stride_*), AutoencoderKL's square tiles of sample_size
    overlapping by tile_overlap_factor."""
    s, m = cfg.sampling, cfg.model
    vae = policy.vae
    frames, height, width = s.num_frames, s.height, s.width
    tiled = m.vae_tiling == "on" or (m.vae_tiling == "auto" and m.size == "full")
    dims = [(frames, frames, frames), (height, height, height), (width, width, width)]
    if tiled and hasattr(vae, "tile_sample_min_height"):
        dims = [(frames, vae.tile_sample_min_num_frames + 1, vae.tile_sample_stride_num_frames),
                (height, vae.tile_sample_min_height, vae.tile_sample_stride_height),
                (width, vae.tile_sample_min_width, vae.tile_sample_stride_width)]
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


def forwards_per_prompt(cfg: Config, plan: StepPlan) -> tuple[int, int]:
    """(rollout, training) sample-forwards per prompt: the rollout's steps for G samples, the
    deterministic prefix once per group when the group shares its noise (NFT: all of its
    steps, none when each sample has its own noise, as NFT configs must); the kept samples at
    each trained timestep."""
    s = cfg.sampling
    prefix = plan.prefix_steps if s.shared_noise else 0
    rollout = prefix + s.group_size * (plan.num_transitions - prefix)
    return rollout, kept_per_prompt(cfg) * trained_timesteps(cfg, plan)


def logged_forwards(cfg: Config, plan: StepPlan, rows: int) -> dict[str, int]:
    """Rows through the network per rank and iteration, as the trainer counts them in
    transformer_forwards_rollout / _train: CFG's `rows` per sample, and in training one row
    per frozen network's forward beside each trained one (KL reference, NFT's old policy)."""
    rollout, trained = forwards_per_prompt(cfg, plan)
    prompts = cfg.train.prompts_per_iteration
    return {"rollout": prompts * rollout * rows, "train": prompts * trained * rows * (1 + frozen_forwards(cfg))}


def micro_batches_per_step(cfg: Config, plan: StepPlan) -> int:
    return trained_timesteps(cfg, plan) * math.ceil(samples_per_step(cfg) / micro_batch_limit(cfg))


def trajectory_bytes(cfg: Config, policy: Policy, plan: StepPlan) -> tuple[int, int]:
    """(device, host) bytes of an iteration's rollout store on one rank: latents at every
    visited level and log-probs (fp32, where sampling.trajectory_device says; none under
    NFT, which trains on the scored latents alone), the scored latents and the conditioning
    of every sample (on the device)."""
    s = cfg.sampling
    samples = cfg.train.prompts_per_iteration * s.group_size
    latent = math.prod(policy.latent_shape(s.num_frames, s.height, s.width))
    steps = plan.num_transitions
    stored = samples * ((steps + 1) * latent + steps) * 4 if algorithm_of(cfg).keep_trajectory else 0
    tokens, dim, pooled, dtype = text_shape(cfg, policy)
    per_cond = (tokens * dim + pooled) * torch.finfo(dtype).bits // 8 + tokens * 8
    resident = samples * (latent * 4 + per_cond * (2 if cfg.model.cfg_scale > 1 else 1))
    if s.trajectory_device == "cpu":
        return resident, stored
    return resident + stored, 0


def tracking_key(cfg: Config, world_size: int) -> str:
    """What the tracked micro-batch depends on: the config without `UNTRACKED_KEYS`, and the world."""
    raw = to_dict(cfg)
    for section, name in UNTRACKED_KEYS:
        raw[section].pop(name)
    return json.dumps([raw, world_size], sort_keys=True, default=str)


def communicators(mesh: dict) -> int:
    """NCCL communicators a rank holds: the default group (metrics, barriers), FSDP's (with
    HSDP its shard and replicate groups) and the sequence-parallel group; none alone."""
    if mesh["world_size"] == 1:
        return 0
    return 1 + (mesh["dp_shard"] * mesh["sp_size"] > 1) + (mesh["dp_replicate"] > 1) + (mesh["sp_size"] > 1)


def with_reserve(phase: dict[str, int], cluster: Cluster, mesh: dict) -> dict[str, int]:
    """The phase with what no tensor of it holds: --reserve-gb when given, else the CUDA
    context, the NCCL communicators' buffers and the allocator's fragmentation (a fraction of
    the phase's tensors), each assumed."""
    if cluster.reserve_gb is not None:
        return {**phase, "reserved": int(cluster.reserve_gb * GB)}
    return {**phase, "cuda_context": CUDA_CONTEXT_BYTES, "nccl_buffers": communicators(mesh) * NCCL_COMMUNICATOR_BYTES,
            "fragmentation": int(FRAGMENTATION * sum(phase.values()))}


def largest_unit_bytes(policy: Policy) -> int:
    """fp32 bytes of the largest FSDP unit, a block or the root's own parameters:
    `parallelize` moves each unit whole from host memory to the device, then keeps its shards."""
    blocks = [sum(q.numel() for q in block.parameters()) for block in policy.blocks]
    root = sum(q.numel() for q in policy.transformer.parameters()) - sum(blocks)
    return 4 * max([root, *blocks])


def setup_phase(tracked: TrackedStep, largest_unit: int, shared: dict[str, int]) -> dict[str, int]:
    """The device at setup's peak (trainer.setup): the policy's fp32 shards beside, first,
    the unit being sharded whole, then the frozen copies' shards and the EMA (each made
    shard to shard after the last unit), whichever is more; and the VAE."""
    copies = {name: shared[name] for name in ("reference", "old_policy", "ema")}
    moment = {"loading": largest_unit} if largest_unit > sum(copies.values()) else copies
    return {"sharded_parameters": tracked.at_rest["sharded_parameters"], **moment, "vae_weights": shared["vae_weights"]}


def host_per_node(cfg: Config, cluster: Cluster, parameters: int, host_per_rank: dict[str, int]) -> dict[str, int]:
    """A node's host memory: while loading, parallel.loaders_per_node ranks at a time each
    hold the whole fp32 network (`model.base.load_pretrained`) until its shards are on the
    device; after, every rank's host share (trajectory, offloaded state)."""
    ranks = cluster.node_ranks
    loaders = min(cfg.parallel.loaders_per_node or ranks, ranks)
    return {"loading": loaders * 4 * parameters, "training": ranks * sum(host_per_rank.values())}


def reward_placement(cfg: Config, cluster: Cluster) -> dict:
    """Where the reward models run and what they take there. A reward process
    (reward.mode=process) runs on reward.device of every node: a GPU below --ranks-per-node
    is also a training rank's, which then holds both and makes every collective wait while
    it scores; inline scoring puts the models on every rank's reward.device."""
    from fastvideo_grpo.rewards import REGISTRY, load_plugins

    r = cfg.reward
    load_plugins(r.plugins)
    owners = {score: model for model in REGISTRY.values() for score in model.scores}
    used = [owners[name] for name in r.weights if name in owners]
    models = sorted({model.name for model in used if model.config is not None})  # rule rewards hold no model
    on_gpu = r.mode != "remote" and r.device.startswith("cuda")
    gpu = (int(r.device.partition(":")[2] or 0) if on_gpu and r.mode == "process" else None)
    if gpu is not None and gpu >= cluster.gpus_per_node:
        raise ConfigError(f"reward.device: {r.device!r} is not a GPU of a node of {cluster.gpus_per_node} "
                          "(--gpus-per-node)")
    shared = r.mode == "inline" and on_gpu or gpu is not None and gpu < cluster.node_ranks
    return {"mode": r.mode, "device": r.device, "models": models,
            "gpu_gb": sum(REWARD_GPU_GB.get(m, 0.0) for m in models) if on_gpu else 0.0,
            "unestimated": [m for m in models if m not in REWARD_GPU_GB] if on_gpu else [],
            "gpu": gpu, "shared_with_training_rank": bool(shared)}


def rollout_gathering_plan(cfg: Config, cluster: Cluster, parameters: int, decode: dict[str, int]) -> dict:
    """parallel.rollout_reshard as the trainer resolves it (`fsdp.rollout_keeps_gathered`)
    from the decode phase's tensors at the rollout's start: whether the rollout holds the
    network gathered in the compute dtype, and how many bytes that is."""
    gathered = parameters * fsdp_param_dtype(cfg).itemsize
    allocated = sum(v for name, v in decode.items() if name != "vae_decode")
    keeps = rollout_keeps_gathered(cfg.parallel.rollout_reshard, gathered, int(cluster.gpu_memory_gb * GB) - allocated)
    return {"setting": cfg.parallel.rollout_reshard, "keeps_gathered": keeps, "gathered_gb": round(gathered / GB, 6)}


def memory_notes(cfg: Config, cluster: Cluster, phases: dict[str, dict[str, int]], rollout_gathering: dict,
                 node_host: dict[str, int], fits: dict[str, bool]) -> list[str]:
    """What the reserve, the setup peak, the rollout's gathering and the host memory rest on,
    and which limit a plan that does not fit exceeds."""
    setup = phases["setup"]
    notes = []
    if cluster.reserve_gb is not None:
        notes.append(f"reserved {cluster.reserve_gb:g} GB is assumed (--reserve-gb), not planned")
    else:
        notes.append(f"reserve (assumed): CUDA context {CUDA_CONTEXT_BYTES / GB:g} GB, "
                     f"{setup['nccl_buffers'] // NCCL_COMMUNICATOR_BYTES} NCCL communicator(s) x "
                     f"{NCCL_COMMUNICATOR_BYTES / GB:g} GB, allocator fragmentation {FRAGMENTATION:.0%} of each phase's "
                     "tensors (--reserve-gb replaces them with one number)")
    moment = ("the largest FSDP unit whole in fp32 while it is sharded" if "loading" in setup
              else "the frozen copies' and EMA's shards")
    notes.append(f"setup peak {sum(setup.values()) / GB:.2f} GB: the policy's fp32 shards, {moment}, the VAE"
                 + (" - it does not fit: the run would not start" if sum(setup.values()) > cluster.gpu_memory_gb * GB
                    else ""))
    gathered = rollout_gathering["gathered_gb"]
    notes.append(f"parallel.rollout_reshard={rollout_gathering['setting']}: " + (
        f"the rollout gathers each block once and holds the network ({gathered:.2f} GB, decode phase)"
        if rollout_gathering["keeps_gathered"] else
        f"the rollout all-gathers every block at every forward (holding the {gathered:.2f} GB network would take more "
        "than half the memory free at its start)"))
    ranks = cluster.node_ranks
    loaders = min(cfg.parallel.loaders_per_node or ranks, ranks)
    notes.append(f"host memory per node: {node_host['loading'] / GB:.1f} GB while loading ({loaders} of {ranks} ranks "
                 f"at a time hold the fp32 network, parallel.loaders_per_node), {node_host['training'] / GB:.1f} GB "
                 f"while training, of {cluster.host_memory_gb:g} GB (--host-memory-gb)"
                 + ("" if fits["host"] else " - it does not fit"))
    return notes


def reward_notes(reward: dict, cluster: Cluster) -> list[str]:
    """Where the reward models run, and whether that GPU is a training rank's."""
    notes = []
    if reward["unestimated"]:
        notes.append(f"no GPU estimate for reward model(s) {reward['unestimated']} (plan.REWARD_GPU_GB): not counted")
    if reward["mode"] == "inline" and reward["shared_with_training_rank"]:
        notes.append(f"inline scoring: every rank holds its reward models on reward.device={reward['device']} "
                     f"({reward['gpu_gb']:g} GB, counted)")
    elif reward["shared_with_training_rank"]:
        spare = cluster.gpus_per_node - 1
        notes.append(f"reward.device={reward['device']} is local rank {reward['gpu']}'s GPU: that rank holds the reward "
                     f"models ({reward['gpu_gb']:g} GB, counted in its peak) and every collective waits for it while "
                     f"it scores (a straggler); keep a GPU for the reward process: --ranks-per-node {spare} "
                     f"(torchrun --nproc_per_node {spare}) with reward.device=cuda:{spare}")
    elif reward["gpu"] is not None:
        notes.append(f"the reward process has GPU {reward['gpu']} of each node to itself: {reward['gpu_gb']:g} GB of "
                     f"{cluster.gpu_memory_gb:g} GB")
    return notes


def plan(config: str | Path, overrides: list[str], cluster: Cluster, cache: dict | None = None,
         knobs: bool = True) -> dict:
    """The plan of config file `config` with `overrides` on `cluster`: the keys of the module
    docstring. `cache` keeps tracked micro-batches between plans that differ only in
    `UNTRACKED_KEYS` (the knobs re-plan through it)."""
    cache = {} if cache is None else cache
    started, cpu_started = time.perf_counter(), time.process_time()
    cfg = load_plan_config(config, overrides)
    s, p = cfg.sampling, cfg.parallel
    policy, source = planned_policy(cfg)
    if cfg.model.lora_rank > 0:
        apply_lora(policy.transformer, cfg.model.lora_rank, cfg.model.lora_alpha,
                   model_family(cfg.model).lora_targets)
    parameters = sum(q.numel() for q in policy.transformer.parameters())
    trainable = sum(q.numel() for q in policy.transformer.parameters() if q.requires_grad)
    largest_unit = largest_unit_bytes(policy)
    reward = reward_placement(cfg, cluster)
    heads = policy.transformer.config.get("num_attention_heads")
    if p.sp_size > 1 and isinstance(heads, int) and heads % p.sp_size:
        raise ConfigError(f"parallel.sp_size: {p.sp_size!r} is invalid; expected a divisor of the model's {heads} "
                          "attention heads (Ulysses splits heads over sp ranks)")
    plan_ = algorithm_of(cfg).step_plan(cfg, 0)
    latent_shape = policy.latent_shape(s.num_frames, s.height, s.width)
    key = tracking_key(cfg, cluster.world_size)
    with fake_world(cfg, cluster.world_size) as world:
        mesh = {"world_size": world.world_size, "dp_replicate": world.dp_replicate, "dp_shard": world.dp_shard,
                "sp_size": world.sp_size}
        if key not in cache:
            cache[key] = track_micro_batch(cfg, policy, world, plan_)
    tracked: TrackedStep = cache[key]
    decode_key = json.dumps([type(policy.vae).__name__, dict(policy.vae.config), str(policy.vae.dtype), latent_shape],
                            default=str)
    if decode_key not in cache:
        cache[decode_key] = probe_decode(policy, latent_shape)
    decode_bytes, decode_flops = decode_estimate(cfg, policy, cache[decode_key])

    trajectory, trajectory_host = trajectory_bytes(cfg, policy, plan_)
    accumulating = not p.reduce_grads_every_micro_batch and micro_batches_per_step(cfg, plan_) > 1
    shared = {"trajectory": trajectory,
              "vae_weights": sum(q.numel() * q.element_size() for q in policy.vae.parameters()),
              "ema": tracked.trainable_sharded_bytes if cfg.train.ema_decay > 0 else 0,
              "reference": tracked.sharded_bytes if algorithm_of(cfg).reference_weight(cfg) > 0 else 0,
              "old_policy": tracked.old_policy_bytes}
    if reward["shared_with_training_rank"]:  # the planned rank is the one beside the reward models
        shared["reward_model"] = int(reward["gpu_gb"] * GB)
    setup = setup_phase(tracked, largest_unit, shared)
    if "reward_model" in shared:
        setup["reward_model"] = shared["reward_model"]
    train = {**tracked.peak, "accumulated_gradient": 4 * trainable if accumulating else 0, **shared}
    decode = {"sharded_parameters": tracked.at_rest["sharded_parameters"],
              "optimizer_state": tracked.at_rest["optimizer_state"], "vae_decode": decode_bytes, **shared}
    rollout_gathering = rollout_gathering_plan(cfg, cluster, parameters, decode)
    if rollout_gathering["keeps_gathered"]:
        decode["rollout_gathered"] = parameters * fsdp_param_dtype(cfg).itemsize
    host = {"trajectory": trajectory_host}
    if p.cpu_offload:  # FSDP2's CPUOffloadPolicy keeps the shards, their gradients and AdamW's state on the host
        for phase in (setup, train, decode):
            for name in ("sharded_parameters", "gradients", "optimizer_state"):
                if name in phase:
                    host[name] = max(host.get(name, 0), phase[name])
                    phase[name] = 0
    phases = {name: with_reserve(phase, cluster, mesh) for name, phase in
              (("setup", setup), ("train", train), ("decode", decode))}
    totals = {name: sum(values.values()) for name, values in phases.items()}
    peak_phase = max(totals, key=totals.get)
    peak = totals[peak_phase]
    node_host = host_per_node(cfg, cluster, parameters, host)
    host_peak = max(node_host.values())
    reward_gpu = int(reward["gpu_gb"] * GB) + CUDA_CONTEXT_BYTES  # a reward GPU of its own
    fits = {"gpu": peak <= cluster.gpu_memory_gb * GB, "host": host_peak <= cluster.host_memory_gb * GB,
            "reward_gpu": reward["gpu"] is None or reward["shared_with_training_rank"]
            or reward_gpu <= cluster.gpu_memory_gb * GB}

    forwards = logged_forwards(cfg, plan_, rows_per_sample(policy))
    # The trainer's own count (flops.py), over the rows it would log as transformer_forwards_*;
    # a sequence-parallel group's ranks split each row's tokens (Ulysses: heads in attention).
    row_flops = forward_flops(cfg.model, policy.transformer, latent_shape, text_shape(cfg, policy)[0]) / p.sp_size
    # A sequence-parallel group's ranks hold the same videos and decode a share each (round
    # robin): the fullest rank's share.
    decoded = math.ceil(cfg.train.prompts_per_iteration * s.group_size / p.sp_size)
    flops = {**iteration_flops(cfg, row_flops, forwards["rollout"], forwards["train"]),
             "decode": decoded * decode_flops}
    flops = {name: int(value) for name, value in flops.items()}
    flops["total"] = sum(flops.values())
    seconds = flops["total"] / (cluster.peak_tflops * 1e12 * cluster.mfu)

    notes = ["the rollout's forward (no autograd) holds fewer activations than the training step, beside the "
             "rollout/decode phase's state",
             *memory_notes(cfg, cluster, phases, rollout_gathering, node_host, fits), *reward_notes(reward, cluster)]
    if accumulating:
        notes.append(f"parallel.reduce_grads_every_micro_batch=false with {micro_batches_per_step(cfg, plan_)} "
                     "micro-batches per optimizer step: the unsharded gradient is held in fp32 between them")
    if cluster.world_size == 1:
        notes.append("one rank is planned as a one-process torchrun launch (FSDP2 over one rank); a plain "
                     "`python -m fastvideo_grpo.train` applies no FSDP")
    if p.cpu_offload:
        notes.append("parallel.cpu_offload: the sharded parameters, gradients and optimizer state are counted in "
                     "host_gb (estimated)")
    reserve = {name: v for name, v in phases[peak_phase].items() if name in ASSUMED}
    result = {
        "config": str(config), "overrides": list(overrides), "family": cfg.model.family, "architecture": source,
        "world": {"nodes": cluster.nodes, "gpus_per_node": cluster.gpus_per_node, "ranks_per_node": cluster.node_ranks,
                  **mesh, "prompts_per_dp_rank": cfg.train.prompts_per_iteration, "group_size": s.group_size,
                  "global_batch": cfg.train.prompts_per_iteration * s.group_size * mesh["dp_replicate"]
                  * mesh["dp_shard"]},
        "gpu_memory_gb": cluster.gpu_memory_gb, "reserve_gb": round(sum(reserve.values()) / GB, 6),
        "reserve_items_gb": _gb(reserve),
        "fits": all(fits.values()), "fits_by": fits, "headroom_gb": round(cluster.gpu_memory_gb - peak / GB, 6),
        "parameters": parameters, "trainable_parameters": trainable,
        "peak_gb": round(peak / GB, 6), "peak_phase": peak_phase,
        "setup_peak_gb": round(totals["setup"] / GB, 6),
        "micro_batch_peak_gb": round(sum(tracked.peak.values()) / GB, 6),
        "memory_gb": _gb(phases[peak_phase]), "memory_by_phase_gb": {k: _gb(v) for k, v in phases.items()},
        "host_gb": _gb(host), "host_memory_gb": cluster.host_memory_gb,
        "host_per_node_gb": {k: round(v / GB, 6) for k, v in node_host.items()},
        "host_peak_per_node_gb": round(host_peak / GB, 6),
        "reward": reward, "rollout_reshard": rollout_gathering,
        "tracked": sorted({*TRACKED.values(), *(["old_policy"] * algorithm_of(cfg).old_policy)}),
        "estimated": ["loading", "rollout_gathered", "trajectory", "accumulated_gradient", "vae_weights", "vae_decode",
                      "ema", "reference", "reward_model"],
        "flops": flops, "forwards": forwards,
        "seconds_per_iteration": round(seconds, 1), "peak_tflops": cluster.peak_tflops, "mfu": cluster.mfu,
        "knobs": [], "knobs_checked": [], "notes": notes, "plan_seconds": 0.0, "plan_cpu_seconds": 0.0,
    }
    if knobs and not result["fits"]:
        result["knobs_checked"] = check_knobs(config, overrides, result, cfg, cluster, heads, cache)
        result["knobs"] = [k for k in result["knobs_checked"] if k["fits"]]
    result["plan_seconds"] = round(time.perf_counter() - started, 1)
    result["plan_cpu_seconds"] = round(time.process_time() - cpu_started, 1)
    return result


def _gb(values: dict[str, int]) -> dict[str, float]:
    return {name: round(values[name] / GB, 6) for name in CATEGORIES if name in values}


def knob_candidates(cfg: Config, cluster: Cluster, heads: int | None) -> list[tuple[list[str], Cluster]]:
    """Single changes that lower a rank's memory, cheapest to re-plan first: (overrides, cluster)."""
    p, s = cfg.parallel, cfg.sampling
    candidates = []
    if not p.activation_checkpointing:
        candidates.append((["parallel.activation_checkpointing=true"], cluster))
    if not p.reduce_grads_every_micro_batch:
        candidates.append((["parallel.reduce_grads_every_micro_batch=true"], cluster))
    if s.trajectory_device != "cpu":
        candidates.append((["sampling.trajectory_device=cpu"], cluster))
    if s.decode_batch_size > 1:
        candidates.append((["sampling.decode_batch_size=1"], cluster))
    candidates += [([knob], cluster) for knob in algorithm_of(cfg).memory_knobs(cfg)]
    if s.rollout_batch_size > 1:
        candidates.append((["sampling.rollout_batch_size=1"], cluster))
    if model_family(cfg.model).sequence_parallel is not None:
        for sp in (2, 4, 8):
            if sp > p.sp_size and cluster.world_size % (sp * p.dp_replicate) == 0 and (heads or sp) % sp == 0:
                candidates.append(([f"parallel.sp_size={sp}"], cluster))
    for factor in (2, 4):
        candidates.append(([], dataclasses.replace(cluster, nodes=cluster.nodes * factor)))
    if not p.cpu_offload:
        candidates.append((["parallel.cpu_offload=true"], cluster))
    return candidates


# What a knob that re-tracks the micro-batch leaves as it is: when that alone is over the
# budget, the knob is reported as a lower bound without re-planning (a re-plan at 13B costs
# ~30 s). Sequence parallelism, more nodes and CPU offload change neither the unsharded
# gradient nor a dp rank's samples.
UNCHANGED = ("accumulated_gradient", "trajectory", "vae_weights", "reward_model", "cuda_context", "reserved")
UNCHANGED_BY = {"parallel.activation_checkpointing": UNCHANGED + ("sharded_parameters", "gradients", "optimizer_state",
                                                                 "old_policy"),
                "parallel.sp_size": UNCHANGED, "--nodes": UNCHANGED, "parallel.cpu_offload": UNCHANGED}


def check_knobs(config, overrides: list[str], base: dict, cfg: Config, cluster: Cluster, heads: int | None,
                cache: dict) -> list[dict]:
    """Re-plan with each knob (sequence-parallel degrees and node counts up to the first that
    fits); if none fits alone, the ones that keep the cluster and sp, together."""
    checked, settled = [], set()
    train = base["memory_by_phase_gb"]["train"]

    def replan(extra: list[str], target: Cluster, kind: str) -> None:
        name = " ".join(extra) if extra else f"--nodes {target.nodes}"
        floor = sum(train.get(k, 0.0) for k in UNCHANGED_BY.get(kind, ()))
        if floor > cluster.gpu_memory_gb:
            checked.append({"override": name, "peak_gb": round(floor, 6), "headroom_gb": round(
                cluster.gpu_memory_gb - floor, 6), "fits": False, "lower_bound": True})
            return
        logger.info("re-planning with %s", name)
        try:
            result = plan(config, [*overrides, *extra], target, cache, knobs=False)
        except (ConfigError, ValueError) as e:
            logger.info("knob %s does not apply: %s", name, e)
            return
        checked.append({"override": name, "peak_gb": result["peak_gb"], "headroom_gb": result["headroom_gb"],
                        "fits": result["fits"], "lower_bound": False})

    candidates = knob_candidates(cfg, cluster, heads)
    for extra, target in candidates:
        kind = extra[0].split("=")[0] if extra else "--nodes"
        if kind not in settled:
            replan(extra, target, kind)
            if checked and checked[-1]["fits"] and kind in ("parallel.sp_size", "--nodes"):
                settled.add(kind)
    if not any(k["fits"] for k in checked):
        together = [extra[0] for extra, target in candidates
                    if extra and target == cluster and not extra[0].startswith("parallel.sp_size")]
        if len(together) > 1:
            replan(together, cluster, "together")
    return checked


def _flops(value: float) -> str:
    for unit, scale in (("PFLOP", 1e15), ("TFLOP", 1e12), ("GFLOP", 1e9)):
        if value >= scale:
            return f"{value / scale:.1f} {unit}"
    return f"{value / 1e6:.1f} MFLOP"


def _count(n: int) -> str:
    return f"{n / 1e9:.2f} B" if n >= 1e9 else f"{n / 1e6:.2f} M"


def render(result: dict) -> str:
    """The plan as a small text table (MB where the whole plan is under a GB)."""
    w, phases = result["world"], result["memory_by_phase_gb"]
    unit, scale = ("GB", 1) if result["peak_gb"] >= 1 else ("MB", 1024)
    estimated = set(result["estimated"])
    lines = [
        f"{result['config']} {' '.join(result['overrides'])}".rstrip(),
        f"  {result['family']}: {_count(result['parameters'])} parameters ({_count(result['trainable_parameters'])} "
        f"trained); architecture: {result['architecture']}",
        f"  {w['nodes']} nodes x {w['gpus_per_node']} GPUs of {result['gpu_memory_gb']:g} GB: dp_replicate "
        f"{w['dp_replicate']} x dp_shard {w['dp_shard']} x sp {w['sp_size']}",
        f"  global batch: {w['prompts_per_dp_rank']} prompts per dp rank x G={w['group_size']} x "
        f"{w['dp_replicate'] * w['dp_shard']} dp ranks = {w['global_batch']} videos per iteration",
        "",
        f"  {'per-rank memory, ' + unit:<26}{'setup':>10}{'training step':>14}{'rollout/decode':>16}  source",
    ]
    columns = (("setup", 10), ("train", 14), ("decode", 16))
    for name in CATEGORIES:
        row = [phases[phase].get(name, 0.0) * scale for phase, _ in columns]
        if any(row):
            cells = "".join(f"{v:>{width}.2f}" if v else f"{'-':>{width}}" for v, (_, width) in zip(row, columns))
            source = "assumed" if name in ASSUMED else "estimate" if name in estimated else "tracked"
            lines.append(f"  {name.replace('_', ' '):<26}{cells}  {source}")
    totals = "".join(f"{sum(phases[phase].values()) * scale:>{width}.2f}" for phase, width in columns)
    lines.append(f"  {'total':<26}{totals}")
    host = {k: v for k, v in result["host_gb"].items() if v}
    if host:
        lines.append(f"  host memory per rank, {unit}: " + ", ".join(f"{k.replace('_', ' ')} {v * scale:.2f}"
                                                                   for k, v in host.items()))
    failed = [{"gpu": "GPU memory", "host": "host memory", "reward_gpu": "the reward GPU"}[k]
              for k, ok in result["fits_by"].items() if not ok]
    verdict = "fits" if result["fits"] else f"does NOT fit ({', '.join(failed)})"
    lines += ["", f"  {verdict}: peak {result['peak_gb'] * scale:.2f} {unit} ({result['peak_phase']}), setup peak "
              f"{result['setup_peak_gb'] * scale:.2f} {unit}, headroom {result['headroom_gb'] * scale:.2f} {unit} of "
              f"{result['gpu_memory_gb'] * scale:g} {unit}; host peak per node {result['host_peak_per_node_gb']:.1f} GB "
              f"of {result['host_memory_gb']:g} GB"]
    f, n = result["flops"], result["forwards"]
    lines.append(f"  per rank per iteration: rollout {_flops(f['rollout'])} ({n['rollout']} rows), training "
                 f"{_flops(f['train'])} ({n['train']} rows, frozen networks' included), decode {_flops(f['decode'])}")
    lines.append(f"  ~{result['seconds_per_iteration']:g} s per iteration at {result['peak_tflops']:g} TFLOPS x "
                 f"{result['mfu']:g} MFU")
    if result["knobs_checked"]:
        lines.append("  knobs, each re-planned (>=: a lower bound, not re-planned):")
        for knob in result["knobs_checked"]:
            bound = ">=" if knob["lower_bound"] else "  "
            lines.append(f"    {knob['override']:<48} peak {bound}{knob['peak_gb'] * scale:8.2f} {unit}  "
                         f"{'fits' if knob['fits'] else 'does not fit'}")
    lines += [f"  note: {note}" for note in result["notes"]]
    lines.append(f"  planned in {result['plan_seconds']:.1f} s ({result['plan_cpu_seconds']:.1f} s CPU)")
    return "\n".join(lines)


# The largest cluster `plan` accepts (--nodes x --gpus-per-node): planning time grows with it.
MAX_GPUS = 16384


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Per-rank memory and time of a training config, planned on CPU "
                                                 "with fake tensors and a fake process group")
    parser.add_argument("--config", required=True, help="YAML config file (assets/configs/*.yaml)")
    parser.add_argument("overrides", nargs="*", help="dotted overrides, e.g. parallel.sp_size=4")
    parser.add_argument("--nodes", type=number(int, 1, MAX_GPUS), default=1)
    parser.add_argument("--gpus-per-node", type=number(int, 1, MAX_GPUS), default=8)
    parser.add_argument("--gpu-memory-gb", type=number(float, 0, low_open=True), default=80.0)
    parser.add_argument("--peak-tflops", type=number(float, 0, low_open=True), default=989.0,
                        help="dense bf16 peak (H100/H800 SXM: 989)")
    parser.add_argument("--mfu", type=number(float, 0, 1, low_open=True), default=0.35,
                        help="model FLOPs utilisation assumed for the time, in (0, 1]")
    parser.add_argument("--reserve-gb", type=number(float, 0), default=None,
                        help="per GPU, for the CUDA context, NCCL and allocator fragmentation (default: an itemised "
                             "estimate of each)")
    parser.add_argument("--ranks-per-node", type=number(int, 0, MAX_GPUS), default=0,
                        help="training processes per node (torchrun --nproc_per_node; default: one per GPU)")
    parser.add_argument("--host-memory-gb", type=number(float, 0, low_open=True), default=1024.0,
                        help="host memory per node")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args(argv)
    if args.nodes * args.gpus_per_node > MAX_GPUS:
        parser.error(f"--nodes {args.nodes} x --gpus-per-node {args.gpus_per_node} = "
                     f"{args.nodes * args.gpus_per_node} GPUs; at most {MAX_GPUS} are planned (the fake process "
                     "group costs about a millisecond of CPU a rank)")
    if args.reserve_gb is not None and args.reserve_gb >= args.gpu_memory_gb:
        parser.error(f"--reserve-gb {args.reserve_gb:g} leaves nothing of --gpu-memory-gb {args.gpu_memory_gb:g}")
    if args.ranks_per_node > args.gpus_per_node:
        parser.error(f"--ranks-per-node {args.ranks_per_node}: expected at most --gpus-per-node ({args.gpus_per_node})")
    logging.basicConfig(level=logging.WARNING, format="%(name)s: %(message)s")
    silence_library_noise()
    logging.getLogger("diffusers").setLevel(logging.ERROR)
    logging.getLogger("fastvideo_grpo.plan").setLevel(logging.INFO)  # progress: a plan takes a minute at full size
    cluster = Cluster(args.nodes, args.gpus_per_node, args.gpu_memory_gb, args.peak_tflops, args.mfu, args.reserve_gb,
                      args.ranks_per_node, args.host_memory_gb)
    logger.info("planning %s on %d nodes x %d GPUs: one training micro-batch traced on fake tensors (about a "
                "minute at full size, again for each knob if it does not fit)", args.config, args.nodes,
                args.gpus_per_node)
    try:
        result = plan(args.config, args.overrides, cluster)
    except (ConfigError, ValueError, FileNotFoundError) as e:
        logging.getLogger("fastvideo_grpo.plan").error("config error: %s", e)
        return 2
    sys.stdout.write((json.dumps(result) if args.json else render(result)) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
