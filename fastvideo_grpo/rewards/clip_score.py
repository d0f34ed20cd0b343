"""CLIP score: cosine of the normalised image and text features of a CLIP model loaded with
transformers from a local folder (model, tokenizer, image processor). A video scores the
mean over its frames taken every `frame_stride` frames."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from fastvideo_grpo.config import RewardConfig
from fastvideo_grpo.rewards.registry import RewardModel, ScoreFn, register_reward


@dataclass
class ClipConfig:
    """reward.models.clip"""

    # Local CLIP folder (transformers format: model, tokenizer, image processor).
    path: str


class ClipScore:
    def __init__(self, path: str, device: str = "cpu", frame_stride: int = 4):
        # Imported here, not above: the trainer reads every reward's config, not its libraries.
        from transformers import AutoTokenizer, CLIPImageProcessor, CLIPModel

        if not (Path(path) / "config.json").is_file():
            raise FileNotFoundError(f"reward.models.clip.path={path!r}: no config.json; expected a local CLIP folder")
        self.device = torch.device(device)
        self.model = CLIPModel.from_pretrained(path).to(self.device).eval()
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        self.processor = CLIPImageProcessor.from_pretrained(path)
        self.frame_stride = frame_stride

    @torch.no_grad()
    def __call__(self, videos: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        frames = videos[:, :: self.frame_stride]  # [B, F, H, W, 3]
        batch, count = frames.shape[:2]
        pixels = self.processor(images=list(frames.flatten(0, 1).numpy()), return_tensors="pt").pixel_values
        image = self.model.get_image_features(pixel_values=pixels.to(self.device)).pooler_output
        tokens = self.tokenizer(prompts, padding=True, truncation=True, return_tensors="pt").to(self.device)
        text = self.model.get_text_features(**tokens).pooler_output
        image = torch.nn.functional.normalize(image.float(), dim=-1).view(batch, count, -1)
        text = torch.nn.functional.normalize(text.float(), dim=-1)
        return (image * text[:, None]).sum(-1).mean(dim=1).cpu()


def build(cfg: RewardConfig, section: ClipConfig) -> ScoreFn:
    model = ClipScore(section.path, cfg.device, cfg.frame_stride)
    return lambda videos, prompts: {"clip": model(videos, prompts)}


register_reward(RewardModel("clip", ("clip",), build, ClipConfig))
