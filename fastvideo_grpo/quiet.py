"""Library messages that are not the user's business, silenced once per process by each CLI."""

from __future__ import annotations

import logging
import warnings


def _drop(fragment: str):
    return lambda record: fragment not in record.getMessage()


def silence_library_noise() -> None:
    # The transformer returns a reshaped view; nothing downstream modifies it in place.
    warnings.filterwarnings("ignore", message="FSDP2-wrapped module .* returned a view tensor")
    # A single-process run saves its checkpoint with DCP without a process group, on purpose.
    warnings.filterwarnings("ignore", message="torch.distributed is disabled, unavailable or uninitialized")
    # Printed once per rank for the dp_shard_sp mesh; what it announces changes nothing for a run.
    warnings.filterwarnings("ignore", message="Slicing a flattened dim from root mesh")
    # diffusers warns on every `.to(dtype)` of a model whose list of fp32 modules is empty.
    logging.getLogger("diffusers.models.modeling_utils").addFilter(_drop("should be kept in float32: []"))
