"""Files we write are readable as the umask allows: safetensors' writer creates every file
with mode 0600 whatever the umask, so teammates on a shared cluster could not read
embedding shards, exported weights or LoRA files."""

from __future__ import annotations

import os
from pathlib import Path


def current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def honour_umask(path: str | Path) -> None:
    """Give the file at `path` (or every file and folder under it) the mode a plain open()
    or mkdir() would have: 0666 and 0777 less the umask."""
    path = Path(path)
    mask = current_umask()
    paths = [path, *path.rglob("*")] if path.is_dir() else [path]
    for p in paths:
        if p.is_symlink():
            continue
        p.chmod((0o777 if p.is_dir() else 0o666) & ~mask)
