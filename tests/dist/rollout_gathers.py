"""Under torchrun: the all-gathers of a sharded rollout with each parallel.rollout_reshard
setting, its transformer forwards and latents, saved by rank 0."""

import sys
from pathlib import Path

import torch
import torch.distributed as dist
from torch.distributed.tensor import DTensor

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from conftest import ROOT  # noqa: E402
from fastvideo_grpo.config import load_config  # noqa: E402
from fastvideo_grpo.parallel import init_distributed  # noqa: E402
from fastvideo_grpo.parallel.fsdp import parallelize, rollout_gathering  # noqa: E402
from helpers import tiny_conditioning, tiny_policy, tiny_rollout  # noqa: E402


def main():
    cfg = load_config(ROOT / "assets/configs/tiny_t2v.yaml", sys.argv[2:])
    world = init_distributed("cpu")
    torch.manual_seed(0)
    policy = tiny_policy(cfg)
    parallelize(policy, world, cfg)
    cond = tiny_conditioning(cfg, ["a red ball"], cfg.sampling.group_size)
    gathers, forwards = [0], [0]
    original = dist.all_gather_single

    def counted(*args, **kwargs):
        gathers[0] += 1
        return original(*args, **kwargs)

    dist.all_gather_single = counted
    policy.transformer.register_forward_pre_hook(lambda *_: forwards.__setitem__(0, forwards[0] + 1))
    report = {"blocks": len(policy.blocks)}
    for setting in ("always", "never", "auto"):
        cfg.parallel.rollout_reshard = setting
        gathers[0] = forwards[0] = 0
        with rollout_gathering(policy.transformer, cfg, world.device):
            ro = tiny_rollout(cfg, policy, cond, cfg.sampling.group_size)
        report[setting] = {"all_gathers": gathers[0], "forwards": forwards[0], "latents": ro.latents,
                           "resharded": all(isinstance(p, DTensor) for p in policy.transformer.parameters())}
    if world.is_main:
        torch.save(report, sys.argv[1])
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
