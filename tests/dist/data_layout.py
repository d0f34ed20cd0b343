"""torchrun --nproc_per_node=2 (dp=2): which prompts and initial noise each rank draws."""

import sys
from pathlib import Path

import torch
import torch.distributed as dist

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from conftest import ROOT  # noqa: E402
from fastvideo_grpo.training import trainer  # noqa: E402
from fastvideo_grpo.config import load_config  # noqa: E402


def main():
    cfg = load_config(ROOT / "assets/configs/tiny_t2v.yaml", sys.argv[2:])
    c = trainer.setup(cfg)
    records = []
    original_rollout = trainer.rollout

    def recording_rollout(*args, **kwargs):
        ro = original_rollout(*args, **kwargs)
        records.append(ro.latents[:, 0].clone())
        return ro

    trainer.rollout = recording_rollout
    prompts_seen = []
    original_next = c.sampler.next_indices

    def recording_next():
        indices = original_next()
        prompts_seen.append(indices)
        return indices

    c.sampler.next_indices = recording_next
    for iteration in range(2):
        trainer.train_iteration(iteration, c, cfg)
    noise = torch.stack(records)  # [iterations, B, *latent]
    gathered = [torch.empty_like(noise) for _ in range(dist.get_world_size())]
    dist.all_gather(gathered, noise)
    prompts = [None] * dist.get_world_size()
    dist.all_gather_object(prompts, prompts_seen)
    if c.world.is_main:
        torch.save({"noise": gathered, "prompts": prompts}, sys.argv[1])
    dist.barrier()  # tearing gloo down while the peer still talks aborts the process
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
