"""Offline Stable Diffusion text embeddings, exactly as diffusers' StableDiffusionPipeline
encodes: the CLIP last hidden state over 77 tokens. SD has no pooled conditioning: the
pooled tensor is stored empty ([n, 0]).

    python data_preprocess/preprocess_sd_embeddings.py --model-path SD_FOLDER \\
        --prompts prompts.txt --output data/sd_embeddings
"""

from __future__ import annotations

import sys

from fastvideo_grpo.cli.preprocess import family_main


def run(argv: list[str] | None = None) -> int:
    return family_main("stable_diffusion", __doc__.split("\n\n")[0], argv)


if __name__ == "__main__":
    sys.exit(run())
