"""Offline HunyuanVideo-1.5 text embeddings, exactly as diffusers' HunyuanVideo15Pipeline
encodes: Qwen2.5-VL's hidden states over the pipeline's chat template (cropped) with their
mask, and ByT5's embeddings of the prompt's quoted glyph text with theirs.

    python data_preprocess/preprocess_hunyuan_video_15_embeddings.py --model-path HV15_FOLDER \\
        --prompts prompts.txt --output data/hunyuan_video_15_embeddings
"""

from __future__ import annotations

import sys

from fastvideo_grpo.cli.preprocess import family_main


def run(argv: list[str] | None = None) -> int:
    return family_main("hunyuan_video_15", __doc__.split("\n\n")[0], argv)


if __name__ == "__main__":
    sys.exit(run())
