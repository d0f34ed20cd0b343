"""Under torchrun: when each rank loaded its network (build_policy) and finished sharding
it (parallelize), written to <output_dir>/load-<rank>.json. Loading takes 1 s here."""

import json
import sys
import time
from pathlib import Path

import torch.distributed as dist

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from conftest import ROOT  # noqa: E402
from fastvideo_grpo.training import trainer  # noqa: E402
from fastvideo_grpo.config import load_config  # noqa: E402


def main():
    cfg = load_config(ROOT / "assets/configs/tiny_t2v.yaml", sys.argv[1:])
    times = {}
    build, parallelize = trainer.build_policy, trainer.parallelize

    def slow_build(*args, **kwargs):
        times["start"] = time.time()
        time.sleep(1.0)
        return build(*args, **kwargs)

    def timed_parallelize(policy, *args):
        parallelize(policy, *args)
        times.setdefault("end", time.time())  # the policy's: the first

    trainer.build_policy, trainer.parallelize = slow_build, timed_parallelize
    c = trainer.setup(cfg)
    Path(cfg.train.output_dir).mkdir(parents=True, exist_ok=True)
    (Path(cfg.train.output_dir) / f"load-{c.world.rank}.json").write_text(json.dumps(times))
    c.scorer.close()
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
