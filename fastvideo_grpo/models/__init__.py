"""Model families, one folder each (models/<family>/), named by the registry (registry.py)."""

from __future__ import annotations

from fastvideo_grpo.models.base import Policy, TextConditioning
from fastvideo_grpo.models.family import ModelFamily, Published
from fastvideo_grpo.models.registry import (FAMILIES, build_policy, check_model_config, check_sequence_parallel,
                                            model_family, register_family)

__all__ = ["FAMILIES", "ModelFamily", "Policy", "Published", "TextConditioning", "build_policy", "check_model_config",
           "check_sequence_parallel", "model_family", "register_family"]
