"""Ulysses sequence parallelism for Wan2.2-TI2V: Wan's (models/wan/sequence_parallel.py),
and the per-token timesteps split with the tokens they modulate: each sp rank keeps the
timesteps of its own S/sp video tokens, so the timestep embedding, the blocks' modulations
and the output norm see the rank's tokens only (as diffusers' context-parallel plan for Wan
splits `timestep` on its sequence dim)."""

from __future__ import annotations

from torch import nn

from fastvideo_grpo.models.wan.sequence_parallel import apply_sequence_parallel as apply_wan_sequence_parallel
from fastvideo_grpo.parallel.distributed import World
from fastvideo_grpo.parallel.sequence_parallel import own_chunk


def apply_sequence_parallel(transformer: nn.Module, world: World) -> None:
    apply_wan_sequence_parallel(transformer, world)
    group = world.sp_group

    def split_timesteps(module, args, kwargs):
        timestep = kwargs.get("timestep")
        if timestep is None or timestep.ndim != 2:  # one timestep per sample: every rank needs it
            return None
        return args, {**kwargs, "timestep": own_chunk(timestep, group, 1)}  # [B, S] -> [B, S/sp]

    transformer.register_forward_pre_hook(split_timesteps, with_kwargs=True)
