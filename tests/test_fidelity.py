"""Where the trainer follows the reference implementation's numbers: what is decoded and
scored, and the precision of the timestep the network sees."""

import dataclasses

import pytest
import torch

from conftest import ROOT
from fastvideo_grpo.config import load_config
from fastvideo_grpo.sampling.sde import ddim_step, scaled_linear_alphas_cumprod, sigma_schedule
from helpers import free_port, tiny_conditioning, tiny_policy, tiny_rollout

PROMPTS = ["a red ball", "a blue sky"]


@pytest.mark.parametrize("name", ["tiny_t2v", "tiny_flux_t2i", "tiny_hunyuan_t2i"])
def test_rectified_flow_rollout_scores_the_last_steps_clean_prediction(tmp_path, name):
    """Decoded and scored: x0_hat = x_{N-1} - sigma_{N-1} * v of the last step, recomputed
    here from the stored x_{N-1}; the stored trajectory keeps the noisy x_N for the log-probs."""
    cfg = load_config(ROOT / f"assets/configs/{name}.yaml", [f"train.output_dir={tmp_path}"])
    policy = tiny_policy(cfg)
    cond = tiny_conditioning(cfg, PROMPTS, cfg.sampling.group_size)
    ro = tiny_rollout(cfg, policy, cond, batch_size=cfg.sampling.rollout_batch_size)
    n = cfg.sampling.num_steps
    x_last = ro.latents[:, n - 1]
    with torch.no_grad():
        v = policy.predict(x_last, float(ro.schedule[n - 1]), cond)
    sigma = float(sigma_schedule(n, cfg.sampling.shift)[n - 1])
    torch.testing.assert_close(ro.scored_latents, x_last - sigma * v, rtol=1e-5, atol=1e-6)
    # x_N differs from it by the last step's noise, of std eta * sqrt(sigma_{N-1}).
    residual = (ro.final_latents - ro.scored_latents).std().item()
    assert residual == pytest.approx(cfg.sampling.eta * sigma**0.5, rel=0.25)


def test_ddim_rollout_scores_the_last_sample_as_the_sd_pipeline(tmp_path):
    """SD (DanceGRPO's pipeline_with_logprob, diffusers' StableDiffusionPipeline) decodes x_N,
    the DDIM step's sample into alpha_bar_0: the stored last latent."""
    cfg = load_config(ROOT / "assets/configs/tiny_sd_t2i.yaml", [f"train.output_dir={tmp_path}"])
    policy = tiny_policy(cfg)
    from fastvideo_grpo.data.embeddings import TinyRandomPrompts
    from fastvideo_grpo.models.tiny.hashing_text_encoder import TinyTextEncoder

    encoder = TinyTextEncoder(cfg.model.tiny_text_dim, cfg.model.tiny_pooled_dim, cfg.data.max_text_tokens)
    cond = TinyRandomPrompts(PROMPTS, encoder).conditioning([0, 1]).repeat_interleave(cfg.sampling.group_size)
    ro = tiny_rollout(cfg, policy, cond, batch_size=cfg.sampling.rollout_batch_size)
    assert torch.equal(ro.scored_latents, ro.final_latents)


def test_ddim_ode_step_is_the_eta_zero_mean():
    alphas = scaled_linear_alphas_cumprod()
    timesteps = torch.tensor([981.0, 961.0, -19.0])
    eps, x = torch.randn(2, 4, 8, 8), torch.randn(2, 4, 8, 8)
    policy_ode = tiny_sd_ode(eps, x, timesteps, alphas)
    for k in (0, 1):
        a_t = float(alphas[int(timesteps[k])])
        a_prev = float(alphas[int(timesteps[k + 1])]) if timesteps[k + 1] >= 0 else float(alphas[0])
        x0 = (x - (1 - a_t) ** 0.5 * eps) / a_t**0.5
        torch.testing.assert_close(policy_ode[k], a_prev**0.5 * x0 + (1 - a_prev) ** 0.5 * eps)
        stochastic = ddim_step(eps, x, timesteps, k, 0.0, alphas, float(alphas[0]), noise=torch.zeros_like(x))
        torch.testing.assert_close(policy_ode[k], stochastic.mean)


def tiny_sd_ode(eps, x, timesteps, alphas):
    from fastvideo_grpo.sampling.sde import ddim_ode_step

    return [ddim_ode_step(eps, x, timesteps, k, alphas, float(alphas[0])) for k in (0, 1)]


def test_ode_evaluation_computes_no_log_prob(tmp_path, monkeypatch):
    """Evaluation samples with the ODE step only: the SDE step (and its log-prob, NaN at
    eta = 0) is never called."""
    from fastvideo_grpo.sampling import rollout

    cfg = load_config(ROOT / "assets/configs/tiny_t2v.yaml", [f"train.output_dir={tmp_path}"])
    policy = tiny_policy(cfg)
    from fastvideo_grpo.sampling.samplers import RectifiedFlowSampler

    monkeypatch.setattr(RectifiedFlowSampler, "sde_step", lambda *a, **k: pytest.fail("the SDE step ran in evaluation"))
    cond = tiny_conditioning(cfg, PROMPTS[:1], 1)
    shape = policy.latent_shape(cfg.sampling.num_frames, cfg.sampling.height, cfg.sampling.width)
    initial = torch.randn(1, *shape)
    x = rollout.sample_ode(policy, cond, initial, policy.sampler(dataclasses.replace(cfg.sampling, num_steps=4)))
    sigmas = sigma_schedule(4, cfg.sampling.shift)
    expected = initial
    with torch.no_grad():
        for k in range(4):
            expected = expected + (float(sigmas[k + 1]) - float(sigmas[k])) * policy.predict(expected, float(sigmas[k]), cond)
    torch.testing.assert_close(x, expected)
    assert torch.isfinite(x).all()


def capture_timesteps(module: torch.nn.Module) -> list[torch.Tensor]:
    seen = []
    module.register_forward_pre_hook(lambda m, args: seen.append(args[0].detach().clone()))
    return seen


@pytest.mark.parametrize("sharded", [False, True])
def test_hunyuan_timestep_reaches_the_embedding_in_fp32(tmp_path, monkeypatch, sharded):
    """bf16 compute, unsharded (autocast) and under FSDP2 mixed precision: the timestep
    embedding sees fp32 sigma * 1000, as HunyuanVideoPipeline passes it (bf16 would make
    986.84 -> 988 and 750 -> 752)."""
    cfg = load_config(ROOT / "assets/configs/tiny_t2v.yaml", [f"train.output_dir={tmp_path}", "model.dtype=bf16"])
    policy = tiny_policy(cfg)
    seen = capture_timesteps(policy.transformer.time_text_embed)
    if sharded:
        from fastvideo_grpo.parallel import init_distributed, shutdown
        from fastvideo_grpo.parallel.fsdp import parallelize

        for key, value in {"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1", "MASTER_ADDR": "127.0.0.1",
                           "MASTER_PORT": str(free_port())}.items():
            monkeypatch.setenv(key, value)
        world = init_distributed("cpu")
        parallelize(policy, world, cfg)
    try:
        cond = tiny_conditioning(cfg, PROMPTS[:1], 1)
        shape = policy.latent_shape(cfg.sampling.num_frames, cfg.sampling.height, cfg.sampling.width)
        sigmas = sigma_schedule(16, 5.0)
        with torch.no_grad():
            for k in (1, 10):
                policy.predict(torch.randn(1, *shape), float(sigmas[k]), cond)
    finally:
        if sharded:
            shutdown()
    assert [t.dtype for t in seen] == [torch.float32, torch.float32]
    assert seen[0].item() == torch.tensor(float(sigmas[1]) * 1000, dtype=torch.float32).item()
    assert seen[0].item() == pytest.approx(986.842, abs=1e-3)
    assert seen[1].item() == 750.0
