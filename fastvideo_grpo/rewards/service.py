"""The reward process: reward models live here, never in the policy's FSDP ranks.

One process per node (or a standalone server on a dedicated node) loads the configured
rewards once and serves every local rank over TCP. A request is one video (uint8
[T, H, W, 3], or the path of a video file the server reads) with its prompt and a request
id; the server batches requests of the same
shape up to `max_batch` or `max_latency_ms` and replies with named float scores, or with
an error naming the reward that failed. Clients match replies by id, so replies may come
in any order; a request that times out, a dead server, or a failing reward raises
`RewardError` in the trainer, never a made-up score.

The per-node reward process lives and dies with its trainer: it ignores the signals that
stop a run after a checkpoint (SIGTERM, SIGUSR1, and Ctrl-C's SIGINT and a hangup's SIGHUP)
when they reach its whole process group, because the trainer still
needs its scores to finish the iteration it checkpoints after; the trainer kills it on
close, and it exits by itself if the trainer dies without closing it.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import logging
import multiprocessing as mp
import multiprocessing.connection
import os
import queue
import signal
import socket
import threading
import time
from dataclasses import dataclass, field
from multiprocessing import resource_tracker

import torch
import torch.distributed as dist

from fastvideo_grpo.config import RewardConfig
from fastvideo_grpo.preemption import STOP_SIGNALS
from fastvideo_grpo.rewards import RewardError, Scorer, build_scorer
from fastvideo_grpo.rewards.pairwise import take_whole_groups
from fastvideo_grpo.rewards.protocol import frames_request, path_request, recv_message, request_video, send_message

logger = logging.getLogger(__name__)

# What stops a run after a checkpoint; the trainer defers them (fastvideo_grpo.preemption).
PREEMPTION_SIGNALS = set(STOP_SIGNALS)
# A SIGKILLed process is gone within milliseconds unless it is stuck in the kernel (a hung
# GPU driver call); past this the trainer stops waiting for it rather than hang on exit.
KILL_WAIT_S = 10.0


class RewardTimeout(RewardError):
    """No reply within reward.timeout_s: the server is hung, not merely failing."""


@dataclass
class _Request:
    id: int
    prompt: str
    video: torch.Tensor  # uint8 [T, H, W, 3]
    reply: "_Connection"


@dataclass
class _Connection:
    sock: socket.socket
    lock: threading.Lock = field(default_factory=threading.Lock)

    def send(self, header: dict) -> None:
        with self.lock:
            send_message(self.sock, header)


def serve(cfg: RewardConfig, listener: socket.socket, scorer: Scorer | None = None) -> None:
    """Accept clients on `listener` and score their requests with `scorer` (built from `cfg`
    unless given) until the process is killed."""
    scorer = build_scorer(cfg) if scorer is None else scorer
    pending: queue.Queue[_Request] = queue.Queue()

    def read_requests(conn: _Connection) -> None:
        try:
            while True:
                header, payload = recv_message(conn.sock)
                try:
                    video = request_video(header, payload)
                except Exception as e:  # a file it cannot read fails that request, not the connection
                    _send_quietly(conn, {"id": header["id"], "error": f"could not read the video: {e}"})
                    continue
                pending.put(_Request(header["id"], header["prompt"], video, conn))
        except (ConnectionError, OSError):
            conn.sock.close()

    def accept() -> None:
        while True:
            sock, _ = listener.accept()
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            threading.Thread(target=read_requests, args=(_Connection(sock),), daemon=True).start()

    threading.Thread(target=accept, daemon=True).start()
    held: list[_Request] = []
    while True:
        batch = [pending.get()]
        deadline = time.monotonic() + cfg.max_latency_ms / 1000
        while len(batch) < cfg.max_batch:
            try:
                batch.append(pending.get(timeout=max(0.0, deadline - time.monotonic())))
            except queue.Empty:
                break
        if scorer.group_size:
            # A pairwise reward scores whole groups: a request waits until its group (its
            # client's requests of its prompt) is whole.
            batch, held = take_whole_groups(held + batch, lambda r: (id(r.reply), r.prompt), scorer.group_size)
        by_shape: dict[tuple, list[_Request]] = {}
        for request in batch:
            # A pairwise reward's call holds one client's requests: its samples of a prompt,
            # in order, are its groups.
            client = id(request.reply) if scorer.group_size else 0
            by_shape.setdefault((tuple(request.video.shape), client), []).append(request)
        for requests in by_shape.values():
            _score_and_reply(scorer, requests)


def _score_and_reply(scorer: Scorer, requests: list[_Request]) -> None:
    ids = [r.id for r in requests]
    try:
        scores = scorer(torch.stack([r.video for r in requests]), [r.prompt for r in requests],
                        what=f"requests {ids}")
    except Exception as e:
        for r in requests:
            _send_quietly(r.reply, {"id": r.id, "error": str(e)})
        return
    for row, r in enumerate(requests):
        _send_quietly(r.reply, {"id": r.id, "scores": {name: float(s[row]) for name, s in scores.items()}})


def _send_quietly(conn: _Connection, header: dict) -> None:
    try:
        conn.send(header)
    except OSError:
        logger.warning("client of request %s is gone", header["id"])


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


class RewardClient:
    """A rank's connection to a reward server. `submit` returns at once; `result` waits."""

    def __init__(self, address: str, timeout_s: float, restart=None, max_restarts: int = 0, why_lost=None):
        self.address, self.timeout_s = address, timeout_s
        self.restart, self.max_restarts, self.restarts = restart, max_restarts, 0
        # () -> what became of the server, added to a lost connection's error (its process's end).
        self.why_lost = why_lost
        self._ids = itertools.count()
        self._replies: dict[int, dict] = {}
        self._sent: dict[int, tuple[dict, bytes]] = {}
        self._cond = threading.Condition()
        self._broken: str | None = None
        self._connect()

    def _connect(self) -> None:
        host, port = self.address.rsplit(":", 1)
        try:
            self.sock = socket.create_connection((host, int(port)), timeout=self.timeout_s)
        except (OSError, ValueError) as e:
            raise RewardError(f"could not connect to the reward server at {self.address}: {e}") from e
        self.sock.settimeout(None)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._broken = None
        threading.Thread(target=self._receive, args=(self.sock,), daemon=True).start()

    def _receive(self, sock: socket.socket) -> None:
        try:
            while True:
                header, _ = recv_message(sock)
                with self._cond:
                    self._replies[header["id"]] = header
                    self._cond.notify_all()
        except (ConnectionError, OSError) as e:
            with self._cond:
                if sock is self.sock:
                    self._broken = f"connection to the reward server at {self.address} lost: {e}"
                self._cond.notify_all()

    def submit(self, videos: torch.Tensor, prompts: list[str]) -> list[int]:
        """Send one request per video (uint8 [B, T, H, W, 3]); returns their ids."""
        return [self._request(*frames_request(next(self._ids), prompt, video))
                for video, prompt in zip(videos, prompts, strict=True)]

    def submit_paths(self, paths: list[str], prompts: list[str]) -> list[int]:
        """Send one request per video file, which the server reads; returns their ids."""
        return [self._request(*path_request(next(self._ids), prompt, str(path)))
                for path, prompt in zip(paths, prompts, strict=True)]

    def _request(self, header: dict, payload: bytes) -> int:
        self._sent[header["id"]] = (header, payload)
        self._send(header, payload)
        return header["id"]

    def _send(self, header: dict, payload: bytes) -> None:
        try:
            send_message(self.sock, header, payload)
        except OSError as e:
            with self._cond:
                self._broken = f"could not send request {header['id']} to the reward server at {self.address}: {e}"

    def result(self, ids: list[int]) -> dict[str, torch.Tensor]:
        """Scores of the requests `ids`, in their order: {reward name: [len(ids)]}."""
        deadline = time.monotonic() + self.timeout_s
        with self._cond:
            while True:
                missing = [i for i in ids if i not in self._replies]
                if not missing:
                    break
                if self._broken is not None:
                    self._recover()
                    # The resent requests get the full timeout on the new process: its start
                    # may itself have taken most of the old deadline.
                    deadline = time.monotonic() + self.timeout_s
                    continue
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise RewardTimeout(f"reward requests {missing} got no reply within reward.timeout_s="
                                        f"{self.timeout_s}s from {self.address}")
                self._cond.wait(timeout=remaining)
            replies = [self._replies.pop(i) for i in ids]
        for i in ids:
            self._sent.pop(i, None)
        for reply in replies:
            if "error" in reply:
                raise RewardError(f"reward server at {self.address}, request {reply['id']}: {reply['error']}")
        names = list(replies[0]["scores"])
        return {name: torch.tensor([r["scores"][name] for r in replies]) for name in names}

    def _recover(self) -> None:
        """Called with the lock held after the connection broke: restart the server and
        resend every pending request, or raise. Every one, not only those awaited: the
        other rollout batches in flight were lost with the connection too."""
        reason = self._broken if self.why_lost is None else f"{self._broken} ({self.why_lost()})"
        pending = [i for i in self._sent if i not in self._replies]
        if self.restart is None or self.restarts >= self.max_restarts:
            raise RewardError(f"{reason}; requests {pending} are lost (restarts used: {self.restarts})")
        self.restarts += 1
        logger.warning("%s; restarting the reward process (%d/%d) and resending requests %s", reason,
                       self.restarts, self.max_restarts, pending)
        self.sock.close()
        self.address = self.restart()
        self._connect()
        for request_id in pending:
            self._send(*self._sent[request_id])

    def close(self) -> None:
        self.sock.close()


class InlineScorer:
    """reward.mode=inline: scores in this process when submitted."""

    # Submitted one rollout batch per call: sending pieces gains nothing when scoring blocks,
    # and a pairwise reward needs whole groups in a call (rollout batches of whole groups).
    streams = False

    def __init__(self, cfg: RewardConfig):
        self.score = build_scorer(cfg)
        self._results: dict[int, dict[str, torch.Tensor]] = {}
        self._ids = itertools.count()

    def submit(self, videos: torch.Tensor, prompts: list[str]) -> int:
        handle = next(self._ids)
        self._results[handle] = self.score(videos, prompts)
        return handle

    def result(self, handle: int) -> dict[str, torch.Tensor]:
        return self._results.pop(handle)

    def close(self) -> None:
        pass


class ServiceScorer:
    """reward.mode=process or remote: requests go to a reward server and are scored while
    this rank goes on with its rollout."""

    # Takes videos as soon as they are decoded: each is its own request anyway, and the
    # server starts scoring the first while the rest decode.
    streams = True

    def __init__(self, cfg: RewardConfig, address: str, process: mp.Process | None = None):
        self.cfg, self.process = cfg, process
        if process is None:
            try:
                self.client = RewardClient(address, cfg.timeout_s)
            except RewardError as e:
                raise RewardError(f"reward.address: {e}; is a reward server (python -m fastvideo_grpo.rewards.serve) "
                                  "listening there?") from e
        else:
            self.client = RewardClient(address, cfg.timeout_s, self._restart, cfg.max_restarts,
                                       lambda: how_it_ended(self.process, wait_s=1.0))

    def _restart(self) -> str:
        stop_process(self.process)
        self.process, address = start_reward_process(self.cfg)
        return address

    def submit(self, videos: torch.Tensor, prompts: list[str]) -> list[int]:
        return self.client.submit(videos, prompts)

    def submit_paths(self, paths: list[str], prompts: list[str]) -> list[int]:
        """Score video files the reward server reads itself (its own paths to them)."""
        return self.client.submit_paths(paths, prompts)

    def result(self, handle: list[int]) -> dict[str, torch.Tensor]:
        try:
            return self.client.result(handle)
        except RewardTimeout:
            # A hung process (stopped, or stuck in a GPU call) is killed now, so that the
            # error ends the run instead of leaving whoever joins it waiting.
            if self.process is not None:
                stop_process(self.process)
            raise

    def close(self) -> None:
        self.client.close()
        if self.process is not None:
            stop_process(self.process)


def build_reward_scorer(cfg: RewardConfig, world) -> InlineScorer | ServiceScorer:
    """The scorer `reward.mode` asks for. In process mode the first rank of each node
    starts that node's reward process and the node's other ranks connect to it."""
    if cfg.mode == "inline":
        return InlineScorer(cfg)
    if cfg.mode == "remote":
        return ServiceScorer(cfg, cfg.address)
    process = address = None
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    if local_rank == 0:
        process, address = start_reward_process(cfg)
    if world.mesh is not None:
        published = [None] * world.world_size
        dist.all_gather_object(published, (socket.gethostname(), address))
        host = socket.gethostname()
        address = next(a for h, a in published if h == host and a is not None)
    return ServiceScorer(cfg, address, process)
