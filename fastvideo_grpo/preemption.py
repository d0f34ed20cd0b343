"""SIGTERM / SIGUSR1 (a scheduler's warning before preemption) -> checkpoint and exit.

The handler only sets a flag; the trainer checks it between iterations, agrees on it
across ranks, writes a checkpoint and stops with PREEMPTED_EXIT_CODE so that the launch
script can requeue the job.
"""

from __future__ import annotations

import logging
import os
import signal
from pathlib import Path

import torch
import torch.distributed as dist

from fastvideo_grpo.parallel import World

logger = logging.getLogger(__name__)

# EX_TEMPFAIL: "a temporary failure; the user is invited to retry".
PREEMPTED_EXIT_CODE = 75
# Set by the launch script: a file to create on preemption, because torchrun reports any
# worker exit as its own exit code 1.
MARKER_ENV = "FVGRPO_PREEMPT_MARKER"


class Preempted(Exception):
    """Raised by the trainer after it has checkpointed in answer to a preemption signal."""


class PreemptionFlag:
    def __init__(self) -> None:
        self.signal: int | None = None

    def install(self) -> None:
        for sig in (signal.SIGTERM, signal.SIGUSR1):
            signal.signal(sig, self._handle)

    def _handle(self, signum, frame) -> None:
        self.signal = signum

    def requested(self, world: World) -> bool:
        """True on every rank if any rank got a signal (a collective)."""
        flag = torch.tensor([1.0 if self.signal is not None else 0.0], device=world.device)
        if world.mesh is not None:
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return bool(flag.item())


def mark_preempted() -> None:
    marker = os.environ.get(MARKER_ENV)
    if marker:
        Path(marker).parent.mkdir(parents=True, exist_ok=True)
        Path(marker).touch()
