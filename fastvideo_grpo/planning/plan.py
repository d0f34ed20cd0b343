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

import json
import math
import time
from pathlib import Path

from fastvideo_grpo.algorithms.learner import trained_plan
from fastvideo_grpo.algorithms.registry import algorithm_of
from fastvideo_grpo.config import Config, ConfigError, to_dict
from fastvideo_grpo.flops import forward_flops, iteration_flops
from fastvideo_grpo.models import model_family
from fastvideo_grpo.models.lora import apply_lora
from fastvideo_grpo.parallel.fsdp import fsdp_param_dtype
from fastvideo_grpo.planning.cluster import Cluster
from fastvideo_grpo.planning.counts import logged_forwards, micro_batches_per_step, trajectory_bytes
from fastvideo_grpo.planning.knobs import check_knobs
from fastvideo_grpo.planning.memory import (ASSUMED, CATEGORIES, CUDA_CONTEXT_BYTES, GB, host_per_node,
                                            largest_unit_bytes, memory_notes, reward_notes, reward_placement,
                                            rollout_gathering_plan, setup_phase, with_reserve)
from fastvideo_grpo.planning.policy import load_plan_config, planned_policy, text_shape
from fastvideo_grpo.planning.tracer import (TRACKED, TrackedStep, decode_estimate, fake_world, probe_decode,
                                            track_micro_batch)
from fastvideo_grpo.sampling.rollout import rows_per_sample

# Config keys that change no tensor of the tracked micro-batch: a knob that only sets these
# reuses the tracked result.
UNTRACKED_KEYS = (("sampling", "trajectory_device"), ("sampling", "decode_batch_size"),
                  ("parallel", "reduce_grads_every_micro_batch"), ("parallel", "device"),
                  ("parallel", "rollout_reshard"), ("parallel", "loaders_per_node"))


def tracking_key(cfg: Config, world_size: int) -> str:
    """What the tracked micro-batch depends on: the config without `UNTRACKED_KEYS`, and the world."""
    raw = to_dict(cfg)
    for section, name in UNTRACKED_KEYS:
        raw[section].pop(name)
    return json.dumps([raw, world_size], sort_keys=True, default=str)


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
    plan_ = trained_plan(algorithm_of(cfg).step_plan(cfg, 0), policy, s)
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
        result["knobs_checked"] = check_knobs(result, cfg, cluster, heads, lambda extra, target: plan(
            config, [*overrides, *extra], target, cache, knobs=False))
        result["knobs"] = [k for k in result["knobs_checked"] if k["fits"]]
    result["plan_seconds"] = round(time.perf_counter() - started, 1)
    result["plan_cpu_seconds"] = round(time.process_time() - cpu_started, 1)
    return result


def _gb(values: dict[str, int]) -> dict[str, float]:
    return {name: round(values[name] / GB, 6) for name in CATEGORIES if name in values}
