"""FLOPs of the network's calls, counted from its config, and the throughput they give.

One row's forward (one sample of the network's batch, CFG's second row counted as a row) is
its family's count (`ModelFamily.forward_flops`, in models/<family>/flops.py): every matmul
of the network at 2 FLOPs per multiply-add, attention's two [S, S] products as 4 S^2 D, the
convention of torch's `FlopCounterMode` (models/flop_count.py).

An iteration's FLOPs are the counted rows (the trainer's `transformer_forwards_rollout` and
`transformer_forwards_train`, the planner's forwards) times one row's forward, the trained
rows times `train_passes`: backward is twice the forward (gradients of the inputs and of the
weights; once with LoRA, whose frozen base weights take no gradient), activation
checkpointing recomputes the forward, and the frozen networks' rows (KL reference, NFT's
old policy) are one forward each. These are the FLOPs the accelerator executes: MFU in
PaLM's sense would leave the recompute out.
"""

from __future__ import annotations

import torch
from torch import nn

from fastvideo_grpo.algorithms.registry import algorithm_of
from fastvideo_grpo.config import Config, ModelConfig
from fastvideo_grpo.models import model_family
from fastvideo_grpo.parallel import World

# Dense bf16 peak TFLOP/s of one accelerator, by a substring of torch.cuda.get_device_name,
# first match wins (NVIDIA's data sheets, without sparsity).
PEAK_BF16_TFLOPS = (("H100 PCIe", 756.0), ("H100 NVL", 835.0), ("H100", 989.0), ("H800", 989.0), ("H200", 989.0),
                    ("H20", 148.0), ("A100", 312.0), ("A800", 312.0), ("L40S", 362.0), ("B200", 2250.0))


def forward_flops(m: ModelConfig, network: nn.Module, latent_shape: tuple[int, ...], text_tokens: int) -> int:
    """FLOPs of one row's forward through `network`, a network of model.family, at one
    sample's latent shape and `text_tokens` prompt tokens."""
    return model_family(m).forward_flops(network, tuple(latent_shape), text_tokens)


def frozen_forwards(cfg: Config) -> int:
    """Forwards of frozen networks per trained forward, as the trainer counts them in
    transformer_forwards_train: the algorithm's old policy (NFT's) and its KL reference."""
    algorithm = algorithm_of(cfg)
    return int(algorithm.old_policy) + int(algorithm.reference_weight(cfg) > 0)


def train_passes(cfg: Config) -> int:
    """One trained row's FLOPs in forwards: forward, backward (2; 1 with LoRA, whose adapters'
    own matmuls are left out), and the recompute of activation checkpointing."""
    return 1 + (1 if cfg.model.lora_rank > 0 else 2) + cfg.parallel.activation_checkpointing


def iteration_flops(cfg: Config, row_flops: float, rollout_rows: float, train_rows: float) -> dict[str, float]:
    """{rollout, train} FLOPs of `rollout_rows` no-grad forwards and `train_rows` training rows
    (trained and frozen together, as transformer_forwards_train counts them)."""
    frozen = frozen_forwards(cfg)
    per_train_row = (train_passes(cfg) + frozen) / (1 + frozen)
    return {"rollout": rollout_rows * row_flops, "train": train_rows * row_flops * per_train_row}


def peak_tflops(cfg: Config, device: torch.device) -> float:
    """logging.peak_tflops, else the bf16 peak of a known CUDA device in a bf16 run; 0: unknown."""
    if cfg.logging.peak_tflops > 0:
        return cfg.logging.peak_tflops
    if device.type != "cuda" or cfg.model.dtype != "bf16":
        return 0.0
    name = torch.cuda.get_device_name(device)
    return next((peak for key, peak in PEAK_BF16_TFLOPS if key in name), 0.0)


def throughput(cfg: Config, network: nn.Module, latent_shape: tuple[int, ...], text_tokens: int, metrics: dict,
               world: World) -> dict[str, float]:
    """tflops_per_gpu: the iteration's transformer FLOPs per rank over time_iteration (decode,
    reward and logging time included, as any time a GPU is not running the network); mfu:
    that over the peak, where the peak is known. `metrics`: the iteration's, reduced."""
    flops = iteration_flops(cfg, forward_flops(cfg.model, network, latent_shape, text_tokens),
                            metrics["transformer_forwards_rollout"], metrics["transformer_forwards_train"])
    tflops = sum(flops.values()) / world.world_size / metrics["time_iteration"] / 1e12
    peak = peak_tflops(cfg, world.device)
    return {"tflops_per_gpu": tflops, **({"mfu": tflops / peak} if peak else {})}
