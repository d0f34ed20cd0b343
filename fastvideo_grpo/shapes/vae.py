"""The shapes model's VAE: diffusers' AutoencoderKLHunyuanVideo at width 8, with weights set
by hand instead of trained, so that it is a fixed pixel-space codec:

    encode: a video minus the background colour, averaged over 2x2-pixel blocks and over
            the causal 4-frame groups (frame 0 alone, frames 1-4, 5-8, ...) -> [3, 1 + (T-1)/4, H/2, W/2]
    decode: the latent repeated over its frames, upsampled 2x bilinearly, plus the background

4x4-pixel blocks would quarter the transformer's tokens, but blur the objects past what
the detector can read (shape right on 49% of decoded ground-truth videos, against 99% at 2x2).

Training the VAE was the alternative; on 2 CPU cores the 3D convolutions' backward pass costs
seconds per small batch, which would leave nothing of the pretraining budget for the
transformer. Every layer keeps its role: the resnets are identities (their second
convolution is zero), the strided causal convolutions average, the upsamplers' convolutions
interpolate. The one nonlinear step, GroupNorm + SiLU before each output convolution, is made
exact up to ~1e-4 by carrying each signal channel with its negation and a pair of constant
channels +-K: every position's channel sum is then 0, so the group mean is 0 and the group
std is ~K/2 whatever the video, and the offset B puts SiLU in its linear range.

`pool_latents` computes the encoder's result directly (tests check they agree), which is
how pretraining makes its latents.
"""

from __future__ import annotations

import torch
from diffusers import AutoencoderKLHunyuanVideo

from fastvideo_grpo.shapes.world import BACKGROUND

LATENT_CHANNELS = 3
SPATIAL_RATIO = 2
TEMPORAL_RATIO = 4
# Channels inside the VAE: u (the 3 signal channels), -u, +K, -K.
WIDTH = 8
K = 100.0
B = 20.0
# log-variance of the posterior: its samples are its mean to ~1e-7.
LOGVAR = -30.0


def background() -> torch.Tensor:
    """The background colour in the VAE's [-1, 1] pixel scale. [3]"""
    return torch.tensor(BACKGROUND, dtype=torch.float32) / 127.5 - 1.0


def _center(conv: torch.nn.Conv3d, out_channel: int, in_channel: int, weight: float) -> None:
    """A tap on the current frame and pixel of a causal 3x3x3 (or 1x1x1) convolution."""
    kt, kh, kw = conv.weight.shape[2:]
    conv.weight.data[out_channel, in_channel, kt - 1, kh // 2, kw // 2] = weight


def _signal_in(conv: torch.nn.Conv3d, scale: float, offset: torch.Tensor) -> None:
    """From 3 channels x to [u, -u, K, -K], u = scale * x + offset."""
    conv.weight.data.zero_()
    for c in range(3):
        _center(conv, c, c, scale)
        _center(conv, 3 + c, c, -scale)
    conv.bias.data = torch.cat([offset, -offset, torch.tensor([K, -K])])


def _signal_out(norm: torch.nn.GroupNorm, conv: torch.nn.Conv3d, scale: float, offset: torch.Tensor) -> None:
    """GroupNorm + SiLU that pass u through (see the module docstring), then y = scale * u + offset."""
    norm.weight.data.fill_(K / 2)
    norm.bias.data.fill_(B)
    conv.weight.data.zero_()
    for c in range(3):
        _center(conv, c, c, scale)
    conv.bias.data.zero_()
    conv.bias.data[:3] = offset - scale * B


def _identity_resnet(resnet) -> None:
    for conv in (resnet.conv1.conv, resnet.conv2.conv):
        conv.weight.data.zero_()
        conv.bias.data.zero_()


def _average(conv: torch.nn.Conv3d) -> None:
    """A strided causal convolution that averages frames (2j-1, 2j) where its time stride is 2,
    and pixel pairs (2i, 2i+1) where its spatial stride is 2."""
    conv.weight.data.zero_()
    conv.bias.data.zero_()
    st, sh, _ = conv.stride
    taps_t = slice(1, 3) if st == 2 else slice(2, 3)
    taps_hw = slice(1, 3) if sh == 2 else slice(1, 2)
    for c in range(WIDTH):
        conv.weight.data[c, c, taps_t, taps_hw, taps_hw] = 1.0
    conv.weight.data /= conv.weight.data[0, 0].sum()


def _interpolate(conv: torch.nn.Conv3d, spatial: bool) -> None:
    """After a nearest 2x upsampling of height and width (`spatial`), (1/4, 1/2, 1/4) along
    both: bilinear; else the identity."""
    taps = torch.tensor([0.25, 0.5, 0.25] if spatial else [0.0, 1.0, 0.0])
    conv.weight.data.zero_()
    conv.bias.data.zero_()
    for c in range(WIDTH):
        conv.weight.data[c, c, 2] = taps[:, None] * taps[None, :]


def shapes_vae(scaling_factor: float = 1.0) -> AutoencoderKLHunyuanVideo:
    vae = AutoencoderKLHunyuanVideo(
        latent_channels=LATENT_CHANNELS,
        block_out_channels=(WIDTH,) * 3,
        down_block_types=("HunyuanVideoDownBlock3D",) * 3,
        up_block_types=("HunyuanVideoUpBlock3D",) * 3,
        layers_per_block=0,
        norm_num_groups=1,
        mid_block_add_attention=False,
        spatial_compression_ratio=SPATIAL_RATIO,
        temporal_compression_ratio=TEMPORAL_RATIO,
        scaling_factor=scaling_factor,
    )
    bg = background()
    with torch.no_grad():
        enc, dec = vae.encoder, vae.decoder
        _signal_in(enc.conv_in.conv, 1.0, -bg)
        for block in enc.down_blocks:
            for resnet in block.resnets:
                _identity_resnet(resnet)
            for down in block.downsamplers or []:
                _average(down.conv.conv)
        for resnet in enc.mid_block.resnets:
            _identity_resnet(resnet)
        _signal_out(enc.conv_norm_out, enc.conv_out.conv, 1.0, torch.zeros(3))
        enc.conv_out.conv.bias.data[3:] = LOGVAR
        for quant in (vae.quant_conv, vae.post_quant_conv):
            quant.weight.data.copy_(torch.eye(quant.weight.shape[0]).view_as(quant.weight))
            quant.bias.data.zero_()
        _signal_in(dec.conv_in.conv, 1.0, torch.zeros(3))
        for resnet in dec.mid_block.resnets:
            _identity_resnet(resnet)
        for block in dec.up_blocks:
            for resnet in block.resnets:
                _identity_resnet(resnet)
            for up in block.upsamplers or []:
                _interpolate(up.conv.conv, up.upsample_factor[1] == 2)
        _signal_out(dec.conv_norm_out, dec.conv_out.conv, 1.0, bg)
    return vae.eval().requires_grad_(False)


def pool_latents(videos: torch.Tensor) -> torch.Tensor:
    """uint8 [B, T, H, W, 3] -> the encoder's latent [B, 3, 1 + (T-1)/4, H/2, W/2] (unscaled)."""
    x = videos.permute(0, 4, 1, 2, 3).float() / 127.5 - 1.0 - background().view(1, 3, 1, 1, 1)
    first, rest = x[:, :, :1], x[:, :, 1:]
    b, c, t, h, w = rest.shape
    rest = rest.reshape(b, c, t // TEMPORAL_RATIO, TEMPORAL_RATIO, h, w).mean(dim=3)
    x = torch.cat([first, rest], dim=2)
    return torch.nn.functional.avg_pool3d(x, (1, SPATIAL_RATIO, SPATIAL_RATIO))
