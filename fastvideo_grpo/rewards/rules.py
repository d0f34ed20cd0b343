"""Rule rewards that need no weights: the tiny demo and tests train against these."""

from __future__ import annotations

import torch

from fastvideo_grpo.rewards.registry import register_reward, rule_reward

COLORS = {
    "red": (1.0, 0.0, 0.0),
    "green": (0.0, 1.0, 0.0),
    "blue": (0.0, 0.0, 1.0),
    "yellow": (1.0, 1.0, 0.0),
    "cyan": (0.0, 1.0, 1.0),
    "magenta": (1.0, 0.0, 1.0),
    "purple": (0.5, 0.0, 0.5),
    "orange": (1.0, 0.5, 0.0),
}
STILL_WORDS = {"still", "static", "calm", "frozen", "motionless"}


def _words(prompt: str) -> list[str]:
    return [w.strip(".,;:!?\"'").lower() for w in prompt.split()]


def target_color(prompt: str) -> tuple[float, float, float]:
    """RGB in [0, 1] of the first colour word in the prompt."""
    for word in _words(prompt):
        if word in COLORS:
            return COLORS[word]
    raise ValueError(f"the color reward needs a colour word {sorted(COLORS)} in the prompt: {prompt!r}")


def chroma(rgb: torch.Tensor) -> torch.Tensor:
    """RGB minus its gray level: the hue direction, free of brightness. [..., 3]"""
    return rgb - rgb.mean(dim=-1, keepdim=True)


def color_reward(videos: torch.Tensor, prompts: list[str]) -> torch.Tensor:
    """Cosine between the chroma of the video's mean colour and the prompt colour's, in [-1, 1].

    Hue, not brightness: a random-weight VAE decodes to near-gray videos whose brightness
    barely moves, yet whose hue a policy can steer.
    """
    mean_rgb = videos.float().mean(dim=(1, 2, 3)) / 255.0  # [B, 3]
    target = torch.tensor([target_color(p) for p in prompts], dtype=torch.float32)
    return torch.nn.functional.cosine_similarity(chroma(mean_rgb), chroma(target), dim=1, eps=1e-6)


def motion_reward(videos: torch.Tensor, prompts: list[str]) -> torch.Tensor:
    """Mean |frame difference| in [0, 1]; negated for prompts that ask for a still scene."""
    frames = videos.float() / 255.0
    if frames.shape[1] < 2:
        return torch.zeros(frames.shape[0])
    motion = (frames[:, 1:] - frames[:, :-1]).abs().mean(dim=(1, 2, 3, 4))
    sign = torch.tensor([-1.0 if STILL_WORDS & set(_words(p)) else 1.0 for p in prompts])
    return sign * motion


register_reward(rule_reward("color", color_reward, check_prompt=target_color))
register_reward(rule_reward("motion", motion_reward))
