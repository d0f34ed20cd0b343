"""torchrun --nproc_per_node=2 with tests/flash_stub on PYTHONPATH: the tiny transformer with
SP=2 and model.attention=flash against the same weights in one process with diffusers' own
processors (SDPA with the mask, on the padded text).

Writes a JSON report to argv[1] (rank 0), per batch ("one": a prompt; "ragged": two prompts
of different lengths): forward and gradient relative differences, the SDPA calls and the
flash kernels of the SP forward.
"""

import json
import sys
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import flash_stub  # noqa: E402
from conftest import ROOT  # noqa: E402
from fastvideo_grpo.config import load_config  # noqa: E402
from fastvideo_grpo.models import base  # noqa: E402
from fastvideo_grpo.models.hunyuan_video import policy as hunyuan_video  # noqa: E402
from fastvideo_grpo.parallel import init_distributed  # noqa: E402
from fastvideo_grpo.models.hunyuan_video.sequence_parallel import apply_sequence_parallel  # noqa: E402
from helpers import tiny_conditioning, tiny_policy  # noqa: E402

BATCHES = {"one": ["a red ball"], "ragged": ["a red ball", "a blue sky over the sea today"]}


def rel(a, b):
    return ((a - b).abs().max() / b.abs().max().clamp_min(1e-12)).item()


def reference_policy(cfg):
    apply, base.apply_attention = base.apply_attention, lambda network, name: None
    try:
        return tiny_policy(cfg)
    finally:
        base.apply_attention = apply


def reference_predict(policy, x, t, cond):
    crop, hunyuan_video.crop_text = hunyuan_video.crop_text, lambda embeds, mask: (embeds, mask)
    try:
        return policy.predict(x, t, cond)
    finally:
        hunyuan_video.crop_text = crop


def main():
    cfg = load_config(ROOT / "assets/configs/tiny_t2v.yaml", ["model.tiny_heads=4", "model.attention=flash"])
    world = init_distributed("cpu", sp_size=2)
    policy = tiny_policy(cfg)  # same seeded weights on both ranks
    reference = reference_policy(cfg)
    apply_sequence_parallel(policy.transformer, world)
    shape = policy.latent_shape(cfg.sampling.num_frames, cfg.sampling.height, cfg.sampling.width)
    sdpa_calls = []
    sdpa = F.scaled_dot_product_attention
    report = {}
    for batch, prompts in BATCHES.items():
        cond = tiny_conditioning(cfg, prompts, 1)
        x = torch.randn(len(prompts), *shape, generator=torch.Generator().manual_seed(1))
        weights = torch.randn(x.shape, generator=torch.Generator().manual_seed(2))
        flash_stub.CALLS.clear()
        sdpa_calls.clear()
        F.scaled_dot_product_attention = lambda *args, **kwargs: sdpa_calls.append(1) or sdpa(*args, **kwargs)
        out_sp = policy.predict(x, 0.6, cond)
        (out_sp * weights).sum().backward()
        F.scaled_dot_product_attention = sdpa
        out_ref = reference_predict(reference, x, 0.6, cond)
        (out_ref * weights).sum().backward()
        diffs, refs = [], []
        for p_sp, p_ref in zip(policy.transformer.parameters(), reference.transformer.parameters()):
            grad = p_sp.grad.clone()
            dist.all_reduce(grad)
            grad /= world.sp_size  # the mean of the sp ranks' gradients is the full gradient
            diffs.append((grad - p_ref.grad).abs().max())
            refs.append(p_ref.grad.abs().max())
        policy.transformer.zero_grad(set_to_none=True)
        reference.transformer.zero_grad(set_to_none=True)
        report[batch] = {"forward_rel": rel(out_sp, out_ref),
                         "grad_rel": (torch.stack(diffs).max() / torch.stack(refs).max()).item(),
                         "sdpa_calls": len(sdpa_calls),
                         "kernels": sorted({call["kernel"] for call in flash_stub.CALLS})}
    if world.rank == 0:
        Path(sys.argv[1]).write_text(json.dumps(report))
    dist.barrier()  # tearing gloo down while the peer still talks aborts the process
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
