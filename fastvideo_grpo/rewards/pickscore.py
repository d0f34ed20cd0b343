"""PickScore: a CLIP ViT-H-14 fine-tuned on Pick-a-Pic human preferences (the released
yuvalkirstain/PickScore_v1, with the tokenizer and image processor of
laion/CLIP-ViT-H-14-laion2B-s32B-b79K), loaded with transformers from local folders.

Score = logit_scale * cosine of the normalised image and text features, as Flow-GRPO's
scorer computes it (which then divides by 26, a constant that group normalisation undoes),
averaged over `frames` frames evenly spaced from first to last (all of a shorter video;
an image is one frame). Text is truncated to 77 tokens."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from fastvideo_grpo.config import ConfigError, RewardConfig
from fastvideo_grpo.rewards.registry import RewardModel, ScoreFn, register_reward


@dataclass
class PickScoreConfig:
    """reward.models.pickscore"""

    # The PickScore_v1 folder (transformers CLIPModel).
    path: str
    # The folder of its tokenizer and image processor (CLIP-ViT-H-14-laion2B-s32B-b79K);
    # "" reads them from `path`.
    processor_path: str = ""
    # Frames scored per video, evenly spaced.
    frames: int = 4

    def __post_init__(self) -> None:
        if self.frames < 1:
            raise ConfigError(f"reward.models.pickscore.frames: {self.frames!r} is invalid; expected >= 1")


class PickScore:
    def __init__(self, path: str, processor_path: str = "", device: str = "cpu", frames: int = 4):
        # Imported here, not above: the trainer reads every reward's config, not its libraries.
        from transformers import AutoTokenizer, CLIPImageProcessor, CLIPModel

        processor_path = processor_path or path
        for key, folder, expected in (("path", path, "config.json"),
                                      ("processor_path", processor_path, "preprocessor_config.json")):
            if not (Path(folder) / expected).is_file():
                raise FileNotFoundError(f"reward.models.pickscore.{key}={folder!r}: no {expected}; expected a local "
                                        f"{'PickScore_v1' if key == 'path' else 'CLIP-ViT-H-14 processor'} folder")
        self.device = torch.device(device)
        self.model = CLIPModel.from_pretrained(path).to(self.device).eval()
        self.tokenizer = AutoTokenizer.from_pretrained(processor_path)
        self.processor = CLIPImageProcessor.from_pretrained(processor_path)
        self.frames = frames

    @torch.no_grad()
    def __call__(self, videos: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        indices = torch.linspace(0, videos.shape[1] - 1, min(self.frames, videos.shape[1])).round().long()
        frames = videos[:, indices]  # [B, F, H, W, 3]
        batch, count = frames.shape[:2]
        pixels = self.processor(images=list(frames.flatten(0, 1).numpy()), return_tensors="pt").pixel_values
        image = self.model.get_image_features(pixel_values=pixels.to(self.device)).pooler_output
        tokens = self.tokenizer(prompts, padding=True, truncation=True, max_length=77, return_tensors="pt")
        text = self.model.get_text_features(**tokens.to(self.device)).pooler_output
        image = F.normalize(image.float(), dim=-1).view(batch, count, -1)
        text = F.normalize(text.float(), dim=-1)
        cosine = (image * text[:, None]).sum(-1)  # [B, F]
        return (self.model.logit_scale.exp().float() * cosine).mean(dim=1).cpu()


def build(cfg: RewardConfig, section: PickScoreConfig) -> ScoreFn:
    model = PickScore(section.path, section.processor_path, cfg.device, section.frames)
    return lambda videos, prompts: {"pickscore": model(videos, prompts)}


register_reward(RewardModel("pickscore", ("pickscore",), build, PickScoreConfig))
