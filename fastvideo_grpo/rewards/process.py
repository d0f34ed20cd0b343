"""The per-node reward process: a child of the trainer that runs the reward server
(fastvideo_grpo.rewards.server); its start, its stop, and how it ended.

It lives and dies with its trainer: it ignores the signals that stop a run after a
checkpoint (SIGTERM, SIGUSR1, and Ctrl-C's SIGINT and a hangup's SIGHUP) when they reach
its whole process group, because the trainer still needs its scores to finish the
iteration it checkpoints after; the trainer kills it on close, and it exits by itself if
the trainer dies without closing it.
"""

from __future__ import annotations

import contextlib
import json
import logging
import multiprocessing as mp
import multiprocessing.connection
import os
import signal
import socket
import threading
from multiprocessing import resource_tracker

from fastvideo_grpo.config import RewardConfig
from fastvideo_grpo.training.preemption import STOP_SIGNALS
from fastvideo_grpo.rewards import RewardError, build_scorer
from fastvideo_grpo.rewards.server import serve

logger = logging.getLogger(__name__)

# What stops a run after a checkpoint; the trainer defers them (fastvideo_grpo.training.preemption).
PREEMPTION_SIGNALS = set(STOP_SIGNALS)
# A SIGKILLed process is gone within milliseconds unless it is stuck in the kernel (a hung
# GPU driver call); past this the trainer stops waiting for it rather than hang on exit.
KILL_WAIT_S = 10.0


def _process_main(cfg: RewardConfig, listener: socket.socket, status: mp.connection.Connection) -> None:
    logging.basicConfig(level=logging.WARNING)
    _ignore_preemption_signals()
    _exit_with_parent()
    try:
        scorer = build_scorer(cfg)  # imports reward.plugins in this process too
    except Exception as e:
        # The trainer is waiting on `status`: tell it why, so it need not wait out the timeout.
        status.send_bytes(json.dumps({"error": f"{type(e).__name__}: {e}"}).encode())
        raise
    status.send_bytes(json.dumps({"ready": True}).encode())
    status.close()
    serve(cfg, listener, scorer)


def _ignore_preemption_signals() -> None:
    """A scheduler signals the whole process group; the trainer answers by finishing the
    iteration, which needs this process's scores, and kills this process when it closes."""
    for sig in PREEMPTION_SIGNALS:
        signal.signal(sig, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, PREEMPTION_SIGNALS)  # blocked by the parent


def _exit_with_parent() -> None:
    """Exit when the trainer is gone (e.g. SIGKILLed): ignoring SIGTERM, this process would
    otherwise hold its device until someone SIGKILLs it too."""
    parent = mp.parent_process()

    def watch() -> None:
        mp.connection.wait([parent.sentinel])
        logger.warning("the trainer (pid %d) is gone; the reward process exits", parent.pid)
        os._exit(1)

    threading.Thread(target=watch, daemon=True, name="watch-trainer").start()


@contextlib.contextmanager
def _preemption_signals_blocked():
    """Block PREEMPTION_SIGNALS in this thread while it spawns the reward process: the child
    inherits the mask through fork and exec, so a preemption signal that arrives while it
    imports (seconds) waits until it ignores them instead of killing it. This process loses
    none meanwhile: another of its threads takes them, or they wait for the unblock."""
    resource_tracker.ensure_running()  # starting the tracker unblocks SIGTERM: do it first
    old_mask = signal.pthread_sigmask(signal.SIG_BLOCK, PREEMPTION_SIGNALS)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)


def start_reward_process(cfg: RewardConfig) -> tuple[mp.Process, str]:
    """Spawn a reward process listening on a free loopback port; returns it and its address
    once its rewards are built. Raises RewardError with the child's own error as soon as it
    fails or dies, or after reward.timeout_s."""
    listener = socket.create_server(("127.0.0.1", 0))
    ctx = mp.get_context("spawn")
    status, child_status = ctx.Pipe(duplex=False)
    process = ctx.Process(target=_process_main, args=(cfg, listener, child_status), daemon=True,
                          name="reward-process")
    with _preemption_signals_blocked():
        process.start()
    address = f"127.0.0.1:{listener.getsockname()[1]}"
    listener.close()  # the child holds its own copies of both
    child_status.close()
    try:
        _wait_until_ready(process, status, cfg.timeout_s)
    except RewardError:
        stop_process(process)
        raise
    finally:
        status.close()
    return process, address


def _wait_until_ready(process: mp.Process, status: mp.connection.Connection, timeout_s: float) -> None:
    # Waiting on the process as well as on its message: a child that dies before it can
    # send one (killed, out of memory, a crash in native code) is reported at once too.
    if not mp.connection.wait([status, process.sentinel], timeout=timeout_s):
        raise RewardError(f"the reward process (pid {process.pid}) did not start within "
                          f"reward.timeout_s={timeout_s}s")
    try:
        message = json.loads(status.recv_bytes()) if status.poll() else {}
    except EOFError:
        message = {}
    if message.get("ready"):
        return
    if "error" in message:
        raise RewardError(f"the reward process (pid {process.pid}) could not start: {message['error']}")
    raise RewardError(f"{how_it_ended(process)} before it was ready")


def how_it_ended(process: mp.Process, wait_s: float = KILL_WAIT_S) -> str:
    """'the reward process (pid N) was killed by SIGKILL', or exited with code N, or is still
    running after `wait_s` (a process whose pipe or socket closed is exiting: it is gone
    within milliseconds unless stuck in the kernel)."""
    process.join(wait_s)
    what = f"the reward process (pid {process.pid})"
    code = process.exitcode
    if code is None:
        return f"{what} is still running"
    if code < 0:
        try:
            return f"{what} was killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"{what} was killed by signal {-code}"
    return f"{what} exited with code {code}"


def stop_process(process: mp.Process) -> None:
    """SIGKILL `process` and wait for it, at most KILL_WAIT_S: a stopped or hung process
    must not hang the trainer's exit."""
    process.kill()
    process.join(KILL_WAIT_S)
    if process.is_alive():
        logger.warning("the reward process (pid %d) did not exit within %gs of SIGKILL; leaving it",
                       process.pid, KILL_WAIT_S)
