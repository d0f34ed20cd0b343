"""FLOPs of the network's calls, counted from its config, and the throughput they give.

One row's forward (one sample of the network's batch, CFG's second row counted as a row) is
counted analytically for the diffusion transformers: every matmul of the embedders, the
blocks (attention projections, the MLP, the per-sample adaLN modulation) and the output
projection, 2 FLOPs per multiply-add, and attention's two [S, S] products as 4 S^2 D, the
convention of torch's `FlopCounterMode` (elementwise ops, norms and RoPE are not counted).
A UNet's convolutions at five resolutions have no short closed form: its forward is counted
once by `FlopCounterMode` on a meta-device copy (shapes only, no compute).

An iteration's FLOPs are the counted rows (the trainer's `transformer_forwards_rollout` and
`transformer_forwards_train`, the planner's forwards) times one row's forward, the trained
rows times `train_passes`: backward is twice the forward (gradients of the inputs and of the
weights; once with LoRA, whose frozen base weights take no gradient), activation
checkpointing recomputes the forward, and the frozen networks' rows (KL reference, NFT's
old policy) are one forward each. These are the FLOPs the accelerator executes: MFU in
PaLM's sense would leave the recompute out.
"""

from __future__ import annotations

import functools
import json

import torch
from diffusers import FluxTransformer2DModel, HunyuanVideoTransformer3DModel, UNet2DConditionModel
from torch import nn
from torch.utils.flop_counter import FlopCounterMode, sdpa_backward_flop_count, sdpa_flop_count

from fastvideo_grpo.algorithms import algorithm_of
from fastvideo_grpo.config import Config
from fastvideo_grpo.parallel import World

# Dense bf16 peak TFLOP/s of one accelerator, by a substring of torch.cuda.get_device_name,
# first match wins (NVIDIA's data sheets, without sparsity).
PEAK_BF16_TFLOPS = (("H100 PCIe", 756.0), ("H100 NVL", 835.0), ("H100", 989.0), ("H800", 989.0), ("H200", 989.0),
                    ("H20", 148.0), ("A100", 312.0), ("A800", 312.0), ("L40S", 362.0), ("B200", 2250.0))


def _linear(rows: int, fan_in: int, fan_out: int) -> int:
    return 2 * rows * fan_in * fan_out


def _attention(queries: int, keys: int, dim: int) -> int:
    """softmax(Q K^T) V over all heads: two products of 2 * queries * keys * dim each."""
    return 4 * queries * keys * dim


def _mlp_embedder(fan_in: int, dim: int) -> int:
    """diffusers' TimestepEmbedding / PixArtAlphaTextProjection on one row: fan_in -> dim -> dim."""
    return _linear(1, fan_in, dim) + _linear(1, dim, dim)


def hunyuan_video_flops(config: dict, latent_shape: tuple[int, ...], text_tokens: int) -> int:
    """One row of HunyuanVideoTransformer3DModel (T2V and I2V) on a [C, T, H, W] latent."""
    d = config["num_attention_heads"] * config["attention_head_dim"]
    mlp = int(d * config["mlp_ratio"])
    p, pt = config["patch_size"], config["patch_size_t"]
    _, frames, height, width = latent_shape
    n, text = (frames // pt) * (height // p) * (width // p), text_tokens
    s = n + text
    token_replace = config.get("image_condition_type") == "token_replace"
    # Timestep, pooled-text (and guidance; token_replace's clean timestep) embeddings.
    conditioning = ((1 + config["guidance_embeds"] + token_replace) * _mlp_embedder(256, d)
                    + _mlp_embedder(config["pooled_projection_dim"], d))
    patches = _linear(n, config["in_channels"] * pt * p * p, d)
    # The token refiner: its own timestep and mean-text embeddings, proj_in, then
    # num_refiner_layers self-attention blocks over the text alone (MLP ratio 4).
    refiner = (_mlp_embedder(256, d) + _mlp_embedder(config["text_embed_dim"], d)
               + _linear(text, config["text_embed_dim"], d)
               + config["num_refiner_layers"] * (4 * _linear(text, d, d) + _attention(text, text, d)
                                                 + 2 * _linear(text, d, 4 * d) + _linear(1, d, 2 * d)))
    # token_replace modulates the image's first frame separately (twice the image adaLN).
    modulation = 2 if token_replace else 1
    # Dual-stream: q, k, v, out and the MLP per stream (image and text), joint attention.
    dual = ((modulation + 1) * _linear(1, d, 6 * d) + 4 * _linear(s, d, d) + 2 * _linear(s, d, mlp)
            + _attention(s, s, d))
    # Single-stream: q, k, v and the MLP's input side from the same tokens, one output projection.
    single = (modulation * _linear(1, d, 3 * d) + 3 * _linear(s, d, d) + _linear(s, d, mlp)
              + _linear(s, d + mlp, d) + _attention(s, s, d))
    out = _linear(1, d, 2 * d) + _linear(n, d, pt * p * p * config["out_channels"])
    return (conditioning + patches + refiner + config["num_layers"] * dual + config["num_single_layers"] * single
            + out)


def flux_flops(config: dict, latent_shape: tuple[int, ...], text_tokens: int) -> int:
    """One row of FluxTransformer2DModel on a [C, h, w] latent, packed into 2x2 patch tokens."""
    d = config["num_attention_heads"] * config["attention_head_dim"]
    _, height, width = latent_shape
    n, text = (height // 2) * (width // 2), text_tokens
    s = n + text
    conditioning = (1 + config["guidance_embeds"]) * _mlp_embedder(256, d) + \
        _mlp_embedder(config["pooled_projection_dim"], d)
    embed = _linear(n, config["in_channels"], d) + _linear(text, config["joint_attention_dim"], d)
    dual = 2 * _linear(1, d, 6 * d) + 4 * _linear(s, d, d) + 2 * _linear(s, d, 4 * d) + _attention(s, s, d)
    single = _linear(1, d, 3 * d) + 3 * _linear(s, d, d) + _linear(s, d, 4 * d) + _linear(s, 5 * d, d) + \
        _attention(s, s, d)
    p = config["patch_size"]
    out = _linear(1, d, 2 * d) + _linear(n, d, p * p * (config["out_channels"] or config["in_channels"]))
    return conditioning + embed + config["num_layers"] * dual + config["num_single_layers"] * single + out


def _cpu_attention(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    return sdpa_flop_count(query_shape, key_shape, value_shape)


def _cpu_attention_backward(grad_out_shape, query_shape, key_shape, value_shape, *args, out_shape=None,
                            **kwargs) -> int:
    return sdpa_backward_flop_count(grad_out_shape, query_shape, key_shape, value_shape)


# torch's CPU attention kernels have no formula in FlopCounterMode; they are the same attention.
CPU_ATTENTION = {torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: _cpu_attention,
                 torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward: _cpu_attention_backward}


def counter() -> FlopCounterMode:
    """FlopCounterMode that also counts torch's CPU attention."""
    return FlopCounterMode(display=False, custom_mapping=CPU_ATTENTION)


@functools.lru_cache(maxsize=8)
def _unet_flops(config_json: str, latent_shape: tuple[int, ...], text_tokens: int) -> int:
    config = json.loads(config_json)
    with torch.device("meta"):
        unet = UNet2DConditionModel.from_config(config)
        sample = torch.empty(1, *latent_shape)
        text = torch.empty(1, text_tokens, config["cross_attention_dim"])
        with torch.no_grad(), counter() as count:
            unet(sample, torch.ones(1), text, return_dict=False)
    return count.get_total_flops()


def forward_flops(network: nn.Module, latent_shape: tuple[int, ...], text_tokens: int) -> int:
    """FLOPs of one row's forward through `network` (a diffusers model) at one sample's latent
    shape and `text_tokens` prompt tokens."""
    config = dict(network.config)
    # isinstance, not the class name: FSDP2 swaps in a subclass of the network's class.
    if isinstance(network, HunyuanVideoTransformer3DModel):
        return hunyuan_video_flops(config, latent_shape, text_tokens)
    if isinstance(network, FluxTransformer2DModel):
        return flux_flops(config, latent_shape, text_tokens)
    if isinstance(network, UNet2DConditionModel):
        plain = json.dumps({k: v for k, v in config.items() if not k.startswith("_")}, default=list)
        return _unet_flops(plain, tuple(latent_shape), text_tokens)
    raise ValueError(f"no FLOP count for {type(network).__name__}; expected HunyuanVideoTransformer3DModel, "
                     "FluxTransformer2DModel or UNet2DConditionModel")


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
    flops = iteration_flops(cfg, forward_flops(network, latent_shape, text_tokens),
                            metrics["transformer_forwards_rollout"], metrics["transformer_forwards_train"])
    tflops = sum(flops.values()) / world.world_size / metrics["time_iteration"] / 1e12
    peak = peak_tflops(cfg, world.device)
    return {"tflops_per_gpu": tflops, **({"mfu": tflops / peak} if peak else {})}
