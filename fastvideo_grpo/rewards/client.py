"""A rank's connection to a reward server (fastvideo_grpo.rewards.server).

Clients match replies by id, so replies may come in any order; a request that times out, a
dead server, or a failing reward raises `RewardError` in the trainer, never a made-up score.
"""

from __future__ import annotations

import itertools
import logging
import socket
import threading
import time

import torch

from fastvideo_grpo.rewards import RewardError
from fastvideo_grpo.rewards.protocol import frames_request, path_request, recv_message, send_message

logger = logging.getLogger(__name__)


class RewardTimeout(RewardError):
    """No reply within reward.timeout_s: the server is hung, not merely failing."""


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
