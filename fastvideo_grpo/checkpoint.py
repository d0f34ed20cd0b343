"""Sharded, resumable checkpoints with torch.distributed.checkpoint (DCP).

    output_dir/checkpoints/step_<N>/     model, optimizer, EMA (DCP shards + .metadata),
                                         trainer_state.json, rng_rank<r>.pt
    output_dir/checkpoints/latest        the name of the newest complete checkpoint

A checkpoint is written under `.tmp-step_<N>` and renamed when every rank has finished, and
`latest` is replaced atomically after that, so a crash at any point leaves `latest`
naming a complete checkpoint. N is the number of finished iterations. Nothing is loaded
with pickle: DCP for tensors, JSON for the trainer state, `weights_only` for RNG states.
"""

from __future__ import annotations

import json
import logging
import os
import random
import shutil
from pathlib import Path

import numpy as np
import torch
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)

from fastvideo_grpo.models.lora import trainable_state
from fastvideo_grpo.parallel import World, barrier

logger = logging.getLogger(__name__)

LATEST = "latest"
# The network's diffusers config, so that export can rebuild it without the training config.
TRANSFORMER_CONFIG = "transformer_config.json"


def checkpoint_root(output_dir: str | Path) -> Path:
    return Path(output_dir) / "checkpoints"


def rng_state() -> dict:
    """This process's RNG states as tensors and plain numbers (loadable with weights_only)."""
    np_state = np.random.get_state()
    py_state = random.getstate()
    state = {
        "torch": torch.get_rng_state(),
        "numpy_keys": torch.from_numpy(np_state[1].astype(np.int64)),
        "numpy_pos": int(np_state[2]), "numpy_has_gauss": int(np_state[3]), "numpy_gauss": float(np_state[4]),
        "python_version": py_state[0], "python_state": torch.tensor(py_state[1], dtype=torch.int64),
        "python_gauss": py_state[2],
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(("MT19937", state["numpy_keys"].numpy().astype(np.uint32), state["numpy_pos"],
                         state["numpy_has_gauss"], state["numpy_gauss"]))
    random.setstate((state["python_version"], tuple(state["python_state"].tolist()), state["python_gauss"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with tmp.open("w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def sharded_state(model: torch.nn.Module, optimizer: torch.optim.Optimizer, ema: dict | None) -> dict:
    """What is saved: trained weights only (with LoRA, the adapters), optimizer, EMA."""
    state = {"model": trainable_state(get_model_state_dict(model), model),
             "optimizer": get_optimizer_state_dict(model, optimizer)}
    if ema is not None:
        state["ema"] = ema
    return state


def diffusers_config(model: torch.nn.Module) -> dict:
    """The model's diffusers config with the class name it loads as (call before FSDP
    wraps the model, which renames its class)."""
    return json.loads(model.to_json_string())


def save_checkpoint(output_dir: str | Path, iteration: int, model: torch.nn.Module,
                    optimizer: torch.optim.Optimizer, trainer_state: dict, world: World,
                    keep_last: int, ema: dict | None = None, model_config: dict | None = None) -> Path:
    """Collective: every rank calls it. Returns the final checkpoint folder."""
    root = checkpoint_root(output_dir)
    name = f"step_{iteration}"
    tmp, final = root / f".tmp-{name}", root / name
    if world.is_main:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    barrier(world)
    dcp.save(sharded_state(model, optimizer, ema), checkpoint_id=tmp)
    torch.save(rng_state(), tmp / f"rng_rank{world.rank}.pt")
    if world.is_main:
        _write_atomic(tmp / "trainer_state.json",
                      json.dumps({**trainer_state, "iteration": iteration, "world_size": world.world_size}))
        if model_config is not None:
            _write_atomic(tmp / TRANSFORMER_CONFIG, json.dumps(model_config, indent=2))
    barrier(world)
    if world.is_main:
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        _write_atomic(root / LATEST, name + "\n")
        _prune(root, keep_last)
        logger.info("saved checkpoint %s", final)
    barrier(world)
    return final


def _step_of(path: Path) -> int:
    return int(path.name.removeprefix("step_"))


def _prune(root: Path, keep_last: int) -> None:
    complete = sorted((p for p in root.glob("step_*") if p.is_dir()), key=_step_of)
    for old in complete[:-keep_last] if keep_last > 0 else []:
        shutil.rmtree(old)


def latest_checkpoint(output_dir: str | Path) -> Path | None:
    """The checkpoint `latest` names, or None. A `latest` naming a missing or incomplete
    folder is an error rather than a silent fresh start."""
    root = checkpoint_root(output_dir)
    pointer = root / LATEST
    if not pointer.exists():
        return None
    path = root / pointer.read_text().strip()
    for required in (".metadata", "trainer_state.json"):
        if not (path / required).exists():
            raise FileNotFoundError(f"{pointer} names {path}, which has no {required}: the checkpoint is incomplete")
    return path


def load_checkpoint(path: str | Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                    world: World, ema: dict | None = None) -> dict:
    """Load into the (possibly sharded) model, optimizer and EMA in place; restore this
    rank's RNG states when the world size is unchanged. Returns the trainer state."""
    path = Path(path)
    state_file = path / "trainer_state.json"
    if not state_file.exists():
        raise FileNotFoundError(f"{path} is not a checkpoint: no trainer_state.json")
    trainer_state = json.loads(state_file.read_text())
    state = sharded_state(model, optimizer, ema)
    dcp.load(state, checkpoint_id=path)
    set_model_state_dict(model, state["model"], options=StateDictOptions(strict=False))
    set_optimizer_state_dict(model, optimizer, state["optimizer"])
    if trainer_state["world_size"] == world.world_size:
        set_rng_state(torch.load(path / f"rng_rank{world.rank}.pt", weights_only=True))
    else:
        logger.warning("resuming %s written by %d ranks on %d ranks: weights and optimizer are resharded, "
                       "per-rank RNG states are not restored", path, trainer_state["world_size"], world.world_size)
    logger.info("resumed from %s (iteration %d)", path, trainer_state["iteration"])
    return trainer_state
