"""No rank hangs the job, and no worker outlives its launcher.

A collective waits for every rank up to the process group's timeout (30 minutes, so that a
slow checkpoint write or first step never trips it): one rank that stops (SIGSTOP, a frozen
node) would hold all the others that long, and torchrun, whose worker has not exited,
notices nothing. So each rank runs a heartbeat thread: it counts up its own key in the
rendezvous store every `seconds / 4`, and watches others' keys (rank 0 every rank's, the
others rank 0's); a key that has not moved for `seconds` (parallel.watchdog_seconds) ends
the job. The watcher logs which rank, SIGKILLs it when it runs on the same host (a stopped
process takes no SIGTERM until it is continued, so torchrun would wait out its 30 s grace
before its SIGKILL) and exits, which fails every rank's next collective.

The heartbeat runs beside the training thread: it tells a live process from a stopped or
dead one, not a slow step from a stuck one, so a long checkpoint write or compile never
trips it.

Each worker torchrun starts also asks the kernel (Linux) for SIGKILL when torchrun dies,
e.g. by kill -9: nothing would otherwise end a worker waiting in a collective for a peer
that torchrun took down with it.
"""

from __future__ import annotations

import ctypes
import datetime
import logging
import os
import signal
import socket
import sys
import threading
import time

import torch.distributed as dist

logger = logging.getLogger(__name__)

# A stopped rank ended the job; torchrun reports it as this worker's exit code.
WATCHDOG_EXIT_CODE = 3
PR_SET_PDEATHSIG = 1  # linux/prctl.h
# What a rank's key holds once it has finished: the others stop watching it.
FINISHED = -1


def exit_with_launcher() -> None:
    """Under torchrun on Linux: SIGKILL this process when torchrun dies. A process started
    otherwise (python -m ..., nohup, srun) keeps its parent's lifetime rules."""
    if "TORCHELASTIC_RUN_ID" not in os.environ or not sys.platform.startswith("linux"):
        return
    parent = os.getppid()
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
        logger.warning("prctl(PR_SET_PDEATHSIG) failed (errno %d): this worker may outlive torchrun",
                       ctypes.get_errno())
    if os.getppid() != parent:  # torchrun died before the kernel was asked
        _exit(f"torchrun (pid {parent}) exited before this worker started")


class Watchdog:
    """The heartbeat of this rank and the watch over others' (see the module's docstring)."""

    def __init__(self, rank: int, world_size: int, seconds: float):
        self.rank, self.seconds = rank, seconds
        # Rank 0 watches every rank, the others rank 0: 2 x world_size reads per beat in all.
        self.watched = [r for r in range(world_size) if r != rank] if rank == 0 else [0]
        restart = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
        self.prefix = f"fastvideo_grpo/watchdog/{os.environ.get('TORCHELASTIC_RUN_ID', '')}/{restart}"
        host, port = os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"])
        self.address = f"{host}:{port}"
        # Its own client, with a timeout of `seconds`: a store that stops answering (its host
        # is stopped) fails a beat rather than blocking it.
        self.store = dist.TCPStore(host, port, is_master=False, timeout=datetime.timedelta(seconds=seconds))
        self.store.set(self._key("who", rank), f"{socket.gethostname()} {os.getpid()}")
        self.parent = os.getppid()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="watchdog")

    def _key(self, kind: str, rank: int) -> str:
        return f"{self.prefix}/{kind}/{rank}"

    def start(self) -> Watchdog:
        self._thread.start()
        return self

    def stop(self) -> None:
        """This rank is finished (or failed by itself): the others stop watching it."""
        self._stop.set()
        self._thread.join()
        try:
            self.store.set(self._key("beat", self.rank), str(FINISHED))
        except (RuntimeError, OSError) as e:  # the launcher may be gone already: nothing to tell
            logger.debug("could not mark rank %d finished in the store: %s", self.rank, e)

    def _run(self) -> None:
        interval = self.seconds / 4
        seen = {r: (None, time.monotonic()) for r in self.watched}  # rank -> (last count, when it changed)
        while not self._stop.wait(interval):
            if os.getppid() != self.parent:
                _exit(f"the launcher (pid {self.parent}) is gone")
            try:
                self.store.add(self._key("beat", self.rank), 1)
                counts = {r: self.store.add(self._key("beat", r), 0) for r in list(seen)}
            except (RuntimeError, OSError) as e:  # a timeout or a lost connection: gone or stopped alike
                _exit(f"the rendezvous store at {self.address} did not answer within parallel.watchdog_seconds="
                      f"{self.seconds:g} ({type(e).__name__}: {e}): its host (torchrun or rank 0) is gone or "
                      "stopped; ending the job")
            now = time.monotonic()
            for r, count in counts.items():
                last, since = seen[r]
                if count == FINISHED:
                    del seen[r]
                elif count != last:
                    seen[r] = (count, now)
                elif now - since > self.seconds:
                    self._end_job(r, now - since)

    def _end_job(self, rank: int, silent_s: float) -> None:
        try:
            host, pid = self.store.get(self._key("who", rank)).decode().split()
        except (RuntimeError, OSError):  # it stopped before it could say
            host, pid = "?", "?"
        what = (f"rank {rank} (pid {pid} on {host}) sent no heartbeat for {silent_s:.0f}s (parallel.watchdog_seconds="
                f"{self.seconds:g}): it is stopped, frozen or dead")
        if host == socket.gethostname():
            try:
                os.kill(int(pid), signal.SIGKILL)
                what += "; killed it"
            except ProcessLookupError:
                pass
        _exit(f"{what}; ending the job")


_running: Watchdog | None = None


def start_watchdog(rank: int, world_size: int, seconds: float) -> None:
    """Start this process's watchdog (one per process group, like the group itself)."""
    global _running
    _running = Watchdog(rank, world_size, seconds).start()
    logger.info("watchdog: a rank silent for %gs (parallel.watchdog_seconds) ends the job", seconds)


def stop_watchdog() -> None:
    global _running
    if _running is not None:
        _running.stop()
        _running = None


def _exit(reason: str) -> None:
    """End this process now: the training thread may be blocked in a collective that only the
    process group's timeout would end."""
    logger.error("watchdog: %s", reason)
    logging.shutdown()
    os._exit(WATCHDOG_EXIT_CODE)
