"""Per-rank memory under FSDP2 and Ulysses sequence parallelism, 2 ranks vs 1 (CPU, gloo).

    python bench/parallel_memory.py          # launches the 1- and 2-rank runs, prints ratios

FSDP: bytes of parameters + gradients + AdamW state held by one rank after an optimizer
step (goal <= 0.55x of one rank holding everything). SP: bytes of activations saved for
backward by one rank's forward over a long video sequence (goal <= 0.6x), counted exactly
with autograd's saved-tensor hooks.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

MODEL = ["model.tiny_heads=4", "model.tiny_head_dim=32", "model.tiny_layers=2", "model.tiny_single_layers=2",
         "parallel.activation_checkpointing=false"]
# 8 x 16 x 16 latents: 512 video tokens after 2x2 patching.
LONG_VIDEO = ["sampling.num_frames=29", "sampling.height=128", "sampling.width=128"]


def local_bytes(tensors) -> int:
    total = 0
    for t in tensors:
        t = t.to_local() if hasattr(t, "to_local") else t
        total += t.numel() * t.element_size()
    return total


def saved_activation_bytes(fn, parameters) -> int:
    """Bytes of the distinct storages autograd saves during fn(), parameters excluded."""
    weights = {p.untyped_storage().data_ptr() for p in parameters}
    seen: dict[int, int] = {}

    def pack(t):
        ptr = t.untyped_storage().data_ptr()
        if ptr not in weights:
            seen[ptr] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn()
    return sum(seen.values()), out


def measure(sp_size: int) -> dict:
    from fastvideo_grpo.config import load_config
    from fastvideo_grpo.models import build_policy
    from fastvideo_grpo.models.tiny.hashing_text_encoder import TinyTextEncoder
    from fastvideo_grpo.parallel import init_distributed
    from fastvideo_grpo.parallel.fsdp import apply_fsdp
    from fastvideo_grpo.algorithms.learner import build_optimizer

    cfg = load_config(ROOT / "assets/configs/tiny_t2v.yaml", MODEL + LONG_VIDEO + [f"parallel.sp_size={sp_size}"])
    world = init_distributed("cpu", sp_size=sp_size)
    m = cfg.model
    policy = build_policy(m, world.device, m.tiny_text_dim, m.tiny_pooled_dim)
    # The SP measurement is of activations alone: shard nothing but the sequence.
    if sp_size > 1:
        from fastvideo_grpo.models.hunyuan_video.sequence_parallel import apply_sequence_parallel

        apply_sequence_parallel(policy.transformer, world)
    x = torch.randn(1, *policy.latent_shape(cfg.sampling.num_frames, cfg.sampling.height, cfg.sampling.width))
    cond = TinyTextEncoder(m.tiny_text_dim, m.tiny_pooled_dim, cfg.data.max_text_tokens)(["a red ball"])
    activations, out = saved_activation_bytes(lambda: policy.predict(x, 0.5, cond),
                                              policy.transformer.parameters())
    out.square().mean().backward()

    # FSDP shards over every rank of the mesh (dp_shard x sp), here the 2 ranks.
    fsdp_policy = build_policy(m, world.device, m.tiny_text_dim, m.tiny_pooled_dim)
    apply_fsdp(fsdp_policy.transformer, fsdp_policy.blocks, world, torch.float32, cpu_offload=False)
    optimizer, _ = build_optimizer(fsdp_policy, cfg)
    small = torch.randn(1, *fsdp_policy.latent_shape(5, 32, 32))
    fsdp_policy.predict(small, 0.5, cond).square().mean().backward()
    optimizer.step()
    params = list(fsdp_policy.transformer.parameters())
    state = [v for s in optimizer.state.values() for v in s.values() if torch.is_tensor(v) and v.ndim > 0]
    return {"params": local_bytes(params), "grads": local_bytes(p.grad for p in params),
            "optimizer": local_bytes(state), "activations": activations}


def main() -> None:
    if os.environ.get("RANK") is not None:
        result = measure(int(sys.argv[2]))
        if int(os.environ["RANK"]) == 0:
            Path(sys.argv[1]).write_text(json.dumps(result))
        return
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    with tempfile.TemporaryDirectory() as tmp:
        results = {}
        for nproc in (1, 2):
            path = Path(tmp) / f"{nproc}.json"
            subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                            f"--nproc_per_node={nproc}", __file__, str(path), str(nproc)], check=True, env=env)
            results[nproc] = json.loads(path.read_text())
    one, two = results[1], results[2]
    state_one = one["params"] + one["grads"] + one["optimizer"]
    state_two = two["params"] + two["grads"] + two["optimizer"]
    print(f"FSDP2 params+grads+optimizer per rank: 1 rank {state_one / 2**20:.2f} MiB, "
          f"2 ranks {state_two / 2**20:.2f} MiB -> ratio {state_two / state_one:.3f} (goal <= 0.55)")
    print(f"SP saved activations per rank (512 video tokens): SP=1 {one['activations'] / 2**20:.2f} MiB, "
          f"SP=2 {two['activations'] / 2**20:.2f} MiB -> ratio {two['activations'] / one['activations']:.3f} "
          "(goal <= 0.6)")


if __name__ == "__main__":
    main()
