"""Offline FLUX text embeddings, exactly as diffusers' FluxPipeline encodes: the T5 sequence
(up to 512 tokens), the CLIP-L pooled output, and the text ids (zeros, one row a token).

    python data_preprocess/preprocess_flux_embeddings.py --model-path FLUX_FOLDER \\
        --prompts prompts.txt --output data/flux_embeddings
"""

from __future__ import annotations

import sys

from fastvideo_grpo.cli.preprocess import family_main


def run(argv: list[str] | None = None) -> int:
    return family_main("flux", __doc__.split("\n\n")[0], argv)


if __name__ == "__main__":
    sys.exit(run())
