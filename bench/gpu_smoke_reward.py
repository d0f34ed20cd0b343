"""The GPU smoke test's reward (a reward.plugins file): a seeded random convolution over
the video's frames, on the GPU when there is one, so that the reward process holds a CUDA
context and memory beside the trainer's, as a reward model does."""

from __future__ import annotations

import torch

from fastvideo_grpo.rewards import register_reward, rule_reward

_net: torch.nn.Module | None = None


def _network() -> torch.nn.Module:
    global _net
    if _net is None:
        torch.manual_seed(0)
        device = "cuda" if torch.cuda.is_available() else "cpu"
        _net = torch.nn.Sequential(torch.nn.Conv2d(3, 64, 3, stride=2), torch.nn.GELU(),
                                   torch.nn.Conv2d(64, 1, 3, stride=2)).to(device).eval()
    return _net


@torch.no_grad()
def smoke_conv_reward(videos: torch.Tensor, prompts: list[str]) -> torch.Tensor:
    """uint8 [B, T, H, W, 3] -> [B]: the mean response of the network over every frame."""
    net = _network()
    device = next(net.parameters()).device
    frames = videos.to(device).flatten(0, 1).permute(0, 3, 1, 2).float() / 127.5 - 1  # [B*T, 3, H, W]
    return net(frames).view(videos.shape[0], -1).mean(dim=1).cpu()


register_reward(rule_reward("smoke_conv", smoke_conv_reward))
