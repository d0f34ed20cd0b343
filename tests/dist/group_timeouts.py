"""torchrun --nproc_per_node=2: the timeout of every process group init_distributed makes
(the default group, each mesh dimension's and the flattened one FSDP shards over), read
back from the groups themselves, for an sp mesh and an HSDP mesh; rank 0 writes them as
JSON {mesh: {group: minutes}} to argv[1]."""

import json
import sys
from pathlib import Path

import torch
import torch.distributed as dist

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from fastvideo_grpo.parallel import init_distributed  # noqa: E402


def minutes(group) -> float:
    return group._get_backend(torch.device("cpu")).options._timeout.total_seconds() / 60


def main():
    timeout = float(sys.argv[2])
    report = {}
    for name, sp, replicate in (("sp", 2, 1), ("hsdp", 1, 2)):
        world = init_distributed("cpu", sp, replicate, timeout_minutes=timeout)
        groups = {dim: world.mesh[dim].get_group() for dim in ("dp_replicate", "dp_shard", "sp", "dp_shard_sp")}
        report[name] = {"default": minutes(dist.group.WORLD), **{dim: minutes(g) for dim, g in groups.items()}}
    if dist.get_rank() == 0:
        Path(sys.argv[1]).write_text(json.dumps(report))
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
