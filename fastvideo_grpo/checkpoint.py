"""Sharded, resumable checkpoints with torch.distributed.checkpoint (DCP).

    output_dir/checkpoints/step_<N>/     model, optimizer, EMA (DCP shards + .metadata),
                                         trainer_state.json, rng_rank<r>.pt,
                                         manifest.json (size and CRC32 of every other file)
    output_dir/checkpoints/latest        the name of the newest complete checkpoint

A checkpoint is written under `.tmp-step_<N>` and renamed when every rank has finished, and
`latest` is replaced atomically after that, so a crash at any point leaves `latest`
naming a complete checkpoint. The manifest is written last, so it also marks a folder as
complete. A failed write (a full disk) removes the partial folder on every rank. N is the
number of finished iterations. Nothing is loaded with pickle: DCP for tensors, JSON for the
trainer state, `weights_only` for RNG states.
"""

from __future__ import annotations

import errno
import io
import json
import logging
import os
import random
import shutil
import zlib
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint import FileSystemReader, FileSystemWriter
from torch.distributed.checkpoint.api import CheckpointException
from torch.distributed.checkpoint.filesystem import FileSystem
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)

from fastvideo_grpo.models.lora import trainable_state
from fastvideo_grpo.parallel import World, all_gather_objects, barrier

logger = logging.getLogger(__name__)

CHECKPOINTS = "checkpoints"
LATEST = "latest"
MANIFEST = "manifest.json"
# The network's diffusers config, so that export can rebuild it without the training config.
TRANSFORMER_CONFIG = "transformer_config.json"
# A full disk, or a full quota on a cluster file system.
DISK_FULL = (errno.ENOSPC, errno.EDQUOT)
# DCP raises CheckpointException, a BaseException, for a failure on any rank.
FAILURES = (Exception, CheckpointException)


class CheckpointError(RuntimeError):
    pass


def checkpoint_root(output_dir: str | Path) -> Path:
    return Path(output_dir) / CHECKPOINTS


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
    try:
        with tmp.open("w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise OSError(e.errno, e.strerror, str(path)) from e  # a failed write or flush names no file
    os.replace(tmp, path)


def _root_cause(error: BaseException) -> BaseException:
    """The exception DCP wrapped (its CheckpointException holds each failed rank's)."""
    while isinstance(error, CheckpointException):
        error = next(iter(error.failures.values()))[0]
    return error


def _summary(error: BaseException) -> str:
    text = str(error).strip()
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


class _ChecksummedStream:
    """A binary file that keeps the size and CRC32 of what is written to it (DCP, torch.save
    and pickle write sequentially, never seeking back)."""

    def __init__(self, raw: io.BufferedWriter):
        self.raw, self.size, self.crc = raw, 0, 0
        self.error: OSError | None = None

    def write(self, data) -> int:
        view = memoryview(data).cast("B")
        try:
            written = self.raw.write(view)
        except OSError as e:
            self.error = e  # torch's zip writer replaces it by "unexpected pos ..."
            raise
        self.crc = zlib.crc32(view[:written], self.crc)
        self.size += written
        return written

    def tell(self) -> int:
        return self.raw.tell()

    def flush(self) -> None:
        self.raw.flush()

    def fileno(self) -> int:
        return self.raw.fileno()

    def close(self) -> None:
        self.raw.close()


class _Checksums:
    """Size and CRC32 of each file this rank writes into a checkpoint, taken from the bytes as
    they are written: hashing by reading the files back would read a 100 GB checkpoint again."""

    def __init__(self) -> None:
        self.files: dict[str, dict] = {}
        self.failed: tuple[Path, OSError] | None = None  # the first write that failed

    @contextmanager
    def open(self, path: Path):
        """`path` opened for writing; recorded when it is closed without error."""
        stream = None
        try:
            with path.open("wb") as raw:
                stream = _ChecksummedStream(raw)
                yield stream
        except BaseException as e:
            error = stream.error if stream is not None and stream.error is not None else e
            if isinstance(error, OSError) and self.failed is None:
                self.failed = (path, error)
            raise
        self.files[path.name] = {"size": stream.size, "crc32": f"{stream.crc:08x}"}

    def renamed(self, path: str | os.PathLike, new_path: str | os.PathLike) -> None:
        self.files[Path(new_path).name] = self.files.pop(Path(path).name)


class _ChecksummingFileSystem(FileSystem):
    """DCP's local file system, writing through _Checksums."""

    def __init__(self, checksums: _Checksums):
        super().__init__()
        self.checksums = checksums

    @contextmanager
    def create_stream(self, path: str | os.PathLike, mode: str):
        if mode != "wb":
            with super().create_stream(path, mode) as stream:
                yield stream
            return
        with self.checksums.open(Path(path)) as stream:
            yield stream

    def rename(self, path: str | os.PathLike, new_path: str | os.PathLike) -> None:
        super().rename(path, new_path)  # DCP writes .metadata.tmp, then renames it
        self.checksums.renamed(path, new_path)


class _ChecksummingWriter(FileSystemWriter):
    """DCP's file writer, recording the size and CRC32 of every file it writes."""

    def __init__(self, path: Path, checksums: _Checksums):
        super().__init__(path)
        self.fs = _ChecksummingFileSystem(checksums)


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


def _write_file(path: Path, checksums: _Checksums, write) -> None:
    """`write(stream)` into `path`, recorded in `checksums` and on disk before the rename."""
    with checksums.open(path) as stream:
        write(stream)
        stream.flush()
        os.fsync(stream.fileno())


def _json_bytes(data: dict, indent: int | None = None) -> bytes:
    return json.dumps(data, indent=indent).encode()


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
    written = _Checksums()

    def write_this_ranks_files():
        dcp.save(sharded_state(model, optimizer, ema), checkpoint_id=tmp,
                 storage_writer=_ChecksummingWriter(tmp, written))
        _write_file(tmp / f"rng_rank{world.rank}.pt", written, lambda f: torch.save(rng_state(), f))
        if world.is_main:
            state = {**trainer_state, "iteration": iteration, "world_size": world.world_size}
            _write_file(tmp / "trainer_state.json", written, lambda f: f.write(_json_bytes(state)))
            if model_config is not None:
                _write_file(tmp / TRANSFORMER_CONFIG, written, lambda f: f.write(_json_bytes(model_config, 2)))

    _fail_together(_caught(write_this_ranks_files), written, tmp, world)
    files = {file: entry for part in all_gather_objects(written.files, world) for file, entry in part.items()}
    error = _caught(lambda: _complete(tmp, final, files)) if world.is_main else None
    _fail_together(error, written, tmp, world)
    if world.is_main:
        _prune(root, keep_last)
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
    _write_atomic(tmp / MANIFEST, json.dumps({"files": files}, indent=1, sort_keys=True))
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    _write_atomic(final.parent / LATEST, final.name + "\n")


def _describe_write_error(error: BaseException, written: _Checksums) -> str:
    """What went wrong, with the file being written; a full disk said as such (torch reports
    it as "unexpected pos" of its zip writer, or DCP as one of its rank failures)."""
    cause = _root_cause(error)
    failed_file, failed = written.failed or (None, None)
    oserrors = [e for e in (failed, cause) if isinstance(e, OSError)]
    file = failed_file or next((e.filename for e in oserrors if e.filename), None)
    where = f" writing {file}" if file else ""
    if any(e.errno in DISK_FULL for e in oserrors):
        return f"no space left on device{where}"
    return f"{_summary(failed or cause)}{where}"


def _fail_together(error: BaseException | None, written: _Checksums, tmp: Path, world: World) -> None:
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


def _step_of(path: Path) -> int:
    return int(path.name.removeprefix("step_"))


def _prune(root: Path, keep_last: int) -> None:
    complete = sorted((p for p in root.glob("step_*") if p.is_dir()), key=_step_of)
    for old in complete[:-keep_last] if keep_last > 0 else []:
        shutil.rmtree(old)


def _newest_complete(root: Path) -> Path | None:
    """The newest step_N folder that holds a manifest (written last: the folder is complete)."""
    complete = [p for p in root.glob("step_*") if (p / MANIFEST).is_file()]
    return max(complete, key=_step_of, default=None)


def latest_checkpoint(output_dir: str | Path) -> Path | None:
    """The checkpoint `latest` names; without `latest` (deleted or lost), the newest complete
    step_N folder; None when there is neither. A `latest` naming a missing or incomplete
    folder is an error rather than a silent fresh start."""
    root = checkpoint_root(output_dir)
    pointer = root / LATEST
    if not pointer.exists():
        newest = _newest_complete(root)
        if newest is not None:
            logger.warning("%s is missing: using %s, the newest complete checkpoint", pointer, newest)
        return newest
    path = root / pointer.read_text().strip()
    for required in (".metadata", "trainer_state.json"):
        if not (path / required).exists():
            raise FileNotFoundError(f"{pointer} names {path}, which has no {required}: the checkpoint is incomplete")
    return path


def resolve_checkpoint(path: str | Path) -> Path:
    """The checkpoint folder meant by what a user may pass for one: the folder itself, the
    `latest` file, the checkpoints folder or the run folder (for the last two, its latest)."""
    path = Path(path)
    if path.is_file() and path.name == LATEST:
        return path.parent / path.read_text().strip()
    run = path.parent if path.name == CHECKPOINTS else path
    if not checkpoint_root(run).is_dir():
        return path
    found = latest_checkpoint(run)
    if found is None:
        raise FileNotFoundError(f"{path}: {checkpoint_root(run)} holds no complete checkpoint")
    return found


def _read_manifest(path: Path) -> dict | None:
    file = path / MANIFEST
    if not file.is_file():
        return None
    try:
        return json.loads(file.read_text())["files"]
    except (ValueError, KeyError) as e:
        raise CheckpointError(f"checkpoint {path}: {MANIFEST} is damaged ({_summary(e)})") from e


def _file_crc32(file: Path) -> str:
    crc, chunk = 0, bytearray(16 << 20)
    with file.open("rb", buffering=0) as f:
        while n := f.readinto(chunk):
            crc = zlib.crc32(memoryview(chunk)[:n], crc)
    return f"{crc:08x}"


def _check_file(file: Path, expected: dict | None, checksums: bool, data: bytes | None = None) -> str | None:
    """What is wrong with `file` (or its bytes `data`) against its manifest entry, if anything."""
    if expected is None:
        return f"{file.name} is not in {MANIFEST}"
    if data is None and not file.is_file():
        return f"{file.name} is missing"
    size = len(data) if data is not None else file.stat().st_size
    if size != expected["size"]:
        return f"{file.name} has {size} bytes, {expected['size']} were written: it is truncated or was changed"
    if not checksums:
        return None
    crc = f"{zlib.crc32(data):08x}" if data is not None else _file_crc32(file)
    if crc != expected["crc32"]:
        return (f"{file.name} does not hold the bytes written at save (CRC32 {crc}, {MANIFEST} records "
                f"{expected['crc32']}): it is corrupted")
    return None


def _is_rng_file(name: str) -> bool:
    return name.startswith("rng_rank")


def verify_checkpoint(path: str | Path, world: World | None = None, checksums: bool = True) -> dict | None:
    """Check the files of `path` against its manifest: sizes, and with `checksums` CRC32s (the
    ranks share the reading; RNG files are checked as each rank loads its own). Returns the
    manifest's entries, or None for a checkpoint saved without one (loaded with a warning)."""
    path = Path(path)
    files = _read_manifest(path)
    if files is None:
        logger.warning("%s has no %s (saved before checksums were recorded): its files are not verified",
                       path, MANIFEST)
        return None
    rank, size = (world.rank, world.world_size) if world is not None else (0, 1)
    names = sorted(name for name in files if not _is_rng_file(name))[rank::size]
    problems = [p for name in names if (p := _check_file(path / name, files[name], checksums)) is not None]
    problems = [p for part in all_gather_objects(problems, world) for p in part]
    if problems:
        raise CheckpointError(f"checkpoint {path}: {'; '.join(problems)}")
    return files


def saved_keys(path: str | Path) -> set[str]:
    """The flattened state keys a checkpoint holds ("model.<name>", "ema.<name>", ...)."""
    return set(_read_metadata(FileSystemReader(path), Path(path)).state_dict_metadata)


def _read_metadata(reader: FileSystemReader, path: Path):
    # Read here, not only inside dcp.load, which turns a damaged .metadata into a bare AssertionError.
    try:
        return reader.read_metadata()
    except Exception as e:
        raise CheckpointError(f"could not load checkpoint {path}: .metadata: {_summary(e)}") from e


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
        raise CheckpointError(f"could not load checkpoint {path}: {where}: {_summary(_root_cause(e))}") from e


def _read_trainer_state(path: Path) -> dict:
    file = path / "trainer_state.json"
    try:
        return json.loads(file.read_text())
    except ValueError as e:
        raise CheckpointError(f"could not load checkpoint {path}: {file.name}: {_summary(e)}") from e


def _load_rng(path: Path, rank: int, files: dict | None, checksums: bool) -> dict:
    """This rank's RNG states, read once: loaded, and checked against the manifest. A file
    torch cannot load reports torch's reason too."""
    file = path / f"rng_rank{rank}.pt"
    try:
        data = file.read_bytes()
    except OSError as e:
        raise CheckpointError(f"could not load checkpoint {path}: {file.name}: {_summary(e)}") from e
    problem = _check_file(file, files.get(file.name), checksums, data) if files is not None else None
    try:
        state = torch.load(io.BytesIO(data), weights_only=True)
    except Exception as e:
        also = f" ({problem})" if problem else ""
        raise CheckpointError(f"could not load checkpoint {path}: {file.name}: {_summary(e)}{also}") from e
    if problem is not None:
        raise CheckpointError(f"checkpoint {path}: {problem}")
    return state


def load_checkpoint(path: str | Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                    world: World, ema: dict | None = None, verify: bool = True) -> dict:
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
    state = sharded_state(model, optimizer, ema)
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
