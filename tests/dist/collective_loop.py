"""All-reduce in a loop, forever, with the watchdog on: ARGS are watchdog_seconds and a file
rank 0 writes once every rank has joined. A job to stop or orphan in tests without the
cost of building a model."""

import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from fastvideo_grpo.parallel import barrier, init_distributed  # noqa: E402

world = init_distributed("cpu", watchdog_seconds=float(sys.argv[1]))
barrier(world)
if world.is_main:
    Path(sys.argv[2]).write_text("ready\n")
total = torch.zeros(1)
while True:
    dist.all_reduce(total)
    time.sleep(0.05)
