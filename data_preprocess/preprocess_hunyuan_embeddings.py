"""Offline HunyuanVideo text embeddings, exactly as diffusers' HunyuanVideoPipeline encodes:
its prompt template and crop_start, the Llama hidden state two layers below the last, up
to 256 tokens with the attention mask, and the CLIP-L pooled output.

    python data_preprocess/preprocess_hunyuan_embeddings.py --model-path HUNYUAN_FOLDER \\
        --prompts prompts.txt --output data/embeddings [--dtype bf16] [--overwrite]
    torchrun --nproc_per_node 8 data_preprocess/preprocess_hunyuan_embeddings.py ...
"""

from __future__ import annotations

import sys

from fastvideo_grpo.cli.preprocess import family_main


def run(argv: list[str] | None = None) -> int:
    return family_main("hunyuan_video", __doc__.split("\n\n")[0], argv)


if __name__ == "__main__":
    sys.exit(run())
