"""Offline HunyuanVideo-1.5 image tokens, exactly as diffusers' HunyuanVideo15ImageToVideoPipeline
encodes the image (`_get_image_embeds`): SigLIP's image processor, then the vision model's
last hidden state (729 x 1152 per image in the released model). One image a forward, as the
pipeline encodes it. Run by data_preprocess/preprocess_latents.py --family hunyuan_video_15_i2v.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import PIL.Image
import torch
from diffusers import HunyuanVideo15ImageToVideoPipeline
from transformers import SiglipImageProcessor, SiglipVisionModel


def image_embedder(model_path: Path, device: torch.device) -> Callable[[list[PIL.Image.Image]], torch.Tensor]:
    """The folder's image_encoder/ and feature_extractor/ -> images -> [n, N, D] tokens."""
    for sub in ("image_encoder", "feature_extractor"):
        if not (Path(model_path) / sub).is_dir():
            raise FileNotFoundError(f"--model-path {model_path}: no {sub}/; expected a diffusers folder for "
                                    "HunyuanVideo15ImageToVideoPipeline")
    dtype = torch.float32 if device.type == "cpu" else torch.bfloat16
    encoder = SiglipVisionModel.from_pretrained(Path(model_path) / "image_encoder", dtype=dtype).to(device).eval()
    processor = SiglipImageProcessor.from_pretrained(Path(model_path) / "feature_extractor")

    def embed(images: list[PIL.Image.Image]) -> torch.Tensor:
        with torch.no_grad():
            return torch.cat([HunyuanVideo15ImageToVideoPipeline._get_image_embeds(encoder, processor, image, device)
                              for image in images])

    return embed
