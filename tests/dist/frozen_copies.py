"""Under torchrun: set up NFT with a KL reference (two frozen copies of the network) and
report, from rank 0, how the frozen copies are sharded, whether they equal the policy, and
the largest tensor allocated from the moment the policy is loaded until it and its copies
are sharded (counting a DTensor by its local shard)."""

import json
import sys
from pathlib import Path

import torch
import torch.distributed as dist
from torch.distributed.tensor import DTensor
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from conftest import ROOT  # noqa: E402
from fastvideo_grpo.training import trainer  # noqa: E402
from fastvideo_grpo.config import load_config  # noqa: E402


def _local(t: torch.Tensor) -> torch.Tensor:
    return t._local_tensor if isinstance(t, DTensor) else t


class LargestAllocation(TorchDispatchMode):
    """The most elements of one tensor an op allocated (not a view of one of its inputs)."""

    def __init__(self):
        super().__init__()
        self.largest, self.op = 0, None

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        tensors = lambda tree: [_local(t) for t in tree_leaves(tree) if isinstance(t, torch.Tensor)]  # noqa: E731
        inputs = {t.untyped_storage().data_ptr() for t in tensors((args, kwargs)) if not t.is_meta}
        for t in tensors(out):
            if not t.is_meta and t.untyped_storage().data_ptr() not in inputs and t.numel() > self.largest:
                self.largest, self.op = t.numel(), str(func)
        return out


def main():
    cfg = load_config(ROOT / "assets/configs/tiny_t2v.yaml", sys.argv[2:])
    recorder = LargestAllocation()

    def recorded(fn):
        def run(*args, **kwargs):
            with recorder:
                return fn(*args, **kwargs)
        return run

    # Everything setup does to the network between loading it and training it.
    for name in ("frozen_copy", "apply_lora", "build_old", "parallelize", "fill_frozen"):
        setattr(trainer, name, recorded(getattr(trainer, name)))
    c = trainer.setup(cfg)
    policy = dict(c.policy.transformer.named_parameters())
    report = {"largest_allocation": recorder.largest, "largest_op": recorder.op,
              "largest_parameter": max(p.numel() for p in policy.values()),
              "largest_shard": max(_local(p).numel() for p in policy.values())}
    for role, frozen in (("reference", c.reference), ("old", c.old)):
        params = dict(frozen.transformer.named_parameters())
        report[role] = {
            "names_match": params.keys() == policy.keys(),
            "sharded_alike": all(isinstance(p, DTensor) and p.placements == policy[n].placements
                                 and p.device_mesh == policy[n].device_mesh for n, p in params.items()),
            "equal": all(torch.equal(_local(p), _local(policy[n])) for n, p in params.items()),
            "frozen": not any(p.requires_grad for p in params.values()),
        }
    if c.world.is_main:
        Path(sys.argv[1]).write_text(json.dumps(report))
    c.scorer.close()
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
