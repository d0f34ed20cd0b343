"""Where the samplers follow (or deliberately differ from) the reference implementations,
MixGRPO, Flow-GRPO(-Fast) and MixGRPO-Flash: the progressive window's cycle, CPS's
log-prob convention, the random window's range and the solver around the window. Each
number is checked against a computation written here from the reference's formulas."""

import dataclasses
import math

import pytest
import torch

from conftest import ROOT
from fastvideo_grpo.config import ConfigError, load_config
from fastvideo_grpo.models.base import RectifiedFlowSampling
from fastvideo_grpo.sampling.samplers import DDIMSampler
from fastvideo_grpo.sampling.sde import ddim_timesteps, scaled_linear_alphas_cumprod, sde_step, sigma_schedule
from fastvideo_grpo.sampling.seeding import Purpose, make_generator
from fastvideo_grpo.sampling.solvers import DPMSolverPP2M, Point
from fastvideo_grpo.sampling.step_plan import build_step_plan
from fastvideo_grpo.algorithms.grpo import plan_micro_batches
from fastvideo_grpo.algorithms.learner import build_optimizer
from helpers import run_update, tiny_conditioning, tiny_policy, tiny_rollout

TINY = ROOT / "assets/configs/tiny_t2v.yaml"


def sampling(num_steps, *overrides):
    return load_config(TINY, [f"sampling.num_steps={num_steps}", *overrides]).sampling


def mixgrpo_progressive_windows(num_steps, window, stride, every, iterations):
    """MixGRPO's progressive strategy with prog_overlap and roll_back, as a state machine:
    the window [cur, cur + w) is cut at the last trainable transition N-2 (MixGRPO's own cut,
    min(cur + w, N-2), leaves N-2 itself out, which its comment says is trainable), then cur
    moves by the stride every `every` iterations and rolls back to 0 past N-2."""
    last, cur, in_group, windows = num_steps - 2, 0, 0, []
    for _ in range(iterations):
        windows.append(tuple(range(cur, min(cur + window, last + 1))))
        in_group += 1
        if in_group >= every:
            in_group, cur = 0, cur + stride
        if cur > last:
            cur, in_group = 0, 0
    return windows


@pytest.mark.parametrize("num_steps,window,stride", [(16, 4, 4), (25, 4, 3), (16, 4, 1), (10, 3, 2), (8, 1, 1),
                                                     (50, 5, 5), (25, 6, 4), (20, 2, 2)])
@pytest.mark.parametrize("every", [1, 3])
def test_progressive_windows_cover_every_trainable_step(num_steps, window, stride, every):
    s = sampling(num_steps, f"sampling.sde_window_size={window}", f"sampling.sde_window_stride={stride}",
                 f"sampling.sde_window_every={every}")
    cycle = ((num_steps - 2) // stride + 1) * every
    plans = [build_step_plan(s, i) for i in range(3 * cycle)]
    windows = [p.sde_steps for p in plans]
    assert windows == mixgrpo_progressive_windows(num_steps, window, stride, every, 3 * cycle)
    assert all(p.trainable == p.sde_steps and p.visited[-1] == num_steps for p in plans)
    # Every trainable transition 0..N-2 is in some window of one cycle, and the cycle repeats.
    assert set().union(*windows[:cycle]) == set(range(num_steps - 1))
    assert windows[cycle:2 * cycle] == windows[:cycle]


def test_a_stride_longer_than_the_window_is_refused():
    with pytest.raises(ConfigError, match="sampling.sde_window_stride"):
        sampling(16, "sampling.sde_window_size=2", "sampling.sde_window_stride=3")


@pytest.mark.parametrize("k", [0, 3, 8])
@pytest.mark.parametrize("convention", ["gaussian", "flow_grpo"])
def test_cps_log_prob_conventions(k, convention):
    """Gaussian: log N(x'; mu, std^2); Flow-GRPO (sd3_sde_with_logprob, sde_type cps):
    -(x' - mu)^2; both averaged over elements. Their log-ratios differ by 2 std^2."""
    n, shift, eta = 10, 3.0, 0.8
    s = sampling(n, f"sampling.shift={shift}", f"sampling.eta={eta}", "sampling.sde_type=cps",
                 f"sampling.cps_log_prob={convention}")
    sampler = RectifiedFlowSampling().sampler(s)
    gen = torch.Generator().manual_seed(k)
    x, v, v_new, z = (torch.randn(2, 3, 4, 5, generator=gen, dtype=torch.float64) for _ in range(4))
    t = [shift * u / (1 + (shift - 1) * u) for u in (1 - k / n, 1 - (k + 1) / n)]
    std = t[1] * math.sin(eta * math.pi / 2)

    def mean_of(vel):
        return (1 - t[1]) * (x - t[0] * vel) + math.sqrt(t[1] ** 2 - std**2) * (x + (1 - t[0]) * vel)

    def expected(mu, sample):
        if convention == "flow_grpo":
            return (-(sample - mu) ** 2).mean(dim=(1, 2, 3))
        return (-(sample - mu) ** 2 / (2 * std**2) - math.log(std) - 0.5 * math.log(2 * math.pi)).mean(dim=(1, 2, 3))

    sample = mean_of(v) + std * z
    old = sampler.sde_step(v, x, sampler.levels, k, noise=z)
    new = sampler.sde_step(v_new, x, sampler.levels, k, prev_sample=old.prev_sample)
    torch.testing.assert_close(old.prev_sample, sample)
    torch.testing.assert_close(old.log_prob.double(), expected(mean_of(v), sample), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(new.log_prob.double(), expected(mean_of(v_new), sample), rtol=1e-5, atol=1e-5)
    gaussian = sde_step(v_new, x, sampler.levels, k, eta, "cps", prev_sample=sample).log_prob \
        - sde_step(v, x, sampler.levels, k, eta, "cps", prev_sample=sample).log_prob
    scale = 2 * std**2 if convention == "flow_grpo" else 1.0
    torch.testing.assert_close(new.log_prob - old.log_prob, scale * gaussian, rtol=1e-3, atol=1e-6)


@pytest.mark.parametrize("override", ["sampling.sde_type=dance", "grpo.ratio_norm=true", "grpo.step_reweight=true"])
def test_the_flow_grpo_cps_log_prob_is_refused_where_it_means_nothing(override):
    with pytest.raises(ConfigError, match=override.split("=")[0]):
        load_config(TINY, ["sampling.sde_type=cps", "sampling.eta=0.8", "sampling.cps_log_prob=flow_grpo", override])


def test_flow_grpo_cps_windowed_training_keeps_the_exact_ratio(tmp_path):
    cfg = load_config(TINY, [f"train.output_dir={tmp_path}", "sampling.group_size=4", "sampling.sde_window_size=2",
                             "policy_update.timestep_fraction=1.0", "sampling.sde_type=cps", "sampling.eta=0.8",
                             "sampling.cps_log_prob=flow_grpo", "train.gradient_accumulation_steps=1000"])
    policy = tiny_policy(cfg)
    cond = tiny_conditioning(cfg, ["a red ball", "a blue cube"], 4)
    ro = tiny_rollout(cfg, policy, cond, batch_size=4, plan=build_step_plan(cfg.sampling, 2))
    x, x_next = ro.latents[:, 2], ro.latents[:, 3]
    with torch.no_grad():
        mean = ro.sampler.sde_step(policy.predict(x, float(ro.schedule[2]), cond), x, ro.schedule, 2,
                                   prev_sample=x_next).mean
    torch.testing.assert_close(ro.log_probs[:, 2], -((x_next - mean) ** 2).mean(dim=(1, 2, 3, 4)))
    micro = plan_micro_batches(ro, torch.ones(8, dtype=torch.bool), cfg, (0, 0))
    optimizer, scheduler = build_optimizer(policy, cfg)
    stats = run_update(policy, optimizer, scheduler, ro, cond, torch.randn(8), micro, cfg)
    assert stats["ratio_dev_first_update"] == 0.0


@pytest.mark.parametrize("num_steps,window", [(10, 3), (16, 1), (25, 4)])
@pytest.mark.parametrize("name", ["full", "mixgrpo", "flow_grpo_fast"])
def test_random_window_start_range(num_steps, window, name):
    """full: [0, N-1-w]; MixGRPO (rng.integers(0, (N-2) - w + 1)): [0, N-2-w]; Flow-GRPO-Fast
    (randint(0, N//2 - w) with sde_window_range (0, N//2)): [0, N//2-w]."""
    s = sampling(num_steps, f"sampling.sde_window_size={window}", "sampling.sde_window_schedule=random",
                 f"sampling.window_start_range={name}")
    bound = {"full": num_steps - 1 - window, "mixgrpo": num_steps - 2 - window,
             "flow_grpo_fast": num_steps // 2 - window}[name]
    plans = [build_step_plan(s, i, make_generator(42, i, Purpose.STEP_PLAN)) for i in range(300)]
    assert {p.sde_steps[0] for p in plans} == set(range(bound + 1))
    assert all(len(p.sde_steps) == window for p in plans)


@pytest.mark.parametrize("overrides,key", [
    (["sampling.window_start_range=mixgrpo"], "sampling.window_start_range"),  # progressive: no range to draw from
    (["sampling.sde_window_schedule=random", "sampling.sde_window_size=6",
      "sampling.window_start_range=flow_grpo_fast"], "sampling.window_start_range"),  # 6 > 10 // 2
    (["sampling.post_window_spacing=even_t"], "sampling.post_window_spacing"),  # post_window_steps 0
    (["sampling.solver_history=keep"], "sampling.solver_history"),  # ode_solver euler
    (["sampling.prefix_solver=euler"], "sampling.prefix_solver"),
])
def test_reference_settings_that_cannot_apply_are_config_errors(overrides, key):
    with pytest.raises(ConfigError, match=key):
        load_config(TINY, ["sampling.num_steps=10", "sampling.sde_window_size=2", *overrides])


def windowed(tmp_path, *overrides):
    return load_config(TINY, [f"train.output_dir={tmp_path}", "sampling.group_size=2", "sampling.num_steps=10",
                              "sampling.sde_window_size=2", "sampling.sde_window_schedule=fixed",
                              "sampling.sde_window_start=3", "sampling.ode_solver=dpmpp_2m", *overrides])


def x0_hat(policy, cond, x, sigma):
    with torch.no_grad():
        return x - sigma * policy.predict(x, sigma, cond)


def log_snr(sigma):
    """lambda = log((1 - sigma) / sigma); -inf at pure noise."""
    return math.log((1 - sigma) / sigma) if sigma < 1 else -math.inf


def dpmpp(x, d, sigma, sigma_next):
    """DPM-Solver++ in data prediction: (s'/s) x - a' (exp(-h) - 1) D, h = lambda' - lambda."""
    h = log_snr(sigma_next) - log_snr(sigma)
    return (sigma_next / sigma) * x - (1 - sigma_next) * math.expm1(-h) * d


@pytest.mark.parametrize("history", ["reset", "keep"])
def test_solver_history_across_the_window(tmp_path, history):
    """Window 3..4; the first step after it (5 -> 6) is first-order from its own x0_hat
    ("reset"), or MixGRPO-Flash's second-order step with the window's last x0_hat ("keep"):
    D = x0 + (h / (2 h_prev)) (x0 - x0_prev), h_prev = lambda_5 - lambda_4."""
    cfg = windowed(tmp_path, f"sampling.solver_history={history}")
    policy = tiny_policy(cfg)
    cond = tiny_conditioning(cfg, ["a red ball"], 2)
    ro = tiny_rollout(cfg, policy, cond, batch_size=2, plan=build_step_plan(cfg.sampling, 0))
    sig = [float(v) for v in ro.schedule]
    lam = [log_snr(v) for v in sig[:7]]
    x4, x5 = ro.latents[:, 4], ro.latents[:, 5]
    d = x0_5 = x0_hat(policy, cond, x5, sig[5])
    if history == "keep":
        x0_4 = x0_hat(policy, cond, x4, sig[4])
        d = x0_5 + (lam[6] - lam[5]) / (2 * (lam[5] - lam[4])) * (x0_5 - x0_4)
    torch.testing.assert_close(ro.latents[:, 6], dpmpp(x5, d, sig[5], sig[6]), rtol=1e-5, atol=1e-5)


def test_dpmpp_record_makes_the_next_step_second_order():
    gen = torch.Generator().manual_seed(0)
    x, x0_prev, x0 = (torch.randn(3, 4, generator=gen, dtype=torch.float64) for _ in range(3))
    sigmas = [0.9, 0.7, 0.4]
    solver = DPMSolverPP2M()
    solver.record(x0_prev, Point.flow(sigmas[0]), Point.flow(sigmas[1]))
    lam = [log_snr(v) for v in sigmas]
    d = x0 + (lam[2] - lam[1]) / (2 * (lam[1] - lam[0])) * (x0 - x0_prev)
    torch.testing.assert_close(solver.step(x, x0, Point.flow(sigmas[1]), Point.flow(sigmas[2])),
                               dpmpp(x, d, sigmas[1], sigmas[2]))


@pytest.mark.parametrize("prefix", ["ode_solver", "euler"])
def test_prefix_solver_before_the_window(tmp_path, prefix):
    """The 3 deterministic steps before the window 3..4: Euler x + (s' - s) v (MixGRPO-Flash),
    or DPM-Solver++(2M) as after the window (ours), whose second step is second-order."""
    cfg = windowed(tmp_path, f"sampling.prefix_solver={prefix}")
    policy = tiny_policy(cfg)
    cond = tiny_conditioning(cfg, ["a red ball"], 2)
    ro = tiny_rollout(cfg, policy, cond, batch_size=2, plan=build_step_plan(cfg.sampling, 0))
    sig = [float(v) for v in ro.schedule]
    x, x0s = ro.latents[:1, 0], []
    for k in range(3):
        x0s.append(x0_hat(policy, cond.select([0]), x, sig[k]))
        if prefix == "euler":
            x = x + (sig[k + 1] - sig[k]) * (x - x0s[k]) / sig[k]
        else:
            lam = [log_snr(v) for v in sig[:4]]
            # The first step, and the second (h_prev infinite from pure noise), are first-order.
            d = x0s[k] if k < 2 else x0s[k] + (lam[k + 1] - lam[k]) / (2 * (lam[k] - lam[k - 1])) * (x0s[k] - x0s[k - 1])
            x = dpmpp(x, d, sig[k], sig[k + 1])
        torch.testing.assert_close(ro.latents[:1, k + 1], x, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("spacing", ["grid", "even_t"])
def test_post_window_levels(tmp_path, spacing):
    """Window 0..3 of N = 16, then 5 steps: MixGRPO-Flash's levels time_shift(linspace(t_4, 0, 6))
    with t_4 = 1 - 4/16 ("even_t"), or the schedule's levels nearest to them ("grid")."""
    n, shift = 16, 3.0
    s = sampling(n, f"sampling.shift={shift}", "sampling.sde_window_size=4", "sampling.post_window_steps=5",
                 "sampling.ode_solver=dpmpp_2m", f"sampling.post_window_spacing={spacing}")
    plan = build_step_plan(s, 0)
    schedule = plan.schedule(RectifiedFlowSampling().sampler(s))
    u = torch.linspace(1 - 4 / n, 0, 6, dtype=torch.float64)
    if spacing == "grid":
        assert plan.visited == (0, 1, 2, 3, 4, 6, 9, 11, 14, 16)
        u = 1 - torch.tensor([4, 6, 9, 11, 14, 16], dtype=torch.float64) / n
    expected = shift * u / (1 + (shift - 1) * u)
    torch.testing.assert_close(schedule[:5], sigma_schedule(n, shift)[:5], rtol=0, atol=0)
    torch.testing.assert_close(schedule[4:], expected, rtol=1e-12, atol=1e-12)


def test_even_t_levels_roll_out_and_refuse_ddim(tmp_path):
    cfg = windowed(tmp_path, "sampling.post_window_steps=3", "sampling.post_window_spacing=even_t")
    policy = tiny_policy(cfg)
    plan = build_step_plan(cfg.sampling, 0)
    assert plan.visited[-4:] == pytest.approx((5, 5 + 5 / 3, 5 + 10 / 3, 10), abs=1e-12)
    ro = tiny_rollout(cfg, policy, tiny_conditioning(cfg, ["a red ball"], 2), batch_size=2, plan=plan)
    assert ro.schedule[-1] == 0.0 and torch.isfinite(ro.latents).all()
    alphas = scaled_linear_alphas_cumprod()
    ddim = DDIMSampler(ddim_timesteps(10), 0.7, alphas, float(alphas[0]))
    with pytest.raises(ValueError, match="post_window_spacing=even_t"):
        plan.schedule(ddim)
    assert build_step_plan(dataclasses.replace(cfg.sampling, post_window_spacing="grid"), 0).schedule(ddim).tolist() \
        == ddim_timesteps(10)[[0, 1, 2, 3, 4, 5, 7, 8, 10]].tolist()
