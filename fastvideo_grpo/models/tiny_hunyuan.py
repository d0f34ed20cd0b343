"""Moved: `python -m fastvideo_grpo.models.tiny hunyuan_video OUT_DIR` writes the tiny folder."""

import sys

MOVED = "fastvideo_grpo.models.tiny_hunyuan has moved: run `python -m fastvideo_grpo.models.tiny hunyuan_video OUT_DIR`"
if __name__ != "__main__":
    raise ImportError(MOVED)
sys.stderr.write(MOVED + "\n")
sys.exit(2)
