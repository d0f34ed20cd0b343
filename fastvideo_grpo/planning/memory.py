"""What the tracer does not see, per rank and node: the reserve (CUDA context, NCCL buffers,
fragmentation), the setup phase, host memory, the reward models' placement, the rollout's
gathered network, and the notes that say what each rests on. GB are 2**30 bytes."""

from __future__ import annotations

from fastvideo_grpo.config import Config, ConfigError
from fastvideo_grpo.models import Policy
from fastvideo_grpo.parallel.fsdp import fsdp_param_dtype, rollout_keeps_gathered
from fastvideo_grpo.planning.cluster import Cluster
from fastvideo_grpo.planning.tracer import TrackedStep

GB = 2**30
# The plan's memory categories, in the report's order.
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
        notes.append(f"no GPU estimate for reward model(s) {reward['unestimated']} (planning.memory.REWARD_GPU_GB): not counted")
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
