"""The cluster a config is planned on: nodes, GPUs and their memory, the assumed throughput."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Cluster:
    nodes: int
    gpus_per_node: int
    gpu_memory_gb: float
    peak_tflops: float = 989.0  # H100/H800 SXM bf16 dense
    mfu: float = 0.35
    reserve_gb: float | None = None  # None: the itemised estimate (CUDA context, NCCL, fragmentation)
    ranks_per_node: int = 0  # training processes per node; 0: one per GPU
    host_memory_gb: float = 1024.0

    @property
    def node_ranks(self) -> int:
        return self.ranks_per_node or self.gpus_per_node

    @property
    def world_size(self) -> int:
        return self.nodes * self.node_ranks
