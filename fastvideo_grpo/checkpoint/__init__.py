"""Sharded, resumable checkpoints with torch.distributed.checkpoint (DCP).

    output_dir/checkpoints/step_<N>/     model, optimizer, EMA (DCP shards + .metadata),
                                         trainer_state.json, rng_rank<r>.pt,
                                         manifest.json (size and CRC32 of every other file)
    output_dir/checkpoints/latest        the name of the newest complete checkpoint
    output_dir/checkpoints/best          the name of the best held-out evaluation's (early stop)

A checkpoint is written under `.tmp-step_<N>` and renamed when every rank has finished, and
`latest` is replaced atomically after that, so a crash at any point leaves `latest`
naming a complete checkpoint. The manifest is written last, so it also marks a folder as
complete. A failed write (a full disk) removes the partial folder on every rank. N is the
number of finished iterations. Nothing is loaded with pickle: DCP for tensors, JSON for the
trainer state, `weights_only` for RNG states.
"""

from fastvideo_grpo.checkpoint.folders import (BEST, CHECKPOINTS, LATEST, best_checkpoint, checkpoint_root,
                                               latest_checkpoint, mark_best, resolve_checkpoint)
from fastvideo_grpo.checkpoint.integrity import MANIFEST, CheckpointError, verify_checkpoint
from fastvideo_grpo.checkpoint.sharded import (TRANSFORMER_CONFIG, diffusers_config, load_checkpoint, load_shards,
                                               save_checkpoint, saved_keys)

__all__ = ["BEST", "CHECKPOINTS", "LATEST", "MANIFEST", "TRANSFORMER_CONFIG", "CheckpointError", "best_checkpoint",
           "checkpoint_root", "diffusers_config", "latest_checkpoint", "mark_best", "load_checkpoint", "load_shards", "resolve_checkpoint",
           "save_checkpoint", "saved_keys", "verify_checkpoint"]
