"""Wan2.2 TI2V-5B (model.family wan_ti2v, and wan_ti2v_i2v for image-to-video from the same
folder): the adapter against diffusers' WanPipeline and WanImageToVideoPipeline with
expand_timesteps (per-token timesteps, the first frame's tokens at timestep 0 in I2V, the
Wan2.2 VAE), the tiny folder, offline text and first-frame latents, the released size and its
FLOP count, GRPO and NFT training, resume, export, and sequence parallelism splitting the
per-token timesteps with the tokens. What every family passes: test_families.py."""

from __future__ import annotations

import dataclasses
import functools
import json
import sys

import numpy as np
import pytest
import torch
from diffusers import (AutoencoderKLWan, FlowMatchEulerDiscreteScheduler, WanImageToVideoPipeline, WanPipeline,
                       WanTransformer3DModel)

from conftest import ROOT
from fastvideo_grpo.config import ConfigError, load_config
from fastvideo_grpo.models import FAMILIES, TextConditioning, build_policy
from fastvideo_grpo.models.flop_count import counter
from fastvideo_grpo.models.wan_ti2v.published import WAN22_TI2V_5B, WAN22_VAE
from fastvideo_grpo.models.wan_ti2v.tiny import TEXT_DIM, tiny_model_config, write_folder
from fastvideo_grpo.sampling.rollout import rollout
from helpers import smooth_image

sys.path.insert(0, str(ROOT / "data_preprocess"))
TINY = ROOT / "assets/configs/tiny_wan_ti2v.yaml"
PROMPTS = ROOT / "assets/prompts/tiny.txt"
CPU = torch.device("cpu")
SIZE = dict(height=64, width=64, num_frames=5)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return write_folder(tmp_path_factory.mktemp("wan_ti2v") / "model")


def folder_policy(folder, family="wan_ti2v", **overrides):
    model_cfg = dataclasses.replace(tiny_model_config(), family=family, size="full", path=str(folder), dtype="fp32",
                                    **overrides)
    return build_policy(model_cfg, CPU, TEXT_DIM, 0)


def pipeline_conditioning(pipe, prompt: str, tokens: int) -> TextConditioning:
    """encode_prompt's embeddings of `prompt` and of the empty negative prompt."""
    with torch.no_grad():
        embeds, negative = pipe.encode_prompt(prompt, negative_prompt="", max_sequence_length=tokens, device="cpu")

    def conditioning(e: torch.Tensor) -> TextConditioning:
        return TextConditioning(e, (e.abs().sum(-1) > 0).long(), torch.zeros(1, 0))

    cond = conditioning(embeds)
    cond.negative = conditioning(negative)
    return cond


def euler_pipeline(pipeline_cls, folder, policy, shift: float, num_steps: int):
    """The pipeline with the policy's network and FlowMatchEulerDiscreteScheduler on our
    (unshifted) levels linspace(1, 0), which the scheduler shifts as our schedule does."""
    pipe = pipeline_cls.from_pretrained(folder, transformer=policy.transformer,
                                        scheduler=FlowMatchEulerDiscreteScheduler(shift=shift))
    pipe.set_progress_bar_config(disable=True)
    levels = torch.linspace(1.0, 0.0, num_steps + 1, dtype=torch.float64)[:-1].tolist()
    pipe.scheduler.set_timesteps = functools.partial(pipe.scheduler.set_timesteps, sigmas=levels)
    return pipe


def euler_sampling(num_steps: int, shift: float):
    return dataclasses.replace(load_config(TINY).sampling, num_steps=num_steps, shift=shift, eta=0.0,
                               sde_type="dance", ode_solver="euler", group_size=1, rollout_batch_size=1)


@pytest.mark.parametrize("guidance", [1.0, 5.0])
def test_ode_rollout_equals_wan_pipeline_text_to_video(folder, guidance):
    """eta = 0 with the Euler solver == WanPipeline's own latents with expand_timesteps: every
    token at timestep sigma * 1000, guided against the negative prompt."""
    num_steps, shift = 4, 5.0
    policy = folder_policy(folder, cfg_scale=guidance)
    pipe = euler_pipeline(WanPipeline, folder, policy, shift, num_steps)
    assert pipe.config.expand_timesteps
    cond = pipeline_conditioning(pipe, "a red ball on the floor", 16)
    shape = policy.latent_shape(5, 64, 64)
    assert shape == (48, 2, 4, 4)
    ours = rollout(policy, cond, euler_sampling(num_steps, shift), shape, (0, 0), CPU)
    theirs = pipe(prompt_embeds=cond.prompt_embeds, negative_prompt_embeds=cond.negative.prompt_embeds,
                  latents=ours.latents[:, 0], num_inference_steps=num_steps, guidance_scale=guidance,
                  output_type="latent", **SIZE).frames
    torch.testing.assert_close(pipe.scheduler.sigmas[:-1].double(), ours.schedule[:-1], rtol=0, atol=1e-7)
    torch.testing.assert_close(ours.final_latents, theirs, rtol=1e-5, atol=1e-5)
    assert not torch.equal(ours.latents[:, 0], ours.final_latents)


def pipeline_image_latents(pipe, image) -> torch.Tensor:
    """WanImageToVideoPipeline's first-frame condition of `image`: its VAE latent, normalised. [1, 48, 1, h, w]"""
    pixels = pipe.video_processor.preprocess(image, height=64, width=64).to(torch.float32)
    with torch.no_grad():
        _, condition, mask = pipe.prepare_latents(pixels, 1, 48, 64, 64, 5, torch.float32, CPU, None, None)
    assert mask[0, 0, :, 0, 0].tolist() == [0.0, 1.0]
    return condition


@pytest.mark.parametrize("guidance", [1.0, 5.0])
def test_ode_rollout_equals_wan_image_to_video_pipeline(folder, guidance):
    """model.family wan_ti2v_i2v, eta = 0 with the Euler solver == WanImageToVideoPipeline's
    latents from the same folder: the first latent frame is the image's, its tokens at
    timestep 0, the other frames sampled."""
    import PIL.Image

    num_steps, shift = 4, 5.0
    policy = folder_policy(folder, "wan_ti2v_i2v", cfg_scale=guidance)
    pipe = euler_pipeline(WanImageToVideoPipeline, folder, policy, shift, num_steps)
    assert pipe.config.expand_timesteps
    image = PIL.Image.fromarray(smooth_image(np.random.default_rng(1), 64))
    cond = pipeline_conditioning(pipe, "a red ball on the floor", 16)
    cond.image_latents = pipeline_image_latents(pipe, image)
    ours = rollout(policy, cond, euler_sampling(num_steps, shift), policy.latent_shape(5, 64, 64), (0, 0), CPU)
    theirs = pipe(image=image, prompt_embeds=cond.prompt_embeds, negative_prompt_embeds=cond.negative.prompt_embeds,
                  latents=ours.latents[:, 0], num_inference_steps=num_steps, guidance_scale=guidance,
                  output_type="latent", **SIZE).frames
    torch.testing.assert_close(ours.final_latents, theirs, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(ours.final_latents[:, :, :1], cond.image_latents, rtol=0, atol=1e-5)
