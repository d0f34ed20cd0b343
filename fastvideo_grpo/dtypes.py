"""The dtype names of config keys and CLI flags, and their torch dtypes. Which names a key
accepts is its own business (ModelConfig.dtype's Literal, a CLI's `choices`)."""

from __future__ import annotations

import torch

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
