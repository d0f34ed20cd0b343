"""torchrun --nproc_per_node=2: the tiny transformer with SP=2 vs the same model unsplit.

Writes a JSON report to argv[1] (rank 0): max abs/rel differences of forward output,
parameter gradients and a whole rollout.
"""

import copy
import json
import sys
from pathlib import Path

import torch
import torch.distributed as dist

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from conftest import ROOT  # noqa: E402
from fastvideo_grpo.config import load_config  # noqa: E402
from fastvideo_grpo.parallel import init_distributed  # noqa: E402
from fastvideo_grpo.models.hunyuan_video.sequence_parallel import apply_sequence_parallel  # noqa: E402
from helpers import tiny_conditioning, tiny_policy, tiny_rollout  # noqa: E402


def rel(a, b):
    return ((a - b).abs().max() / b.abs().max().clamp_min(1e-12)).item()


def main():
    cfg = load_config(ROOT / "assets/configs/tiny_t2v.yaml", ["model.tiny_heads=4", "sampling.group_size=2"])
    world = init_distributed("cpu", sp_size=2)
    policy = tiny_policy(cfg)  # same seeded weights on both ranks
    reference = copy.copy(policy)
    reference.transformer = copy.deepcopy(policy.transformer)
    apply_sequence_parallel(policy.transformer, world)

    cond = tiny_conditioning(cfg, ["a red ball", "a blue sky"], cfg.sampling.group_size)
    shape = policy.latent_shape(cfg.sampling.num_frames, cfg.sampling.height, cfg.sampling.width)
    x = torch.randn(4, *shape, generator=torch.Generator().manual_seed(1))
    report = {}

    out_sp = policy.predict(x, 0.6, cond)
    out_ref = reference.predict(x, 0.6, cond)
    report["forward_rel"] = rel(out_sp, out_ref)
    weights = torch.randn(out_ref.shape, generator=torch.Generator().manual_seed(2))
    (out_sp * weights).sum().backward()
    (out_ref * weights).sum().backward()
    grad_rel, diffs, refs = 0.0, [], []
    for p_sp, p_ref in zip(policy.transformer.parameters(), reference.transformer.parameters()):
        grad = p_sp.grad.clone()
        dist.all_reduce(grad)
        grad /= world.sp_size  # the mean of the sp ranks' gradients is the full gradient
        diffs.append((grad - p_ref.grad).abs().max())
        refs.append(p_ref.grad.abs().max())
        # A key bias gets ~0 gradient (softmax ignores it): only rounding noise to compare.
        if refs[-1] > 1e-6:
            grad_rel = max(grad_rel, rel(grad, p_ref.grad))
    report["grad_rel_global"] = (torch.stack(diffs).max() / torch.stack(refs).max()).item()
    report["grad_rel"] = grad_rel

    ro_sp = tiny_rollout(cfg, policy, cond, batch_size=2)
    ro_ref = tiny_rollout(cfg, reference, cond, batch_size=2)
    report["rollout_latents_rel"] = rel(ro_sp.latents, ro_ref.latents)
    report["rollout_log_probs_abs"] = (ro_sp.log_probs - ro_ref.log_probs).abs().max().item()
    gathered = [torch.empty_like(ro_sp.latents) for _ in range(2)]
    dist.all_gather(gathered, ro_sp.latents.contiguous())
    report["sp_ranks_identical"] = bool(torch.equal(gathered[0], gathered[1]))
    if world.rank == 0:
        Path(sys.argv[1]).write_text(json.dumps(report))
    dist.barrier()  # tearing gloo down while the peer still talks aborts the process
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
