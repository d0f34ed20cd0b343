"""Offline Wan2.1 text embeddings, exactly as diffusers' WanPipeline encodes: UMT5's last
hidden state over up to 512 tokens, zeros after each prompt's real tokens.

    python data_preprocess/preprocess_wan_embeddings.py --model-path WAN_FOLDER \\
        --prompts prompts.txt --output data/wan_embeddings
"""

from __future__ import annotations

import sys

from fastvideo_grpo.cli.preprocess import family_main


def run(argv: list[str] | None = None) -> int:
    return family_main("wan", __doc__.split("\n\n")[0], argv)


if __name__ == "__main__":
    sys.exit(run())
