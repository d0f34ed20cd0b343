"""The reward process: reward models live here, never in the policy's FSDP ranks.

One process per node (or a standalone server on a dedicated node) loads the configured
rewards once and serves every local rank over TCP. A request is one video (uint8
[T, H, W, 3]) with its prompt and a request id; the server batches requests of the same
shape up to `max_batch` or `max_latency_ms` and replies with named float scores, or with
an error naming the reward that failed. Clients match replies by id, so replies may come
in any order; a request that times out, a dead server, or a failing reward raises
`RewardError` in the trainer, never a made-up score.
"""

from __future__ import annotations

import itertools
import logging
import multiprocessing as mp
import os
import queue
import socket
import threading
import time
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.distributed as dist

from fastvideo_grpo.config import RewardConfig
from fastvideo_grpo.rewards import RewardError, build_rewards, score_with
from fastvideo_grpo.rewards.protocol import recv_message, send_message

logger = logging.getLogger(__name__)


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


def serve(cfg: RewardConfig, listener: socket.socket, ready=None) -> None:
    """Accept clients on `listener` and score their requests until the process is killed."""
    rewards = build_rewards(cfg)
    pending: queue.Queue[_Request] = queue.Queue()

    def read_requests(conn: _Connection) -> None:
        try:
            while True:
                header, payload = recv_message(conn.sock)
                video = torch.from_numpy(np.frombuffer(payload, dtype=np.uint8).reshape(header["shape"]).copy())
                pending.put(_Request(header["id"], header["prompt"], video, conn))
        except (ConnectionError, OSError):
            conn.sock.close()

    def accept() -> None:
        while True:
            sock, _ = listener.accept()
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            threading.Thread(target=read_requests, args=(_Connection(sock),), daemon=True).start()

    threading.Thread(target=accept, daemon=True).start()
    if ready is not None:
        ready.set()
    while True:
        batch = [pending.get()]
        deadline = time.monotonic() + cfg.max_latency_ms / 1000
        while len(batch) < cfg.max_batch:
            try:
                batch.append(pending.get(timeout=max(0.0, deadline - time.monotonic())))
            except queue.Empty:
                break
        by_shape: dict[tuple, list[_Request]] = {}
        for request in batch:
            by_shape.setdefault(tuple(request.video.shape), []).append(request)
        for requests in by_shape.values():
            _score_and_reply(rewards, requests)


def _score_and_reply(rewards, requests: list[_Request]) -> None:
    ids = [r.id for r in requests]
    try:
        scores = score_with(rewards, torch.stack([r.video for r in requests]), [r.prompt for r in requests],
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


def _process_main(cfg: RewardConfig, listener: socket.socket, ready) -> None:
    logging.basicConfig(level=logging.WARNING)
    serve(cfg, listener, ready)


def start_reward_process(cfg: RewardConfig) -> tuple[mp.Process, str]:
    """Spawn a reward process listening on a free loopback port; returns it and its address."""
    listener = socket.create_server(("127.0.0.1", 0))
    ctx = mp.get_context("spawn")
    ready = ctx.Event()
    process = ctx.Process(target=_process_main, args=(cfg, listener, ready), daemon=True, name="reward-process")
    process.start()
    address = f"127.0.0.1:{listener.getsockname()[1]}"
    listener.close()  # the child holds its own copy
    if not ready.wait(timeout=cfg.timeout_s):
        process.kill()
        raise RewardError(f"the reward process did not start within reward.timeout_s={cfg.timeout_s}s")
    return process, address


class RewardClient:
    """A rank's connection to a reward server. `submit` returns at once; `result` waits."""

    def __init__(self, address: str, timeout_s: float, restart=None, max_restarts: int = 0):
        self.address, self.timeout_s = address, timeout_s
        self.restart, self.max_restarts, self.restarts = restart, max_restarts, 0
        self._ids = itertools.count()
        self._replies: dict[int, dict] = {}
        self._sent: dict[int, tuple[dict, bytes]] = {}
        self._cond = threading.Condition()
        self._broken: str | None = None
        self._connect()

    def _connect(self) -> None:
        host, port = self.address.rsplit(":", 1)
        self.sock = socket.create_connection((host, int(port)), timeout=self.timeout_s)
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
        ids = []
        for video, prompt in zip(videos, prompts, strict=True):
            request_id = next(self._ids)
            header = {"id": request_id, "prompt": prompt, "shape": list(video.shape)}
            payload = video.contiguous().numpy().tobytes()
            self._sent[request_id] = (header, payload)
            self._send(header, payload)
            ids.append(request_id)
        return ids

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
                    self._recover(missing)
                    continue
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise RewardError(f"reward requests {missing} got no reply within reward.timeout_s="
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

    def _recover(self, missing: list[int]) -> None:
        """Called with the lock held after the connection broke: restart or raise."""
        reason = self._broken
        if self.restart is None or self.restarts >= self.max_restarts:
            raise RewardError(f"{reason}; requests {missing} are lost (restarts used: {self.restarts})")
        self.restarts += 1
        logger.warning("%s; restarting the reward process (%d/%d) and resending %d requests", reason,
                       self.restarts, self.max_restarts, len(missing))
        self.address = self.restart()
        self._connect()
        for request_id in missing:
            self._send(*self._sent[request_id])

    def close(self) -> None:
        self.sock.close()


class InlineScorer:
    """reward.mode=inline: scores in this process when submitted."""

    def __init__(self, cfg: RewardConfig):
        self.rewards = build_rewards(cfg)
        self._results: dict[int, dict[str, torch.Tensor]] = {}
        self._ids = itertools.count()

    def submit(self, videos: torch.Tensor, prompts: list[str]) -> int:
        handle = next(self._ids)
        self._results[handle] = score_with(self.rewards, videos, prompts)
        return handle

    def result(self, handle: int) -> dict[str, torch.Tensor]:
        return self._results.pop(handle)

    def close(self) -> None:
        pass


class ServiceScorer:
    """reward.mode=process or remote: requests go to a reward server and are scored while
    this rank goes on with its rollout."""

    def __init__(self, cfg: RewardConfig, address: str, process: mp.Process | None = None):
        self.cfg, self.process = cfg, process
        restart = self._restart if process is not None else None
        self.client = RewardClient(address, cfg.timeout_s, restart, cfg.max_restarts)

    def _restart(self) -> str:
        if self.process.is_alive():
            self.process.kill()
        self.process.join()
        self.process, address = start_reward_process(self.cfg)
        return address

    def submit(self, videos: torch.Tensor, prompts: list[str]) -> list[int]:
        return self.client.submit(videos, prompts)

    def result(self, handle: list[int]) -> dict[str, torch.Tensor]:
        return self.client.result(handle)

    def close(self) -> None:
        self.client.close()
        if self.process is not None:
            self.process.kill()
            self.process.join()


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
