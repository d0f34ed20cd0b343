"""Signals that stop a run after a checkpoint: SIGTERM / SIGUSR1 (a scheduler's warning
before preemption), SIGINT (Ctrl-C) and SIGHUP (the terminal closed).

The handler only sets a flag; the trainer checks it between iterations, agrees on it
across ranks, writes a checkpoint and stops. After a scheduler's signal it exits with
PREEMPTED_EXIT_CODE, so that the launch script can requeue the job; after the user's (Ctrl-C,
a hangup) with 128 + the signal's number, as a shell reports a process killed by it, and
without requeueing. A second Ctrl-C ends the process at once, without a checkpoint.
SIGINT or SIGHUP ignored when the trainer starts (nohup, a background job) stays ignored.
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
# A scheduler's: the job is to be requeued.
PREEMPTION_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)
# The user's: the job stops.
INTERRUPT_SIGNALS = (signal.SIGINT, signal.SIGHUP)
STOP_SIGNALS = PREEMPTION_SIGNALS + INTERRUPT_SIGNALS


class Preempted(Exception):
    """Raised by the trainer after it has checkpointed in answer to one of STOP_SIGNALS:
    args are the output folder and the signal."""

    @property
    def signal(self) -> int:
        return self.args[1]

    @property
    def exit_code(self) -> int:
        return PREEMPTED_EXIT_CODE if self.signal in PREEMPTION_SIGNALS else 128 + self.signal


class PreemptionFlag:
    def __init__(self) -> None:
        self.signal: int | None = None
        self._previous: dict[int, object] = {}

    def install(self) -> None:
        for sig in STOP_SIGNALS:
            previous = signal.getsignal(sig)
            if sig in INTERRUPT_SIGNALS and previous == signal.SIG_IGN:
                continue
            self._previous[sig] = previous
            signal.signal(sig, self._handle)

    def restore(self) -> None:
        """The handlers from before `install` (a run in a longer-lived process ends)."""
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)
        self._previous = {}

    def _handle(self, signum, frame) -> None:
        if signum == signal.SIGINT:
            # The kernel's default, not Python's KeyboardInterrupt: the next Ctrl-C ends the
            # process even inside a collective or a kernel that does not return to Python.
            signal.signal(signal.SIGINT, signal.SIG_DFL)
            logger.warning("Ctrl-C: stopping after this iteration's checkpoint; Ctrl-C again stops at once, "
                           "without one")
        self.signal = self.signal or signum

    def requested(self, world: World) -> bool:
        """True on every rank if any rank got a signal (a collective). `signal` becomes the
        same on every rank: a scheduler's before the user's."""
        flag = torch.tensor([float(self.signal or 0)], device=world.device)
        if world.mesh is not None:
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        self.signal = int(flag.item()) or None
        return self.signal is not None


def mark_preempted() -> None:
    marker = os.environ.get(MARKER_ENV)
    if marker:
        Path(marker).parent.mkdir(parents=True, exist_ok=True)
        Path(marker).touch()
