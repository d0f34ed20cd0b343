"""Wan2.2 A14B's mixture of two experts as one network, so that FSDP2, the optimizer, LoRA and
the checkpoint treat it as any other: `transformer` denoises the high-noise steps (timestep
>= boundary_ratio * num_train_timesteps) and `transformer_2` the rest, as WanPipeline switches
them. A forward runs one expert: every row of a call shares its noise level, and the caller
(`WanPolicy`) names the expert, so that no timestep is read back from the device."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from diffusers import WanTransformer3DModel
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.loaders import PeftAdapterMixin
from diffusers.models.modeling_utils import ModelMixin
from torch import nn

from fastvideo_grpo.config import ConfigError, ModelConfig

EXPERTS = ("transformer", "transformer_2")  # their pipeline components: high noise, low noise
# model.train_experts -> the experts it trains.
TRAINED = {"": EXPERTS, "both": EXPERTS, "high": ("transformer",), "low": ("transformer_2",)}


class WanExperts(ModelMixin, ConfigMixin, PeftAdapterMixin):
    """Both experts, built from their configs (`from_experts` wraps loaded ones)."""

    _supports_gradient_checkpointing = True

    @register_to_config
    def __init__(self, transformer_config: dict | None = None, transformer_2_config: dict | None = None,
                 boundary_ratio: float = 0.875, num_train_timesteps: int = 1000):
        super().__init__()
        self.transformer = WanTransformer3DModel.from_config(transformer_config or {})
        self.transformer_2 = WanTransformer3DModel.from_config(transformer_2_config or {})

    @classmethod
    def from_experts(cls, transformer: WanTransformer3DModel, transformer_2: WanTransformer3DModel,
                     boundary_ratio: float, num_train_timesteps: int = 1000) -> "WanExperts":
        """The two networks as they are (their weights are not copied)."""
        # Their configs as their config.json holds them (a loaded one's folder path as a string).
        configs = [json.loads(expert.to_json_string()) for expert in (transformer, transformer_2)]
        with torch.device("meta"):
            experts = cls(*configs, boundary_ratio, num_train_timesteps)
        experts.transformer, experts.transformer_2 = transformer, transformer_2
        return experts

    @property
    def boundary_timestep(self) -> float:
        return self.config.boundary_ratio * self.config.num_train_timesteps

    def is_high_noise(self, t: float) -> bool:
        """Whether sigma t is the high-noise expert's: its fp32 timestep t * 1000, as the network
        and the pipeline see it, at or above the boundary."""
        return float(torch.tensor(t * 1000.0, dtype=torch.float32)) >= self.boundary_timestep

    def forward(self, hidden_states: torch.Tensor, timestep: torch.Tensor, encoder_hidden_states: torch.Tensor,
                high_noise: bool, return_dict: bool = False):
        expert = self.transformer if high_noise else self.transformer_2
        return expert(hidden_states=hidden_states, timestep=timestep, encoder_hidden_states=encoder_hidden_states,
                      return_dict=return_dict)


def experts_of(network: nn.Module) -> list[WanTransformer3DModel]:
    """The WanTransformer3DModels of a network: both experts, or the one transformer."""
    return [network.transformer, network.transformer_2] if isinstance(network, WanExperts) else [network]


def freeze_untrained(network: WanExperts, cfg: ModelConfig) -> None:
    """Freeze the expert model.train_experts leaves out: no gradients, so no optimizer state,
    no LoRA and no checkpoint entries."""
    for name in EXPERTS:
        if name not in TRAINED[cfg.train_experts]:
            getattr(network, name).requires_grad_(False)


def check_one_expert(cfg: ModelConfig, what: str) -> None:
    """model.train_experts and model.cfg_scale_2 name experts that a one-transformer model lacks."""
    for key in ("train_experts", "cfg_scale_2"):
        if getattr(cfg, key):
            raise ConfigError(f"model.{key}: {getattr(cfg, key)!r} is invalid for {what}: it has one transformer "
                              "(a Wan2.2 A14B folder has transformer_2 and boundary_ratio; model.size: tiny with "
                              "model.tiny_boundary_ratio > 0 builds two experts); leave it unset")


def folder_boundary_ratio(root: Path) -> float | None:
    """A diffusers Wan folder's boundary_ratio when it holds two experts (model_index.json lists
    transformer_2 and a boundary_ratio), else None."""
    try:
        index = json.loads((root / "model_index.json").read_text())
    except (OSError, ValueError):
        return None
    two = index.get("transformer_2") not in (None, [None, None]) and index.get("boundary_ratio") is not None
    return float(index["boundary_ratio"]) if two else None


def export_components(network: nn.Module) -> dict[str, nn.Module]:
    """The pipeline components of a trained network: each expert in its own folder."""
    return dict(zip(EXPERTS, experts_of(network)))


def folder_network_config(root: Path) -> dict:
    """The config of model.path's network: transformer/config.json, or with two experts the
    WanExperts config of both and the folder's boundary_ratio."""
    configs = [json.loads((root / name / "config.json").read_text()) for name in EXPERTS
               if name == "transformer" or folder_boundary_ratio(root) is not None]
    if len(configs) == 1:
        return configs[0]
    return dict(_class_name=WanExperts.__name__, transformer_config=configs[0], transformer_2_config=configs[1],
                boundary_ratio=folder_boundary_ratio(root))
