"""Process groups and the device mesh: (dp_replicate, dp_shard, sp)."""

from __future__ import annotations

import datetime
import logging
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch.distributed.tensor import DTensor
from torch.distributed.device_mesh import DeviceMesh, init_device_mesh

from fastvideo_grpo.parallel.watchdog import exit_with_launcher, start_watchdog, stop_watchdog

logger = logging.getLogger(__name__)


@dataclass
class World:
    """Where this process sits. Single-process runs have mesh None and every size 1."""

    rank: int
    world_size: int
    device: torch.device
    mesh: DeviceMesh | None
    dp_replicate: int = 1
    dp_shard: int = 1
    sp_size: int = 1

    @property
    def dp_size(self) -> int:
        return self.dp_replicate * self.dp_shard

    @property
    def dp_rank(self) -> int:
        return self.rank // self.sp_size

    @property
    def sp_rank(self) -> int:
        """Place in the sp group: sp is the mesh's innermost dimension."""
        return self.rank % self.sp_size

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def sp_group(self):
        return self.mesh["sp"].get_group() if self.mesh is not None else None

    @property
    def dp_mesh(self) -> DeviceMesh | None:
        """The mesh FSDP shards over; sp ranks hold the same samples but different tokens,
        so parameters are sharded over them too."""
        if self.mesh is None:
            return None
        if self.dp_replicate > 1:
            return self.mesh["dp_replicate", "dp_shard_sp"]
        return self.mesh["dp_shard_sp"]


def cuda_unusable_reason() -> str | None:
    """Why CUDA cannot be used here, in torch's own words (no driver, a driver older than
    this build needs, no visible GPU, a CPU-only build); None when it can."""
    if torch.cuda.is_available():
        return None
    if torch.version.cuda is None and torch.version.hip is None:
        return f"torch {torch.__version__} is a CPU-only build"
    try:
        torch.cuda._lazy_init()  # raises with the driver's reason, which is_available() only warns about
    except (RuntimeError, AssertionError) as e:
        return " ".join(str(e).split())
    return "torch.cuda.is_available() is False"


def pick_device(requested: str, needs_cuda: bool = False) -> torch.device:
    """The device `parallel.device` asks for. `auto` takes CUDA when it is usable, else the
    CPU, unless `needs_cuda` (a full-size model, which on CPU would load tens of GB per
    rank into host RAM and crawl): then it fails at once, naming why CUDA is unusable."""
    if requested == "auto":
        reason = cuda_unusable_reason()
        if reason is not None and needs_cuda:
            raise RuntimeError(f"parallel.device=auto: a full-size model (model.size=full) needs CUDA, which is "
                               f"unusable here: {reason}; fix the driver or the torch build, or set "
                               "parallel.device=cpu to run on the CPU anyway")
        requested = "cuda" if reason is None else "cpu"
    if requested == "cuda":
        if (reason := cuda_unusable_reason()) is not None:
            raise RuntimeError(f"parallel.device=cuda but CUDA is unusable: {reason}")
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    return torch.device("cpu")


def _group_options(backend: str, timeout: datetime.timedelta) -> tuple | None:
    """(backend, options carrying `timeout`) for the device mesh's groups, which otherwise get
    the backend's default (NCCL's is 10 minutes, whatever init_process_group got); None for a
    backend that has no timeout (the planner's fake one)."""
    if backend == "nccl":
        options = dist.ProcessGroupNCCL.Options()
    elif backend == "gloo":
        options = dist.ProcessGroupGloo._Options()
    else:
        return None
    options._timeout = timeout
    return backend, options


def init_distributed(device: str = "auto", sp_size: int = 1, dp_replicate: int = 1, timeout_minutes: float = 30.0,
                     needs_cuda: bool = False, watchdog_seconds: float = 0.0) -> World:
    """From torchrun's env vars: nccl on GPU, gloo on CPU. Without torchrun: one process.
    Every process group, the mesh's sub-groups included, times out after `timeout_minutes`.
    With watchdog_seconds > 0 and several ranks, a rank silent that long ends the job
    (fastvideo_grpo.parallel.watchdog)."""
    dev = pick_device(device, needs_cuda)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    if "RANK" not in os.environ:
        if sp_size * dp_replicate != 1:
            raise ValueError(f"parallel.sp_size={sp_size} and parallel.dp_replicate={dp_replicate} need "
                             "a torchrun launch with enough ranks")
        return World(rank=0, world_size=1, device=dev, mesh=None)
    exit_with_launcher()
    timeout = datetime.timedelta(minutes=timeout_minutes)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if dev.type == "cuda" else "gloo", timeout=timeout)
    backend = dist.get_backend()
    world_size = dist.get_world_size()
    if world_size % (sp_size * dp_replicate):
        raise ValueError(
            f"parallel.sp_size={sp_size} x parallel.dp_replicate={dp_replicate} does not divide "
            f"the world size {world_size}")
    dp_shard = world_size // (sp_size * dp_replicate)
    options = _group_options(backend, timeout)

    def override(size: int) -> tuple | None:
        # Under NCCL a dimension over every rank reuses the default group (which has the
        # timeout) unless overridden, and overriding it would build a second communicator of
        # the whole world. Gloo groups are cheap, and where CUDA is present the mesh builds a
        # new one anyway.
        return options if options is not None and (size != world_size or backend == "gloo") else None

    shape = {"dp_replicate": dp_replicate, "dp_shard": dp_shard, "sp": sp_size}
    mesh = init_device_mesh(dev.type, tuple(shape.values()), mesh_dim_names=tuple(shape),
                            backend_override={name: override(size) for name, size in shape.items() if override(size)})
    mesh["dp_shard", "sp"]._flatten("dp_shard_sp", backend_override=override(dp_shard * sp_size))
    world = World(dist.get_rank(), world_size, dev, mesh, dp_replicate, dp_shard, sp_size)
    if watchdog_seconds > 0 and world_size > 1:
        start_watchdog(world.rank, world_size, watchdog_seconds)
    logger.info("rank %d/%d on %s: dp_replicate=%d dp_shard=%d sp=%d", world.rank, world_size, dev,
                dp_replicate, dp_shard, sp_size)
    return world


def all_reduce_mean(values: dict[str, float], world: World) -> dict[str, float]:
    """Mean of each metric over data-parallel ranks (sp ranks hold equal copies)."""
    if world.mesh is None or world.world_size == 1:
        return values
    keys = sorted(values)
    tensor = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64, device=world.device)
    dist.all_reduce(tensor)
    tensor /= world.world_size
    return dict(zip(keys, tensor.tolist()))


def all_reduce_max(value: float, world: World) -> float:
    if world.mesh is None or world.world_size == 1:
        return value
    tensor = torch.tensor([value], dtype=torch.float64, device=world.device)
    dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return tensor.item()


def all_gather_dp(tensor: torch.Tensor, world: World) -> torch.Tensor:
    """The data-parallel ranks' tensors (equal shapes) concatenated in dp-rank order; sp ranks
    hold equal copies, so one per dp rank is kept."""
    if world.mesh is None or world.world_size == 1:
        return tensor
    local = tensor.to(world.device).contiguous()
    gathered = [torch.empty_like(local) for _ in range(world.world_size)]
    dist.all_gather(gathered, local)
    return torch.cat(gathered[::world.sp_size]).to(tensor.device)


def all_gather_objects(obj, world: World | None) -> list:
    """Every rank's picklable `obj`, in rank order ([obj] in a single process)."""
    if world is None or world.mesh is None or world.world_size == 1:
        return [obj]
    gathered = [None] * world.world_size
    dist.all_gather_object(gathered, obj)
    return gathered


def gather_objects(obj, world: World | None) -> list | None:
    """Every rank's picklable `obj`, in rank order, on the main rank alone (None elsewhere):
    for what only the main rank writes, so that no other rank holds every rank's part."""
    if world is None or world.mesh is None or world.world_size == 1:
        return [obj]
    gathered = [None] * world.world_size if world.is_main else None
    dist.gather_object(obj, gathered, dst=0)
    return gathered


def all_finite(model: torch.nn.Module, world: World) -> bool:
    """Every rank's parameter shards are finite (one host sync, one all-reduce). Each rank
    counts its local shard: a sum over a sharded DTensor would be a collective per parameter."""
    local = (p.to_local() if isinstance(p, DTensor) else p for p in model.parameters())
    bad = sum((~torch.isfinite(p.detach())).sum() for p in local)
    return all_reduce_max(float(bad), world) == 0


def barrier(world: World) -> None:
    if world.mesh is not None:
        dist.barrier()


def shutdown() -> None:
    stop_watchdog()
    if dist.is_initialized():
        dist.destroy_process_group()
