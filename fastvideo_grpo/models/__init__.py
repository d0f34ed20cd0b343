"""Model adapters, one file per family, named by the registry (registry.py)."""

from __future__ import annotations

from fastvideo_grpo.models.base import Policy, TextConditioning
from fastvideo_grpo.models.registry import FAMILIES, ModelFamily, build_policy, check_model_config, model_family

__all__ = ["FAMILIES", "ModelFamily", "Policy", "TextConditioning", "build_policy", "check_model_config",
           "model_family"]
