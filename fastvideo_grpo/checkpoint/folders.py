"""Where checkpoints live: output_dir/checkpoints/step_<N>/, the `latest` pointer and the
`best` one (the best held-out evaluation's); which one a run resumes from, and which old
ones are pruned (never the best)."""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

from fastvideo_grpo.checkpoint.integrity import MANIFEST

logger = logging.getLogger(__name__)

CHECKPOINTS = "checkpoints"
LATEST = "latest"
BEST = "best"


def checkpoint_root(output_dir: str | Path) -> Path:
    return Path(output_dir) / CHECKPOINTS


def write_atomic(path: Path, text: str) -> None:
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


def read_pointer(pointer: Path) -> str | None:
    """The folder name a `latest` or `best` file holds; None when it holds anything else
    (binary bytes of a damaged disk, nothing)."""
    text = pointer.read_bytes().decode("utf-8", errors="replace").strip()
    return text if text and text.isprintable() and "\ufffd" not in text and "/" not in text else None


def damaged(pointer: Path) -> str:
    return f"{pointer} holds {pointer.read_bytes()[:40]!r}, not the name of a checkpoint folder (step_<N>)"


def step_of(path: Path) -> int:
    return int(path.name.removeprefix("step_"))


def step_folders(root: Path) -> list[Path]:
    """The step_<N> folders in `root`, oldest first. Anything else named step_* (a user's
    step_6.bak or step_best) is not ours: it is left alone, with a note naming it."""
    ours = []
    for path in root.glob("step_*"):
        if path.is_dir() and path.name.removeprefix("step_").isdecimal():
            ours.append(path)
        else:
            logger.info("%s is not a checkpoint of this run (step_<N>, N a number): left alone", path)
    return sorted(ours, key=step_of)


def prune(root: Path, keep_last: int) -> None:
    complete = step_folders(root)
    best = read_pointer(root / BEST) if (root / BEST).is_file() else None
    if best is None and (root / BEST).is_file():
        logger.warning("%s: keeping every checkpoint", damaged(root / BEST))
        return
    for old in complete[:-keep_last] if keep_last > 0 else []:
        if old.name != best:
            shutil.rmtree(old)


def mark_best(output_dir: str | Path, iteration: int) -> None:
    """Point checkpoints/best at step_<iteration> (which must exist)."""
    root = checkpoint_root(output_dir)
    if not (root / f"step_{iteration}" / MANIFEST).is_file():
        raise FileNotFoundError(f"{root / f'step_{iteration}'} is not a complete checkpoint: it cannot be marked best")
    write_atomic(root / BEST, f"step_{iteration}\n")


def best_checkpoint(output_dir: str | Path) -> Path:
    """The checkpoint `best` names; an error naming the file when there is none."""
    pointer = checkpoint_root(output_dir) / BEST
    if not pointer.is_file():
        raise FileNotFoundError(f"{pointer} does not exist: the run marked no best checkpoint (it needs eval.every "
                                "and eval.early_stop_patience or eval.early_stop_diversity)")
    name = read_pointer(pointer)
    if name is None:
        raise FileNotFoundError(f"{damaged(pointer)}; pass the best step_<N> folder itself")
    path = pointer.parent / name
    if not (path / MANIFEST).is_file():
        raise FileNotFoundError(f"{pointer} names {path}, which is not a complete checkpoint")
    return path


def newest_complete(root: Path) -> Path | None:
    """The newest step_N folder that holds a manifest (written last: the folder is complete)."""
    complete = [p for p in step_folders(root) if (p / MANIFEST).is_file()]
    return complete[-1] if complete else None


def latest_checkpoint(output_dir: str | Path) -> Path | None:
    """The checkpoint `latest` names; without `latest` (deleted or lost), the newest complete
    step_N folder; None when there is neither. A `latest` naming a missing or incomplete
    folder is an error rather than a silent fresh start."""
    root = checkpoint_root(output_dir)
    pointer = root / LATEST
    if not pointer.exists():
        newest = newest_complete(root)
        if newest is not None:
            logger.warning("%s is missing: using %s, the newest complete checkpoint", pointer, newest)
        return newest
    name = read_pointer(pointer)
    if name is None:
        newest = newest_complete(root)
        if newest is None:
            raise FileNotFoundError(f"{damaged(pointer)}, and {root} holds no complete step_<N> folder")
        logger.warning("%s: using %s, the newest complete checkpoint", damaged(pointer), newest)
        return newest
    path = root / name
    for required in (".metadata", "trainer_state.json"):
        if not (path / required).exists():
            raise FileNotFoundError(f"{pointer} names {path}, which has no {required}: the checkpoint is incomplete")
    return path


def resolve_checkpoint(path: str | Path) -> Path:
    """The checkpoint folder meant by what a user may pass for one: the folder itself, the
    `latest` or `best` file, the checkpoints folder or the run folder (for the last two, its latest)."""
    path = Path(path)
    if path.is_file() and path.name in (LATEST, BEST):
        name = read_pointer(path)
        if name is None:
            raise FileNotFoundError(f"{damaged(path)}; pass a step_<N> folder or the run folder")
        return path.parent / name
    run = path.parent if path.name == CHECKPOINTS else path
    if not checkpoint_root(run).is_dir():
        return path
    found = latest_checkpoint(run)
    if found is None:
        raise FileNotFoundError(f"{path}: {checkpoint_root(run)} holds no complete checkpoint")
    return found
