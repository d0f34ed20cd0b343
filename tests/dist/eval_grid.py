"""Run `python -m fastvideo_grpo.evaluate ARGS...` (alone or under torchrun) with the object
collectives recorded: each rank writes to <argv[1]>/rank<R>.json how many videos (4-d
tensors) it received from other ranks."""

import json
import os
import sys
from pathlib import Path

import torch
import torch.distributed as dist

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from fastvideo_grpo.cli.evaluate import main as evaluate_main  # noqa: E402


def videos_in(obj) -> int:
    if isinstance(obj, torch.Tensor):
        return int(obj.ndim == 4)
    if isinstance(obj, dict):
        return sum(videos_in(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(videos_in(v) for v in obj)
    return 0


def main():
    report, received = Path(sys.argv[1]), []
    all_gather_object, gather_object = dist.all_gather_object, dist.gather_object

    def recording_all_gather(object_list, obj, group=None):
        all_gather_object(object_list, obj, group)
        received.append(sum(videos_in(o) for rank, o in enumerate(object_list) if rank != dist.get_rank()))

    def recording_gather(obj, object_gather_list=None, dst=None, group=None, group_dst=None):
        gather_object(obj, object_gather_list, dst, group, group_dst)
        others = [o for rank, o in enumerate(object_gather_list or []) if rank != dist.get_rank()]
        received.append(videos_in(others))

    dist.all_gather_object, dist.gather_object = recording_all_gather, recording_gather
    evaluate_main(sys.argv[2:])
    report.mkdir(parents=True, exist_ok=True)
    (report / f"rank{os.environ.get('RANK', '0')}.json").write_text(json.dumps({"videos_received": sum(received)}))


if __name__ == "__main__":
    main()
