"""Offline Wan2.2 TI2V-5B text embeddings, exactly as diffusers' WanPipeline (and
WanImageToVideoPipeline) encode: UMT5's last hidden state over up to 512 tokens, zeros after
each prompt's real tokens. Image-to-video's first-frame latents: preprocess_latents.py.

    python data_preprocess/preprocess_wan_ti2v_embeddings.py --model-path WAN22_TI2V_FOLDER \\
        --prompts prompts.txt --output data/wan_ti2v_embeddings
"""

from __future__ import annotations

import sys

from fastvideo_grpo.cli.preprocess import family_main


def run(argv: list[str] | None = None) -> int:
    return family_main("wan_ti2v", __doc__.split("\n\n")[0], argv)


if __name__ == "__main__":
    sys.exit(run())
