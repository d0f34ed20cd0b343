"""HPS-v2.1: an open_clip ViT-H-14 fine-tuned on human preferences, loaded from a local
`HPS_v2.1_compressed.pt` (its `state_dict` entry). Score = cosine of the normalised image
and text features (no logit scale); a video scores the mean over frames taken every
`frame_stride` frames. Preprocessing as HPS's: the longest side scaled to the model's
image size, zero-padded centred to a square, OpenAI mean/std."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from fastvideo_grpo.config import RewardConfig
from fastvideo_grpo.rewards.registry import RewardModel, ScoreFn, register_reward

OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)


def pad_to_square(frames: torch.Tensor, size: int) -> torch.Tensor:
    """uint8 [N, H, W, 3] -> float [N, 3, size, size]: longest side scaled to `size`,
    the rest zero-padded around the centre, then standardised."""
    x = frames.permute(0, 3, 1, 2).float() / 255.0
    height, width = x.shape[-2:]
    scale = size / max(height, width)
    new_h, new_w = round(height * scale), round(width * scale)
    # No clamp after the bicubic overshoot: hpsv2 1.2.0 feeds the model the unclamped pixels.
    x = F.interpolate(x, size=(new_h, new_w), mode="bicubic", align_corners=False, antialias=True)
    top, left = (size - new_h) // 2, (size - new_w) // 2
    x = F.pad(x, (left, size - new_w - left, top, size - new_h - top), value=0.0)
    mean = torch.tensor(OPENAI_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(OPENAI_STD).view(1, 3, 1, 1)
    return (x - mean) / std


@dataclass
class HPSConfig:
    """reward.models.hps"""

    # HPS_v2.1_compressed.pt.
    path: str
    # Its open_clip architecture.
    model: str = "ViT-H-14"


class HPSv21:
    def __init__(self, checkpoint: str, model_name: str = "ViT-H-14", device: str = "cpu", frame_stride: int = 4):
        # Imported here, not above: the trainer reads every reward's config, not its libraries.
        import open_clip

        path = Path(checkpoint)
        if not path.is_file():
            raise FileNotFoundError(f"reward.models.hps.path={checkpoint!r} does not exist; expected "
                                    "HPS_v2.1_compressed.pt")
        self.device = torch.device(device)
        model = open_clip.create_model(model_name, pretrained=None, precision="fp32", device="cpu")
        state = torch.load(path, map_location="cpu", weights_only=True)
        model.load_state_dict(state["state_dict"] if "state_dict" in state else state)
        self.model = model.to(self.device).eval()
        self.tokenizer = open_clip.get_tokenizer(model_name)
        image_size = model.visual.image_size
        self.image_size = image_size[0] if isinstance(image_size, (tuple, list)) else image_size
        self.frame_stride = frame_stride

    @torch.no_grad()
    def __call__(self, videos: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        frames = videos[:, :: self.frame_stride]  # [B, F, H, W, 3]
        batch, count = frames.shape[:2]
        pixels = pad_to_square(frames.flatten(0, 1), self.image_size).to(self.device)
        image = F.normalize(self.model.encode_image(pixels).float(), dim=-1).view(batch, count, -1)
        text = F.normalize(self.model.encode_text(self.tokenizer(prompts).to(self.device)).float(), dim=-1)
        return (image * text[:, None]).sum(-1).mean(dim=1).cpu()


def build(cfg: RewardConfig, section: HPSConfig) -> ScoreFn:
    model = HPSv21(section.path, section.model, cfg.device, cfg.frame_stride)
    return lambda videos, prompts: {"hps": model(videos, prompts)}


register_reward(RewardModel("hps", ("hps",), build, HPSConfig))
