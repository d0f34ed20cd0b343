"""Checkpoint integrity: the size and CRC32 of every file, taken from the bytes as they are
written (manifest.json, written last, also marks a folder complete), and the check of a
checkpoint's files against it before anything is loaded."""

from __future__ import annotations

import io
import json
import logging
import os
import zlib
from contextlib import contextmanager
from pathlib import Path

from torch.distributed.checkpoint import FileSystemWriter
from torch.distributed.checkpoint.api import CheckpointException
from torch.distributed.checkpoint.filesystem import FileSystem

from fastvideo_grpo.parallel import World, all_gather_objects

logger = logging.getLogger(__name__)

MANIFEST = "manifest.json"


class CheckpointError(RuntimeError):
    pass


def root_cause(error: BaseException) -> BaseException:
    """The exception DCP wrapped (its CheckpointException holds each failed rank's)."""
    while isinstance(error, CheckpointException):
        error = next(iter(error.failures.values()))[0]
    return error


def summary(error: BaseException) -> str:
    text = str(error).strip()
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


class ChecksummedStream:
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


class Checksums:
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
                stream = ChecksummedStream(raw)
                yield stream
        except BaseException as e:
            error = stream.error if stream is not None and stream.error is not None else e
            if isinstance(error, OSError) and self.failed is None:
                self.failed = (path, error)
            raise
        self.files[path.name] = {"size": stream.size, "crc32": f"{stream.crc:08x}"}

    def renamed(self, path: str | os.PathLike, new_path: str | os.PathLike) -> None:
        self.files[Path(new_path).name] = self.files.pop(Path(path).name)


class ChecksummingFileSystem(FileSystem):
    """DCP's local file system, writing through Checksums."""

    def __init__(self, checksums: Checksums):
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


class ChecksummingWriter(FileSystemWriter):
    """DCP's file writer, recording the size and CRC32 of every file it writes."""

    def __init__(self, path: Path, checksums: Checksums):
        super().__init__(path)
        self.fs = ChecksummingFileSystem(checksums)


def write_file(path: Path, checksums: Checksums, write) -> None:
    """`write(stream)` into `path`, recorded in `checksums` and on disk before the rename."""
    with checksums.open(path) as stream:
        write(stream)
        stream.flush()
        os.fsync(stream.fileno())


def read_manifest(path: Path) -> dict | None:
    file = path / MANIFEST
    if not file.is_file():
        return None
    try:
        return json.loads(file.read_text())["files"]
    except (ValueError, KeyError) as e:
        raise CheckpointError(f"checkpoint {path}: {MANIFEST} is damaged ({summary(e)})") from e


def file_crc32(file: Path) -> str:
    crc, chunk = 0, bytearray(16 << 20)
    with file.open("rb", buffering=0) as f:
        while n := f.readinto(chunk):
            crc = zlib.crc32(memoryview(chunk)[:n], crc)
    return f"{crc:08x}"


def check_file(file: Path, expected: dict | None, checksums: bool, data: bytes | None = None) -> str | None:
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
    crc = f"{zlib.crc32(data):08x}" if data is not None else file_crc32(file)
    if crc != expected["crc32"]:
        return (f"{file.name} does not hold the bytes written at save (CRC32 {crc}, {MANIFEST} records "
                f"{expected['crc32']}): it is corrupted")
    return None


def is_rng_file(name: str) -> bool:
    return name.startswith("rng_rank")


def verify_checkpoint(path: str | Path, world: World | None = None, checksums: bool = True) -> dict | None:
    """Check the files of `path` against its manifest: sizes, and with `checksums` CRC32s (the
    ranks share the reading; RNG files are checked as each rank loads its own). Returns the
    manifest's entries, or None for a checkpoint saved without one (loaded with a warning)."""
    path = Path(path)
    files = read_manifest(path)
    if files is None:
        logger.warning("%s has no %s (saved before checksums were recorded): its files are not verified",
                       path, MANIFEST)
        return None
    rank, size = (world.rank, world.world_size) if world is not None else (0, 1)
    names = sorted(name for name in files if not is_rng_file(name))[rank::size]
    problems = [p for name in names if (p := check_file(path / name, files[name], checksums)) is not None]
    problems = [p for part in all_gather_objects(problems, world) for p in part]
    if problems:
        raise CheckpointError(f"checkpoint {path}: {'; '.join(problems)}")
    return files
