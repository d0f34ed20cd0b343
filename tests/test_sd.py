"""Stable Diffusion: DDIM timesteps, step and log-prob against diffusers' DDIMScheduler and an
independent computation. Training, export, LoRA, FSDP and the full path: test_families.py."""

import dataclasses
import math

import numpy as np
import pytest
import torch

from conftest import ROOT
from fastvideo_grpo.config import load_config
from fastvideo_grpo.models.stable_diffusion.tiny import sd_scheduler
from fastvideo_grpo.sampling.sde import ddim_step, ddim_timesteps, scaled_linear_alphas_cumprod
from helpers import tiny_conditioning, tiny_policy

TINY_SD = ROOT / "assets/configs/tiny_sd_t2i.yaml"


@pytest.fixture
def sd_cfg(tmp_path):
    return load_config(TINY_SD, [f"train.output_dir={tmp_path / 'run'}", "train.progress_bar=false",
                                 f"data.prompts_file={ROOT / 'assets/prompts/tiny.txt'}"])


def test_ddim_timesteps_are_diffusers_leading_spacing():
    scheduler = sd_scheduler()
    scheduler.set_timesteps(50)
    ours = ddim_timesteps(50)
    assert ours[:-1].long().tolist() == scheduler.timesteps.tolist()
    assert ours[-1] == 1 - 20  # the step from t = 1 goes to the final alpha_bar
    torch.testing.assert_close(scaled_linear_alphas_cumprod().float(), scheduler.alphas_cumprod)


def test_ddim_log_prob_matches_an_independent_computation():
    # DDIM (Song et al. eq. 12): x_prev = sqrt(a_prev) x0 + sqrt(1 - a_prev - s^2) eps + s z with
    # s = eta sqrt((1 - a_prev) / (1 - a)) sqrt(1 - a / a_prev); the transition is N(mean, s^2).
    betas = np.linspace(0.00085**0.5, 0.012**0.5, 1000) ** 2
    alpha_bar = np.cumprod(1 - betas)
    rng = np.random.default_rng(0)
    x, eps, z = rng.normal(size=(3, 2, 4, 3, 3))
    timesteps = ddim_timesteps(10)
    eta = 0.8
    for k, final in [(3, False), (9, True)]:
        t = int(timesteps[k])
        a = alpha_bar[t]
        a_prev = alpha_bar[0] if final else alpha_bar[t - 100]
        s = eta * math.sqrt((1 - a_prev) / (1 - a)) * math.sqrt(1 - a / a_prev)
        x0 = (x - math.sqrt(1 - a) * eps) / math.sqrt(a)
        mean = math.sqrt(a_prev) * x0 + math.sqrt(1 - a_prev - s**2) * eps
        x_prev = mean + s * z
        log_density = -((x_prev - mean) ** 2) / (2 * s**2) - math.log(s) - 0.5 * math.log(2 * math.pi)
        out = ddim_step(torch.tensor(eps), torch.tensor(x), timesteps, k, eta, scaled_linear_alphas_cumprod(),
                        float(alpha_bar[0]), noise=torch.tensor(z))
        np.testing.assert_allclose(out.prev_sample.numpy(), x_prev, rtol=1e-6, atol=1e-7)
        np.testing.assert_allclose(out.log_prob.numpy(), log_density.mean(axis=(1, 2, 3)), rtol=1e-5)
        replay = ddim_step(torch.tensor(eps), torch.tensor(x), timesteps, k, eta, scaled_linear_alphas_cumprod(),
                           float(alpha_bar[0]), prev_sample=out.prev_sample)
        assert torch.equal(replay.log_prob, out.log_prob)


@pytest.mark.parametrize("eta", [0.0, 1.0])
def test_ddim_sampling_equals_diffusers_ddim_scheduler(sd_cfg, eta):
    """50 steps of the policy's schedule/step against DDIMScheduler.step on the same UNet
    (eta = 0: deterministic DDIM; eta = 1: the same variance noise)."""
    sd_cfg.model.cfg_scale = 1.0
    policy = tiny_policy(sd_cfg)
    cond = tiny_conditioning(sd_cfg, ["a red ball", "a blue sky"], 1)
    scheduler = sd_scheduler()
    scheduler.set_timesteps(50)
    sampler = policy.sampler(dataclasses.replace(sd_cfg.sampling, num_steps=50, eta=eta))
    schedule = sampler.levels
    generator = torch.Generator().manual_seed(0)
    ours = theirs = torch.randn(2, *policy.latent_shape(1, 64, 64), generator=generator)
    with torch.no_grad():
        for k, t in enumerate(scheduler.timesteps):
            noise = torch.randn(ours.shape, generator=generator)
            ours = sampler.sde_step(policy.predict(ours, float(schedule[k]), cond), ours, schedule, k,
                                    noise=noise).prev_sample
            eps = policy.predict(theirs, float(t), cond)
            theirs = scheduler.step(eps, t, theirs, eta=eta, variance_noise=noise, return_dict=False)[0]
    torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-4)
