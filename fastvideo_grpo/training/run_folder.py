"""The run folder (train.output_dir): one run at a time, and its JSONL logs kept consistent
with the checkpoint a run resumes from."""

from __future__ import annotations

import fcntl
import json
import logging
import os
import socket
import time
from contextlib import contextmanager
from pathlib import Path

import yaml

from fastvideo_grpo.checkpoint.folders import write_atomic
from fastvideo_grpo.config import Config, to_dict
from fastvideo_grpo.training.outputs import read_metrics

logger = logging.getLogger(__name__)

LOCK = ".lock"


class RunFolderBusy(RuntimeError):
    pass


@contextmanager
def run_folder_lock(folder: Path, held: bool = True):
    """An exclusive lock on `folder` for the run's lifetime (taken where `held`: rank 0).

    flock is released by the kernel when its holder dies, so a lock left by a crashed or
    killed run is never stale; the file only records who held it, for the message."""
    if not held:
        yield
        return
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / LOCK
    handle = path.open("a+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        holder = handle.read().strip() or "another process"
        handle.close()
        raise RunFolderBusy(f"train.output_dir={folder} is in use by a running job ({holder}); wait for it, or "
                            "give this run another train.output_dir") from None
    handle.seek(0)
    handle.truncate()
    handle.write(f"pid {os.getpid()} on {socket.gethostname()}\n")
    handle.flush()
    try:
        yield
    finally:
        handle.close()  # releases the lock


def keep_records(path: Path, keep) -> None:
    """Rewrite a JSONL log with the records `keep(record)` accepts (atomically: a crash
    while rewriting leaves the old file)."""
    if not path.exists():
        return
    kept = [r for r in read_metrics(path) if keep(r)]
    temp = path.with_name(path.name + ".tmp")
    temp.write_text("".join(json.dumps(r) + "\n" for r in kept))
    os.replace(temp, path)


# The logs a fresh start moves aside (a resumed run trims the JSONL ones to its checkpoint).
LOGS = ("metrics.jsonl", "eval.jsonl", "eval_scores.jsonl", "samples/index.jsonl", "health.json")


def trim_logs(folder: Path, start: int) -> None:
    """On resume at iteration `start`, drop what the resumed run will write again: metrics and
    sample rows of iterations >= start, evaluations after `start` iterations. A fresh start
    (0) in a folder whose logs hold an earlier run's rows (its checkpoints deleted) moves
    them aside instead: nothing is dropped."""
    if start == 0:
        set_aside_logs(folder)
        return
    keep_records(folder / "metrics.jsonl", lambda r: r["iteration"] < start)
    keep_records(folder / "samples" / "index.jsonl", lambda r: r["iteration"] < start)
    keep_records(folder / "eval.jsonl", lambda r: r["iteration"] <= start)
    keep_records(folder / "eval_scores.jsonl", lambda r: r["iteration"] <= start)


def set_aside_logs(folder: Path) -> None:
    """Rename each log that holds anything to <name>.prev-<UTC time>, with a warning."""
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
    for name in LOGS:
        path = folder / name
        if not path.is_file() or not path.read_text().strip():
            continue
        target = path.with_name(f"{path.name}.prev-{stamp}")
        count = 1
        while target.exists():  # two fresh starts within a second
            target, count = path.with_name(f"{path.name}.prev-{stamp}-{count}"), count + 1
        os.replace(path, target)
        logger.warning("%s holds an earlier run's records but there is no checkpoint to resume from: this fresh "
                       "start moved it to %s", path, target)


def write_run_config(out: Path, cfg: Config) -> None:
    """output_dir/config.yaml, the config this run trains with (evaluate, export and a resumed
    run read it), written atomically: a full disk leaves the earlier one, not an empty file."""
    write_atomic(out / "config.yaml", yaml.safe_dump(to_dict(cfg), sort_keys=False))
