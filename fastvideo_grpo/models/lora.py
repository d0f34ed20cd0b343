"""LoRA adapters (peft, through diffusers' PeftAdapterMixin) on the blocks' linears."""

from __future__ import annotations

import torch
from peft import LoraConfig
from torch import nn

# Attention projections and MLP linears of every dual- and single-stream block (a UNet's
# transformer blocks: self- and cross-attention attn1/attn2); the text refiner, embedders,
# convolutions and the final projection keep their weights.
BLOCK_LINEARS = (
    r".*(transformer_blocks|single_transformer_blocks)\.\d+\."
    r"(attn[12]?\.(to_q|to_k|to_v|to_out\.0|add_q_proj|add_k_proj|add_v_proj|to_add_out)"
    r"|ff\.net\.(0\.proj|2)|ff_context\.net\.(0\.proj|2)|proj_mlp|proj_out)"
)


def apply_lora(model: nn.Module, rank: int, alpha: float) -> None:
    """Add a zero-initialised adapter (the model's outputs are unchanged) and freeze
    everything else."""
    model.add_adapter(LoraConfig(r=rank, lora_alpha=alpha or rank, target_modules=BLOCK_LINEARS,
                                 init_lora_weights=True))
    for name, p in model.named_parameters():
        p.requires_grad_("lora_" in name)


def frozen_parameter_names(model: nn.Module) -> set[str]:
    return {name for name, p in model.named_parameters() if not p.requires_grad}


def trainable_state(state: dict[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    """The entries a checkpoint needs: frozen weights come from the base model."""
    frozen = frozen_parameter_names(model)
    return {k: v for k, v in state.items() if k not in frozen}
