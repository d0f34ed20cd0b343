"""Saving and loading a checkpoint: DCP shards of the model, optimizer and EMA, the trainer
state and each rank's RNG states, written to a temporary folder and renamed when complete."""

from __future__ import annotations

import errno
import io
import json
import logging
import os
import random
import shutil
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint import FileSystemReader
from torch.distributed.checkpoint.api import CheckpointException
from torch.distributed.checkpoint.filesystem import FileSystem
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)

from fastvideo_grpo.checkpoint.folders import LATEST, checkpoint_root, prune, write_atomic
from fastvideo_grpo.checkpoint.integrity import (MANIFEST, CheckpointError, Checksums, ChecksummingWriter, check_file,
                                                 root_cause, summary, verify_checkpoint, write_file)
from fastvideo_grpo.models.lora import trainable_state
from fastvideo_grpo.parallel import World, all_gather_objects, barrier

logger = logging.getLogger(__name__)

# The network's diffusers config, so that export can rebuild it without the training config.
TRANSFORMER_CONFIG = "transformer_config.json"
# A full disk, or a full quota on a cluster file system.
DISK_FULL = (errno.ENOSPC, errno.EDQUOT)
# DCP raises CheckpointException, a BaseException, for a failure on any rank.
FAILURES = (Exception, CheckpointException)


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


class _TrackingFileSystem(FileSystem):
    """DCP's local file system, remembering the file it opened last, for load errors."""

    last_opened: Path | None = None

    @contextmanager
    def create_stream(self, path: str | os.PathLike, mode: str):
        with super().create_stream(path, mode) as stream:
            self.last_opened = Path(path)
            yield stream


class _TrackingReader(FileSystemReader):
    def __init__(self, path: Path):
        super().__init__(path)
        self.fs = _TrackingFileSystem()


def _json_bytes(data: dict, indent: int | None = None) -> bytes:
    return json.dumps(data, indent=indent).encode()


def sharded_state(model: torch.nn.Module, optimizer: torch.optim.Optimizer, ema: dict | None,
                  extra: dict[str, dict] | None = None) -> dict:
    """What is saved: trained weights only (with LoRA, the adapters), optimizer, EMA, and
    `extra` named groups of tensors (NFT's old policy), loaded in place."""
    state = {"model": trainable_state(get_model_state_dict(model), model),
             "optimizer": get_optimizer_state_dict(model, optimizer)}
    if ema is not None:
        state["ema"] = ema
    state.update(extra or {})
    return state


def diffusers_config(model: torch.nn.Module) -> dict:
    """The model's diffusers config with the class name it loads as (call before FSDP
    wraps the model, which renames its class)."""
    return json.loads(model.to_json_string())


def save_checkpoint(output_dir: str | Path, iteration: int, model: torch.nn.Module,
                    optimizer: torch.optim.Optimizer, trainer_state: dict, world: World,
                    keep_last: int, ema: dict | None = None, model_config: dict | None = None,
                    extra: dict[str, dict] | None = None) -> Path:
    """Collective: every rank calls it. Returns the final checkpoint folder. A write that
    fails on any rank raises CheckpointError on every rank; the partial folder is removed and
    `latest` still names the previous checkpoint."""
    root = checkpoint_root(output_dir)
    name = f"step_{iteration}"
    tmp, final = root / f".tmp-{name}", root / name
    if world.is_main:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    barrier(world)
    written = Checksums()

    def write_this_ranks_files():
        dcp.save(sharded_state(model, optimizer, ema, extra), checkpoint_id=tmp,
                 storage_writer=ChecksummingWriter(tmp, written))
        write_file(tmp / f"rng_rank{world.rank}.pt", written, lambda f: torch.save(rng_state(), f))
        if world.is_main:
            state = {**trainer_state, "iteration": iteration, "world_size": world.world_size}
            write_file(tmp / "trainer_state.json", written, lambda f: f.write(_json_bytes(state)))
            if model_config is not None:
                write_file(tmp / TRANSFORMER_CONFIG, written, lambda f: f.write(_json_bytes(model_config, 2)))

    _fail_together(_caught(write_this_ranks_files), written, tmp, world)
    files = {file: entry for part in all_gather_objects(written.files, world) for file, entry in part.items()}
    error = _caught(lambda: _complete(tmp, final, files)) if world.is_main else None
    _fail_together(error, written, tmp, world)
    if world.is_main:
        prune(root, keep_last)
        logger.info("saved checkpoint %s", final)
    barrier(world)
    return final


def _caught(step) -> BaseException | None:
    """What `step()` raised, kept so that every rank can learn that a write failed."""
    try:
        step()
    except FAILURES as e:
        return e
    return None


def _complete(tmp: Path, final: Path, files: dict) -> None:
    """Write the manifest (the last file, which marks the folder complete), rename the folder
    and point `latest` at it."""
    write_atomic(tmp / MANIFEST, json.dumps({"files": files}, indent=1, sort_keys=True))
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    write_atomic(final.parent / LATEST, final.name + "\n")


def _describe_write_error(error: BaseException, written: Checksums) -> str:
    """What went wrong, with the file being written; a full disk said as such (torch reports
    it as "unexpected pos" of its zip writer, or DCP as one of its rank failures)."""
    cause = root_cause(error)
    failed_file, failed = written.failed or (None, None)
    oserrors = [e for e in (failed, cause) if isinstance(e, OSError)]
    file = failed_file or next((e.filename for e in oserrors if e.filename), None)
    where = f" writing {file}" if file else ""
    if any(e.errno in DISK_FULL for e in oserrors):
        return f"no space left on device{where}"
    return f"{summary(failed or cause)}{where}"


def _fail_together(error: BaseException | None, written: Checksums, tmp: Path, world: World) -> None:
    """Raise on every rank if the write failed on any (a rank raising alone would leave the
    others waiting in the next collective), after removing the partial folder."""
    partial = tmp.is_dir()  # gone after a failure past the rename; read before main removes it
    reason = _describe_write_error(error, written) if error is not None else None
    failures = [f"rank {rank}: {r}" if world.world_size > 1 else r
                for rank, r in enumerate(all_gather_objects(reason, world)) if r is not None]
    if not failures:
        return
    if world.is_main:
        shutil.rmtree(tmp, ignore_errors=True)
    barrier(world)
    pointer = tmp.parent / LATEST
    kept = f"{pointer} still names {pointer.read_text().strip()}" if pointer.is_file() else "no earlier checkpoint"
    removed = "removed the partial folder; " if partial else ""
    raise CheckpointError(f"could not write checkpoint {tmp}: {'; '.join(failures)} ({removed}{kept})") from error


def saved_keys(path: str | Path) -> set[str]:
    """The flattened state keys a checkpoint holds ("model.<name>", "ema.<name>", ...)."""
    return set(_read_metadata(FileSystemReader(path), Path(path)).state_dict_metadata)


def _read_metadata(reader: FileSystemReader, path: Path):
    # Read here, not only inside dcp.load, which turns a damaged .metadata into a bare AssertionError.
    try:
        return reader.read_metadata()
    except Exception as e:
        raise CheckpointError(f"could not load checkpoint {path}: .metadata: {summary(e)}") from e


def load_shards(state: dict, path: str | Path) -> None:
    """dcp.load into `state` in place; an error names the checkpoint and the file it was reading."""
    path = Path(path)
    reader = _TrackingReader(path)
    _read_metadata(reader, path)
    try:
        dcp.load(state, storage_reader=reader)
    except FAILURES as e:
        rank = dist.get_rank() if dist.is_initialized() else 0
        if isinstance(e, CheckpointException) and rank not in e.failures:  # another rank's file failed
            where = f"rank {next(iter(e.failures))}"
        else:
            where = (reader.fs.last_opened or path / ".metadata").name
        raise CheckpointError(f"could not load checkpoint {path}: {where}: {summary(root_cause(e))}") from e


def _read_trainer_state(path: Path) -> dict:
    file = path / "trainer_state.json"
    try:
        return json.loads(file.read_text())
    except ValueError as e:
        raise CheckpointError(f"could not load checkpoint {path}: {file.name}: {summary(e)}") from e


def _load_rng(path: Path, rank: int, files: dict | None, checksums: bool) -> dict:
    """This rank's RNG states, read once: loaded, and checked against the manifest. A file
    torch cannot load reports torch's reason too."""
    file = path / f"rng_rank{rank}.pt"
    try:
        data = file.read_bytes()
    except OSError as e:
        raise CheckpointError(f"could not load checkpoint {path}: {file.name}: {summary(e)}") from e
    problem = check_file(file, files.get(file.name), checksums, data) if files is not None else None
    try:
        state = torch.load(io.BytesIO(data), weights_only=True)
    except Exception as e:
        also = f" ({problem})" if problem else ""
        raise CheckpointError(f"could not load checkpoint {path}: {file.name}: {summary(e)}{also}") from e
    if problem is not None:
        raise CheckpointError(f"checkpoint {path}: {problem}")
    return state


def load_checkpoint(path: str | Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                    world: World, ema: dict | None = None, verify: bool = True,
                    extra: dict[str, dict] | None = None) -> dict:
    """Load into the (possibly sharded) model, optimizer and EMA in place; restore this
    rank's RNG states when the world size is unchanged. Returns the trainer state.

    Every file is first checked against the manifest written at save, with CRC32s when
    `verify` (checkpoint.verify), else by size only; a mismatch is a CheckpointError naming
    the file, and so is a file that cannot be loaded."""
    path = Path(path)
    if not (path / "trainer_state.json").exists():
        raise FileNotFoundError(f"{path} is not a checkpoint: no trainer_state.json")
    files = verify_checkpoint(path, world, verify)
    trainer_state = _read_trainer_state(path)
    state = sharded_state(model, optimizer, ema, extra)
    load_shards(state, path)
    set_model_state_dict(model, state["model"], options=StateDictOptions(strict=False))
    set_optimizer_state_dict(model, optimizer, state["optimizer"])
    if trainer_state["world_size"] == world.world_size:
        set_rng_state(_load_rng(path, world.rank, files, verify))
    else:
        logger.warning("resuming %s written by %d ranks on %d ranks: weights and optimizer are resharded, "
                       "per-rank RNG states are not restored", path, trainer_state["world_size"], world.world_size)
    logger.info("resumed from %s (iteration %d)", path, trainer_state["iteration"])
    return trainer_state
