"""Wan2.2 T2V-A14B: two experts (transformer for high noise, transformer_2 for low) switched at
the folder's boundary_ratio, as diffusers' WanPipeline does; model.train_experts; the tiny
folder and config; training, resume, export and sequence parallelism; the released A14B
architecture and its plan."""

from __future__ import annotations

import dataclasses
import functools
import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from diffusers import FlowMatchEulerDiscreteScheduler, WanPipeline, WanTransformer3DModel

from conftest import ROOT
from fastvideo_grpo.config import ConfigError, load_config
from fastvideo_grpo.models import build_policy
from fastvideo_grpo.models.wan.experts import WanExperts
from fastvideo_grpo.models.wan.tiny import BOUNDARY_RATIO, TEXT_DIM, tiny_model_config, write_moe_folder
from fastvideo_grpo.sampling.rollout import rollout
from test_wan import pipeline_conditioning

TINY = ROOT / "assets/configs/tiny_wan_moe_t2v.yaml"
PROMPTS = ROOT / "assets/prompts/tiny.txt"
CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def moe_folder(tmp_path_factory):
    return write_moe_folder(tmp_path_factory.mktemp("wan_moe") / "model")


def folder_policy(folder, **overrides):
    model_cfg = dataclasses.replace(tiny_model_config(), size="full", path=str(folder), dtype="fp32", **overrides)
    return build_policy(model_cfg, CPU, TEXT_DIM, 0)


def test_the_tiny_writer_writes_both_experts_and_the_boundary(moe_folder):
    index = json.loads((moe_folder / "model_index.json").read_text())
    assert index["boundary_ratio"] == BOUNDARY_RATIO == 0.875
    assert index["transformer"] == index["transformer_2"] == ["diffusers", "WanTransformer3DModel"]
    pipe = WanPipeline.from_pretrained(moe_folder)
    high, low = pipe.transformer.state_dict(), pipe.transformer_2.state_dict()
    assert high.keys() == low.keys() and any(not torch.equal(w, low[n]) for n, w in high.items())
    # The seeded in-process tiny model of model.tiny_boundary_ratio is the folder's.
    policy = build_policy(tiny_model_config(boundary_ratio=BOUNDARY_RATIO), CPU, TEXT_DIM, 0)
    assert isinstance(policy.transformer, WanExperts)
    for name, expert in (("transformer", pipe.transformer), ("transformer_2", pipe.transformer_2)):
        weights = getattr(policy.transformer, name).state_dict()
        assert all(torch.equal(w, weights[n]) for n, w in expert.state_dict().items())


def test_the_tiny_cli_writes_the_moe_folder(tmp_path):
    subprocess.run([sys.executable, "-m", "fastvideo_grpo.models.tiny", "wan_moe", str(tmp_path / "moe")], check=True,
                   cwd=ROOT, capture_output=True)
    assert json.loads((tmp_path / "moe/model_index.json").read_text())["boundary_ratio"] == 0.875
    assert (tmp_path / "moe/transformer_2/config.json").is_file()


@pytest.mark.parametrize("guidance, guidance_2", [(1.0, 1.0), (5.0, 3.0)])
def test_ode_rollout_equals_wan_pipeline_with_both_experts(moe_folder, guidance, guidance_2):
    """eta = 0 with the Euler solver == WanPipeline's latents: timesteps 1000, 900 (>= 875, the
    high-noise expert with guidance_scale), then 750 and 500 (transformer_2 with
    guidance_scale_2)."""
    num_steps, shift = 4, 3.0
    policy = folder_policy(moe_folder, cfg_scale=guidance, cfg_scale_2=guidance_2)
    experts = policy.transformer
    pipe = WanPipeline.from_pretrained(moe_folder, transformer=experts.transformer,
                                       transformer_2=experts.transformer_2,
                                       scheduler=FlowMatchEulerDiscreteScheduler(shift=shift))
    pipe.set_progress_bar_config(disable=True)
    cond = pipeline_conditioning(pipe, "a red ball on the floor", 16)
    s = dataclasses.replace(load_config(TINY).sampling, num_steps=num_steps, shift=shift, eta=0.0, sde_type="dance",
                            ode_solver="euler", group_size=1, rollout_batch_size=1)
    ours = rollout(policy, cond, s, policy.latent_shape(5, 32, 32), (0, 0), CPU)
    assert [policy.high_noise(float(t)) for t in ours.schedule[:-1]] == [True, True, False, False]

    levels = torch.linspace(1.0, 0.0, num_steps + 1, dtype=torch.float64)[:-1].tolist()
    pipe.scheduler.set_timesteps = functools.partial(pipe.scheduler.set_timesteps, sigmas=levels)
    theirs = pipe(prompt_embeds=cond.prompt_embeds, negative_prompt_embeds=cond.negative.prompt_embeds,
                  latents=ours.latents[:, 0], num_inference_steps=num_steps, guidance_scale=guidance,
                  guidance_scale_2=guidance_2, height=32, width=32, num_frames=5, output_type="latent").frames
    torch.testing.assert_close(pipe.scheduler.timesteps, torch.tensor([1000.0, 900.0, 750.0, 500.0]))
    torch.testing.assert_close(ours.final_latents, theirs, rtol=1e-5, atol=1e-5)
    # One expert alone gives other latents: both took part.
    pipe.register_to_config(boundary_ratio=None)
    alone = pipe(prompt_embeds=cond.prompt_embeds, negative_prompt_embeds=cond.negative.prompt_embeds,
                 latents=ours.latents[:, 0], num_inference_steps=num_steps, guidance_scale=guidance, height=32,
                 width=32, num_frames=5, output_type="latent").frames
    assert (alone - theirs).abs().max() > 1e-3
