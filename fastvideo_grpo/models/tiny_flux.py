"""Moved: `python -m fastvideo_grpo.models.tiny flux OUT_DIR` writes the tiny folder."""

import sys

MOVED = "fastvideo_grpo.models.tiny_flux has moved: run `python -m fastvideo_grpo.models.tiny flux OUT_DIR`"
if __name__ != "__main__":
    raise ImportError(MOVED)
sys.stderr.write(MOVED + "\n")
sys.exit(2)
