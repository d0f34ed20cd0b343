"""LoRA adapters (peft, through diffusers' PeftAdapterMixin) on the linears a family names
(`ModelFamily.lora_targets`); a second, frozen adapter on the same network for NFT's old policy."""

from __future__ import annotations

import re
import warnings
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from peft import LoraConfig
from peft.tuners.tuners_utils import BaseTunerLayer
from torch import nn

from fastvideo_grpo.models.base import Policy, TextConditioning

TRAINED = "default"  # peft's name of the first adapter: the trained one, the one export writes
OLD = "old"

def lora_config(rank: int, alpha: float, targets: str | list[str], exclude: list[str] = ()) -> LoraConfig:
    """`exclude`: module names the adapter leaves out, matched whole (peft matches a list's
    entries as name suffixes: `proj_out` would leave out every block's)."""
    return LoraConfig(r=rank, lora_alpha=alpha or rank, target_modules=targets,
                      exclude_modules="|".join(re.escape(name) for name in exclude) or None, init_lora_weights=True)


def apply_lora(model: nn.Module, rank: int, alpha: float, targets: str | list[str]) -> None:
    """Add a zero-initialised adapter (the model's outputs are unchanged) on the modules
    `targets` names (the family's `lora_targets`) and freeze everything else. A module whose
    weights are already frozen (a part of the network the policy does not train, as an expert
    model.train_experts leaves out) gets no adapter."""
    frozen = [name for name, module in model.named_modules()
              if isinstance(module, nn.Linear) and not module.weight.requires_grad]
    model.add_adapter(lora_config(rank, alpha, targets, frozen))
    for name, p in model.named_parameters():
        p.requires_grad_("lora_" in name)


def adapter_weights(model: nn.Module, adapter: str) -> dict[str, torch.Tensor]:
    """Adapter `adapter`'s weights, keyed by the names of the trained adapter's weights they
    stand beside (`...lora_A.old.weight` under `...lora_A.default.weight`)."""
    pattern = re.compile(rf"\.(lora_[AB])\.{re.escape(adapter)}\.")
    return {pattern.sub(rf".\1.{TRAINED}.", name): p.detach() for name, p in model.named_parameters()
            if pattern.search(name)}


@torch.no_grad()
def add_frozen_adapter(model: nn.Module, adapter: str, rank: int, alpha: float, targets: str | list[str]) -> None:
    """A second adapter beside the trained one, on the modules it adapts, equal to it and
    frozen; the trained adapter stays the active one and the only trainable weights."""
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    exclude = [name for name, module in model.named_modules()
               if isinstance(module, nn.Linear) and not isinstance(module, BaseTunerLayer)]
    with warnings.catch_warnings():  # peft warns that a second adapter is a second adapter
        warnings.filterwarnings("ignore", message="Already found a `peft_config` attribute")
        # Activates it, and flips requires_grad.
        model.add_adapter(lora_config(rank, alpha, targets, exclude), adapter_name=adapter)
    model.set_adapter(TRAINED)
    current = dict(model.named_parameters())
    for name, p in adapter_weights(model, adapter).items():
        p.copy_(current[name])
    for name, p in model.named_parameters():
        p.requires_grad_(name in trainable)


@contextmanager
def active_adapter(model: nn.Module, adapter: str):
    """Run `model` with adapter `adapter` in place of the active one. Only each adapted
    layer's active name changes: peft's set_adapter would also make the active adapter the
    trainable one, and under FSDP2 and the optimizer which weights train must not change."""
    layers = [m for m in model.modules() if isinstance(m, BaseTunerLayer)]
    before = [m._active_adapter for m in layers]
    for m in layers:
        m._active_adapter = [adapter]
    try:
        yield
    finally:
        for m, active in zip(layers, before):
            m._active_adapter = active


@dataclass
class AdapterPolicy:
    """The policy's own network with another of its adapters active (NFT's old policy under
    LoRA): one base model in memory, sharded once; everything but `predict` is the policy's."""

    policy: Policy
    adapter: str

    def __getattr__(self, name: str):
        if name == "policy":  # not yet set (copy, unpickling): no recursion
            raise AttributeError(name)
        return getattr(self.policy, name)

    def predict(self, latents: torch.Tensor, t: float, cond: TextConditioning) -> torch.Tensor:
        with active_adapter(self.policy.transformer, self.adapter):
            return self.policy.predict(latents, t, cond)


def frozen_parameter_names(model: nn.Module) -> set[str]:
    return {name for name, p in model.named_parameters() if not p.requires_grad}


def trainable_state(state: dict[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    """The entries a checkpoint needs: frozen weights come from the base model."""
    frozen = frozen_parameter_names(model)
    return {k: v for k, v in state.items() if k not in frozen}
