"""A user's mistake ends a command with one line that names the file or key, not a traceback."""

from __future__ import annotations

import logging
import os
from typing import Callable

# What our checks raise for bad input: each message names the file, flag or key. A bug raises
# these too, so FVGRPO_TRACEBACK=1 brings the traceback back.
USER_ERRORS = (ValueError, FileNotFoundError, FileExistsError, NotADirectoryError, IsADirectoryError, PermissionError)


def run_cli(main: Callable[[list[str] | None], int], argv: list[str] | None = None) -> int:
    """`main(argv)`, with a user error logged as one line (once, by rank 0 under torchrun)
    and exit status 2."""
    try:
        return main(argv)
    except USER_ERRORS as e:
        if os.environ.get("FVGRPO_TRACEBACK"):
            raise
        if int(os.environ.get("RANK", "0")) == 0:
            logging.getLogger("fastvideo_grpo").error("error: %s (FVGRPO_TRACEBACK=1 shows where)", e)
        return 2
