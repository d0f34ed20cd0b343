"""The reward server: reward models live here, never in the policy's FSDP ranks.

One process per node (fastvideo_grpo.rewards.process), or a standalone server on a dedicated
node (fastvideo_grpo.rewards.serve), loads the configured rewards once and serves every
local rank over TCP. A request is one video (uint8 [T, H, W, 3], or the path of a video file
the server reads) with its prompt and a request id; the server batches requests of the same
shape up to `max_batch` or `max_latency_ms` and replies with named float scores, or with
an error naming the reward that failed.
"""

from __future__ import annotations

import logging
import queue
import socket
import threading
import time
from dataclasses import dataclass, field

import torch

from fastvideo_grpo.config import RewardConfig
from fastvideo_grpo.rewards import Scorer, build_scorer
from fastvideo_grpo.rewards.pairwise import take_whole_groups
from fastvideo_grpo.rewards.protocol import recv_message, request_video, send_message

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
