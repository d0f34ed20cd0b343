"""The scorer reward.mode asks for: rewards scored in this process (inline), or by a
reward process this node's first rank starts (process) or a standalone server (remote)."""

from __future__ import annotations

import itertools
import multiprocessing as mp
import os
import socket

import torch
import torch.distributed as dist

from fastvideo_grpo.config import RewardConfig
from fastvideo_grpo.rewards import RewardError, build_scorer
from fastvideo_grpo.rewards.client import RewardClient, RewardTimeout
from fastvideo_grpo.rewards.process import how_it_ended, start_reward_process, stop_process


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
