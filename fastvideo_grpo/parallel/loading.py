"""Loading the network into host memory a few ranks of a node at a time."""

from __future__ import annotations

import logging
import math
import os
from contextlib import contextmanager

from fastvideo_grpo.parallel.distributed import World, barrier

logger = logging.getLogger(__name__)


def loading_turns(per_node: int, local_rank: int, local_size: int) -> tuple[int, int]:
    """(this rank's turn, turns) when the `local_size` ranks of a node load `per_node` at a
    time, in local-rank order (0: all at once, one turn)."""
    if per_node == 0 or per_node >= local_size:
        return 0, 1
    return local_rank // per_node, math.ceil(local_size / per_node)


@contextmanager
def loading_turn(world: World, per_node: int):
    """Run the body (load the network, shard it onto the device) in this rank's turn
    (parallel.loaders_per_node): each loading rank holds the whole fp32 network in host
    memory until FSDP2 has moved its shards to the device, so a node's host memory holds
    `per_node` copies at a time instead of one per rank. Every rank passes the same number of
    barriers, one per turn."""
    turn, turns = loading_turns(per_node, int(os.environ.get("LOCAL_RANK", 0)),
                                int(os.environ.get("LOCAL_WORLD_SIZE", 1)))
    if world.mesh is None or turns == 1:
        yield
        return
    for _ in range(turn):
        barrier(world)
    logger.info("rank %d loads the network in turn %d of %d (parallel.loaders_per_node=%d)", world.rank, turn + 1,
                turns, per_node)
    yield
    for _ in range(turns - turn):
        barrier(world)
