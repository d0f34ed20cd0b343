import math

import numpy as np
import pytest
import torch
from diffusers import FlowMatchEulerDiscreteScheduler

from fastvideo_grpo.sampling.sde import dance_mean_std, flow_grpo_mean_std, gaussian_log_prob, ode_step, sde_step, sigma_schedule


def test_sigma_schedule_time_shift():
    shift, n = 5.0, 16
    sigmas = sigma_schedule(n, shift).numpy()
    for k in range(n + 1):
        s = 1 - k / n
        assert sigmas[k] == pytest.approx(shift * s / (1 + (shift - 1) * s), abs=1e-12)
    assert sigmas[0] == 1.0 and sigmas[-1] == 0.0
    assert np.all(np.diff(sigmas) < 0)


def test_dance_mean_std_matches_reverse_sde_euler_step():
    # Paper: dz = (u - 1/2 eta^2 grad log p(z)) dt + eta dw, grad log p = -(z - alpha x)/sigma^2,
    # alpha = 1 - sigma, x the predicted clean sample; stepped by Euler with dt = sigma' - sigma.
    rng = np.random.default_rng(0)
    z, u = rng.normal(size=(2, 3, 4)), rng.normal(size=(2, 3, 4))
    sigma, sigma_next, eta = 0.7, 0.55, 0.3
    x = z - sigma * u
    grad_log_p = -(z - (1 - sigma) * x) / sigma**2
    dt = sigma_next - sigma
    expected_mean = z + (u - 0.5 * eta**2 * grad_log_p) * dt
    expected_std = eta * math.sqrt(-dt)
    mean, std = dance_mean_std(torch.tensor(u), torch.tensor(z), sigma, sigma_next, eta)
    np.testing.assert_allclose(mean.numpy(), expected_mean, rtol=1e-12)
    assert std.item() == pytest.approx(expected_std, rel=1e-6)


def test_flow_grpo_mean_std_matches_marginal_preserving_sde():
    # dx = [v + s_t^2/(2t) (x + (1-t) v)] dt + s_t dw with s_t = a sqrt(t / (1 - t)).
    rng = np.random.default_rng(1)
    x, v = rng.normal(size=(2, 5)), rng.normal(size=(2, 5))
    a = 0.7
    for sigma, sigma_next, sigma_max, first in [(0.6, 0.45, 0.9, False), (1.0, 0.9, 0.9, True)]:
        t_eff = sigma_max if first else sigma
        s_t = a * math.sqrt(sigma / (1 - t_eff))
        dt = sigma_next - sigma
        expected_mean = x + (v + s_t**2 / (2 * sigma) * (x + (1 - sigma) * v)) * dt
        mean, std = flow_grpo_mean_std(torch.tensor(v), torch.tensor(x), sigma, sigma_next, a, sigma_max, first)
        np.testing.assert_allclose(mean.numpy(), expected_mean, rtol=1e-12)
        assert std.item() == pytest.approx(s_t * math.sqrt(-dt), rel=1e-6)


@pytest.mark.parametrize("shift", [0.3, 0.45, 1.0, 3.0])
def test_flow_grpo_first_step_std_is_finite_for_any_shift(shift):
    # time_shift rounds the first sigma to 0.9999999999999991 for shift < 0.5; the first
    # step must still use sigma_max = sigmas[1] in the ratio, not 1 - sigma ~ 1e-16.
    sigmas = sigma_schedule(8, shift)
    a = 0.7
    x, v = torch.randn(1, 4, dtype=torch.float64), torch.randn(1, 4, dtype=torch.float64)
    step = sde_step(v, x, sigmas, 0, a, "flow_grpo", noise=torch.zeros_like(x))
    s0, s1 = float(sigmas[0]), float(sigmas[1])
    expected_std = a * math.sqrt(s0 / (1 - s1)) * math.sqrt(s0 - s1)
    assert step.std.item() == pytest.approx(expected_std, rel=1e-6)
    assert step.std.item() < 10


def test_step_pred_original_is_the_clean_prediction():
    sigmas = sigma_schedule(6, 3.0)
    x, v = torch.randn(2, 3, 4), torch.randn(2, 3, 4)
    for k in (0, 5):
        step = sde_step(v, x, sigmas, k, 0.3, "dance", noise=torch.randn_like(x))
        # x_k = (1 - sigma) x0 + sigma * eps with v = eps - x0  =>  x0 = x_k - sigma * v
        torch.testing.assert_close(step.pred_original, x - float(sigmas[k]) * v)
    # At the last step sigma_N = 0: the ODE lands on x0_hat, the SDE does not.
    last = sde_step(v, x, sigmas, 5, 0.3, "dance", noise=torch.randn_like(x))
    torch.testing.assert_close(ode_step(v, x, sigmas, 5), last.pred_original)
    assert not torch.allclose(last.prev_sample, last.pred_original)


def test_log_prob_is_mean_normal_log_density():
    x, mean = torch.randn(3, 2, 4, 4), torch.randn(3, 2, 4, 4)
    std = torch.tensor(0.37)
    expected = torch.distributions.Normal(mean.double(), std.double()).log_prob(x.double()).mean(dim=(1, 2, 3))
    torch.testing.assert_close(gaussian_log_prob(x, mean, std), expected.float(), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("sde_type", ["dance", "flow_grpo", "cps"])
def test_sde_step_noise_and_replay(sde_type):
    sigmas = sigma_schedule(8, 3.0)
    x, v, noise = torch.randn(2, 4, 3), torch.randn(2, 4, 3), torch.randn(2, 4, 3)
    out = sde_step(v, x, sigmas, 2, 0.5, sde_type, noise=noise)
    torch.testing.assert_close(out.prev_sample, out.mean + out.std * noise)
    replay = sde_step(v, x, sigmas, 2, 0.5, sde_type, prev_sample=out.prev_sample)
    assert torch.equal(replay.log_prob, out.log_prob)


@pytest.mark.parametrize("sde_type", ["dance", "flow_grpo", "cps"])
def test_empirical_moments_match_claimed_mean_and_std(sde_type):
    generator = torch.Generator().manual_seed(0)
    sigmas = sigma_schedule(10, 3.0)
    x, v = torch.randn(1, 8), torch.randn(1, 8)
    n = 2000
    noise = torch.randn(n, 8, generator=generator, dtype=torch.float64)
    samples = sde_step(v.double().expand(n, 8), x.double().expand(n, 8), sigmas, 3, 0.4, sde_type,
                       noise=noise).prev_sample
    claimed = sde_step(v.double(), x.double(), sigmas, 3, 0.4, sde_type, noise=torch.zeros(1, 8, dtype=torch.float64))
    std = claimed.std.item()
    # Standard errors: std/sqrt(n) for the mean, std/sqrt(2n) for the std; allow 4 of them.
    assert (samples.mean(0) - claimed.mean[0]).abs().max().item() < 4 * std / math.sqrt(n)
    assert (samples.std(0) - std).abs().max().item() < 4 * std / math.sqrt(2 * n)


@pytest.mark.parametrize("k, eta", [(0, 0.3), (4, 0.7), (6, 1.0)])
def test_cps_step_matches_paper_formulas(k, eta):
    # CPS (arXiv 2509.05952; FlowCPS / Flow-GRPO sde_type="cps"): with x0 = x - t v and
    # x1 = x + (1 - t) v, x_next = (1 - t') x0 + sqrt(t'^2 - s^2) x1 + s z, s = t' sin(eta pi / 2).
    rng = np.random.default_rng(2)
    x, v, z = rng.normal(size=(3, 2, 3, 4))
    sigmas = sigma_schedule(8, 3.0)
    t, t_next = float(sigmas[k]), float(sigmas[k + 1])
    s = t_next * math.sin(eta * math.pi / 2)
    expected_mean = (1 - t_next) * (x - t * v) + math.sqrt(t_next**2 - s**2) * (x + (1 - t) * v)
    expected_sample = expected_mean + s * z
    expected_log_prob = (-((expected_sample - expected_mean) ** 2) / (2 * s**2) - math.log(s)
                         - 0.5 * math.log(2 * math.pi)).mean(axis=(1, 2))
    step = sde_step(torch.tensor(v), torch.tensor(x), sigmas, k, eta, "cps", noise=torch.tensor(z))
    np.testing.assert_allclose(step.mean.numpy(), expected_mean, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(step.prev_sample.numpy(), expected_sample, rtol=1e-6, atol=1e-6)
    assert step.std.item() == pytest.approx(s, rel=1e-6)
    np.testing.assert_allclose(step.log_prob.numpy(), expected_log_prob, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("sde_type", ["dance", "flow_grpo", "cps"])
def test_eta_zero_is_the_euler_ode_step(sde_type):
    # std = 0 at eta = 0 for every type, so the log-prob is 0/0; only the sample is checked.
    sigmas = sigma_schedule(6, 3.0)
    x, v = torch.randn(2, 3, 4, dtype=torch.float64), torch.randn(2, 3, 4, dtype=torch.float64)
    for k in range(6):
        step = sde_step(v, x, sigmas, k, 0.0, sde_type, noise=torch.randn_like(x))
        assert step.std.item() == 0
        torch.testing.assert_close(step.prev_sample, ode_step(v, x, sigmas, k), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("k, eta", [(1, 0.5), (5, 0.9), (6, 1.0)])
def test_cps_preserves_the_coefficients_of_data_and_noise(k, eta):
    # x_t = (1 - t) x0 + t eps and the exact velocity eps - x0: x_next must be distributed as
    # (1 - t') x0 + t' * (unit Gaussian), i.e. mean (1 - t') x0 and noise variance t'^2.
    generator = torch.Generator().manual_seed(3)
    sigmas = sigma_schedule(8, 3.0)
    t, t_next = float(sigmas[k]), float(sigmas[k + 1])
    n, d = 20000, 4
    x0 = torch.randn(1, d, generator=generator, dtype=torch.float64).expand(n, d)
    eps = torch.randn(n, d, generator=generator, dtype=torch.float64)
    noise = torch.randn(n, d, generator=generator, dtype=torch.float64)
    step = sde_step(eps - x0, (1 - t) * x0 + t * eps, sigmas, k, eta, "cps", noise=noise)
    # Analytically: the deterministic part is (1 - t') x0 + c eps with c^2 + std^2 = t'^2.
    deterministic_noise = step.mean - (1 - t_next) * x0
    c = ((deterministic_noise * eps).sum() / (eps * eps).sum()).item()
    torch.testing.assert_close(deterministic_noise, c * eps, rtol=0, atol=1e-12)
    assert c**2 + step.std.item() ** 2 == pytest.approx(t_next**2, rel=1e-6)
    # Empirically over the draws of eps and noise; standard errors t'/sqrt(n) and t'^2 sqrt(2/n).
    samples = step.prev_sample
    assert (samples.mean(0) - (1 - t_next) * x0[0]).abs().max().item() < 4 * t_next / math.sqrt(n)
    assert (samples.var(0) - t_next**2).abs().max().item() < 4 * t_next**2 * math.sqrt(2 / n)


def test_cps_last_step_lands_on_the_clean_prediction_with_finite_log_prob():
    # sigma_N = 0: std = 0 and x_N = x0_hat; the log-prob is set to 0 (the step is never trained).
    sigmas = sigma_schedule(6, 3.0)
    x, v = torch.randn(2, 3, 4), torch.randn(2, 3, 4)
    out = sde_step(v, x, sigmas, 5, 0.7, "cps", noise=torch.randn_like(x))
    assert out.std.item() == 0
    torch.testing.assert_close(out.prev_sample, x - float(sigmas[5]) * v)
    torch.testing.assert_close(out.prev_sample, out.pred_original)
    replay = sde_step(v, x, sigmas, 5, 0.7, "cps", prev_sample=out.prev_sample)
    assert torch.equal(out.log_prob, torch.zeros(2)) and torch.equal(replay.log_prob, out.log_prob)


@pytest.mark.parametrize("eta", [-0.1, 1.5])
def test_cps_rejects_eta_outside_unit_interval(eta):
    x = torch.randn(1, 4)
    with pytest.raises(ValueError, match="sampling.eta"):
        sde_step(x, x, sigma_schedule(4, 3.0), 1, eta, "cps", noise=torch.randn_like(x))


def test_ode_step_matches_diffusers_flow_match_euler():
    torch.manual_seed(0)
    n, shift = 12, 5.0
    sigmas = sigma_schedule(n, shift)
    scheduler = FlowMatchEulerDiscreteScheduler(shift=1.0)
    scheduler.set_timesteps(sigmas=sigmas[:-1].float().tolist())
    weight = torch.randn(6, 6) * 0.3

    def model(x, sigma):
        return torch.tanh(x @ weight) + sigma

    ours = theirs = torch.randn(2, 6)
    for k, t in enumerate(scheduler.timesteps):
        ours = ode_step(model(ours, float(sigmas[k])), ours, sigmas, k)
        theirs = scheduler.step(model(theirs, float(t) / 1000), t, theirs, return_dict=False)[0]
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)
