"""Alone or under torchrun: one training iteration's optimizer step count, and batch-mode
advantages of rank-dependent rewards (DDPO's global-batch normalisation), saved by rank 0."""

import sys
from pathlib import Path

import torch
import torch.distributed as dist

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from conftest import ROOT  # noqa: E402
from fastvideo_grpo.training import trainer  # noqa: E402
from fastvideo_grpo.config import load_config  # noqa: E402


def rank_rewards(dp_rank: int, count: int) -> torch.Tensor:
    return torch.arange(count, dtype=torch.float32) * (dp_rank + 1) ** 2


def main():
    cfg = load_config(ROOT / "assets/configs/tiny_t2v.yaml", sys.argv[2:])
    c = trainer.setup(cfg)
    metrics = trainer.train_iteration(0, c, cfg)
    count = cfg.train.prompts_per_iteration * cfg.sampling.group_size
    cfg.policy_update.advantage_mode = "batch"
    advantages = trainer.advantages_of({"color": rank_rewards(c.world.dp_rank, count)}, cfg, c.world).advantages
    gathered = [advantages]
    if dist.is_initialized():
        gathered = [torch.empty_like(advantages) for _ in range(dist.get_world_size())]
        dist.all_gather(gathered, advantages)
    if c.world.is_main:
        torch.save({"optimizer_steps": metrics["optimizer_steps"], "advantages": gathered}, sys.argv[1])
    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
