import math

import pytest
import torch
from diffusers import DPMSolverMultistepScheduler

from fastvideo_grpo.sampling.sde import ddim_ode_step, ode_step, scaled_linear_alphas_cumprod, sigma_schedule
from fastvideo_grpo.sampling.solvers import DPMSolverPP2M, Point, euler_step, make_solver

D = 6
gen = torch.Generator().manual_seed(0)
A = 0.3 * torch.randn(D, D, generator=gen, dtype=torch.float64)
B = torch.randn(D, generator=gen, dtype=torch.float64)
C = torch.randn(D, generator=gen, dtype=torch.float64)


def toy_output(x: torch.Tensor, alpha: float, sigma: float) -> torch.Tensor:
    """A fixed linear function of x and the noise level, standing in for v or eps; near x at high
    noise, as a trained eps is, so that x0_hat stays O(1). [2, D]."""
    return sigma * x + alpha * (x @ A.T + sigma * B + C)


def flow_x0(x, point):
    return x - point.sigma * toy_output(x, *point)


def eps_x0(x, point):
    return (x - point.sigma * toy_output(x, *point)) / point.alpha


def start(points):
    return torch.randn(2, D, generator=torch.Generator().manual_seed(1), dtype=torch.float64) * points[0].sigma


def solve(name, points, x0_fn, x):
    """Run a solver over `points`; returns every x along the way."""
    solver, xs = make_solver(name), [x]
    for p, p_next in zip(points[:-1], points[1:]):
        xs.append(solver.step(xs[-1], x0_fn(xs[-1], p), p, p_next))
    return xs


def diffusers_trajectory(scheduler, x):
    """Every x along diffusers' DPMSolverMultistepScheduler, stepped on toy_output."""
    scheduler.set_begin_index(0)
    xs = [x]
    for k, t in enumerate(scheduler.timesteps):
        sigma = float(scheduler.sigmas[k])
        if scheduler.config.use_flow_sigmas:
            alpha = 1 - sigma
        else:  # diffusers' sigma is the VE sigma sqrt((1 - ab) / ab)
            alpha = 1 / math.sqrt(sigma**2 + 1)
            sigma = sigma * alpha
        xs.append(scheduler.step(toy_output(xs[-1], alpha, sigma), t, xs[-1]).prev_sample)
    return xs


@pytest.mark.parametrize("num_steps", [6, 20])  # diffusers' lower_order_final branches on < 15 steps
@pytest.mark.parametrize("sigmas", ["diffusers", "sigma_schedule"])
def test_dpmpp_2m_matches_diffusers_flow_matching(num_steps, sigmas):
    shift = 3.0
    scheduler = DPMSolverMultistepScheduler(
        use_flow_sigmas=True, prediction_type="flow_prediction", flow_shift=shift,
        algorithm_type="dpmsolver++", solver_order=2, solver_type="midpoint", lower_order_final=True,
        final_sigmas_type="zero")
    scheduler.set_timesteps(num_steps)
    if sigmas == "sigma_schedule":
        # set_timesteps in diffusers 0.42 takes no `sigmas=`; the step reads only `scheduler.sigmas`.
        scheduler.sigmas = sigma_schedule(num_steps, shift).float()
    points = [Point.flow(s) for s in scheduler.sigmas.double()]  # the same float32 sigmas, in float64
    assert points[-1] == (1.0, 0.0) and len(points) == num_steps + 1
    x = start(points)
    ours = solve("dpmpp_2m", points, flow_x0, x)
    theirs = diffusers_trajectory(scheduler, x)
    for k, (a, b) in enumerate(zip(ours, theirs)):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6, msg=f"step {k}")


@pytest.mark.parametrize("num_steps", [6, 20])
def test_dpmpp_2m_matches_diffusers_ddim_eps_prediction(num_steps):
    scheduler = DPMSolverMultistepScheduler(
        num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
        prediction_type="epsilon", algorithm_type="dpmsolver++", solver_order=2, solver_type="midpoint",
        lower_order_final=True, final_sigmas_type="zero")
    scheduler.set_timesteps(num_steps)
    alphas_cumprod = scaled_linear_alphas_cumprod()  # the project's float64 schedule, not diffusers'
    points = [Point.ddim(alphas_cumprod[int(t)]) for t in scheduler.timesteps] + [Point.ddim(1.0)]
    x = start(points)
    ours = solve("dpmpp_2m", points, eps_x0, x)
    theirs = diffusers_trajectory(scheduler, x)
    for k, (a, b) in enumerate(zip(ours, theirs)):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6, msg=f"step {k}")


def test_euler_is_the_flow_euler_step_and_deterministic_ddim():
    sigmas = sigma_schedule(8, 3.0)
    x = torch.randn(2, D, dtype=torch.float64)
    for k in range(8):
        p, p_next = Point.flow(sigmas[k]), Point.flow(sigmas[k + 1])
        v = toy_output(x, *p)
        torch.testing.assert_close(euler_step(x, x - p.sigma * v, p, p_next), ode_step(v, x, sigmas, k),
                                   rtol=0, atol=1e-12)
    alphas_cumprod, timesteps = scaled_linear_alphas_cumprod(), torch.tensor([901.0, 501.0, 101.0, 1.0, -99.0])
    final = float(alphas_cumprod[0])
    for k in range(4):
        t, t_next = int(timesteps[k]), int(timesteps[k + 1])
        p = Point.ddim(alphas_cumprod[t])
        p_next = Point.ddim(alphas_cumprod[t_next] if t_next >= 0 else final)
        eps = toy_output(x, *p)
        expected = ddim_ode_step(eps, x, timesteps, k, alphas_cumprod, final)
        torch.testing.assert_close(euler_step(x, (x - p.sigma * eps) / p.alpha, p, p_next), expected,
                                   rtol=0, atol=1e-12)


@pytest.mark.parametrize("family", ["flow", "ddim"])
@pytest.mark.parametrize("name", ["euler", "dpmpp_2m"])
def test_point_mass_data_is_solved_exactly(family, name):
    # Data is one point x0*, so x0_hat = x0* everywhere and the ODE solution is x_t = alpha x0* + sigma eps.
    if family == "flow":
        points = [Point.flow(s) for s in sigma_schedule(8, 3.0)]
    else:
        alphas_cumprod = scaled_linear_alphas_cumprod()
        points = [Point.ddim(alphas_cumprod[t]) for t in (999, 800, 600, 400, 200, 50, 1)] + [Point.ddim(1.0)]
    x0_star, eps = torch.randn(2, D, dtype=torch.float64), torch.randn(2, D, dtype=torch.float64)
    xs = solve(name, points, lambda x, p: x0_star, points[0].alpha * x0_star + points[0].sigma * eps)
    for k, (x, p) in enumerate(zip(xs, points)):
        torch.testing.assert_close(x, p.alpha * x0_star + p.sigma * eps, rtol=0, atol=1e-12, msg=f"step {k}")
    assert torch.equal(xs[-1], x0_star)


def test_dpmpp_2m_beats_euler_on_gaussian_data():
    # x0 ~ N(m, s^2) per coordinate: E[x0 | x_t] = m + a s^2 / (a^2 s^2 + sigma^2) (x_t - a m), and the
    # probability-flow ODE keeps z = (x_t - a m) / sqrt(a^2 s^2 + sigma^2) fixed (z = x_t at sigma = 1).
    m = torch.linspace(-2.0, 2.0, D, dtype=torch.float64)
    s = torch.linspace(0.2, 1.0, D, dtype=torch.float64)
    z = torch.randn(4, D, generator=torch.Generator().manual_seed(2), dtype=torch.float64)

    def x0_hat(x, p):
        return m + p.alpha * s**2 / (p.alpha**2 * s**2 + p.sigma**2) * (x - p.alpha * m)

    def errors(name, num_steps):
        """max |x - exact| at sigma = 0.5 and at sigma = 0."""
        points = [Point.flow(sig) for sig in sigma_schedule(num_steps, 1.0)]
        xs = solve(name, points, x0_hat, z)
        half = points[num_steps // 2]
        assert half.sigma == 0.5
        exact_half = half.alpha * m + (half.alpha**2 * s**2 + half.sigma**2).sqrt() * z
        return (xs[num_steps // 2] - exact_half).abs().max().item(), (xs[-1] - (m + s * z)).abs().max().item()

    (euler_half, euler_end), (dpm_half, dpm_end) = errors("euler", 8), errors("dpmpp_2m", 8)
    assert dpm_end < 0.5 * euler_end and dpm_half < 0.7 * euler_half, (dpm_end, euler_end, dpm_half, euler_half)
    # Four times the steps: the first-order error falls about 4x, the second-order one about 16x.
    assert euler_half / errors("euler", 32)[0] < 5
    assert dpm_half / errors("dpmpp_2m", 32)[0] > 10


def test_reset_makes_the_next_step_first_order():
    points = [Point.flow(s) for s in sigma_schedule(10, 3.0)]
    solver, reset_solver, x = DPMSolverPP2M(), DPMSolverPP2M(), start(points)
    for k in range(3):
        x0 = flow_x0(x, points[k])
        reset_solver.step(x, x0, points[k], points[k + 1])
        x = solver.step(x, x0, points[k], points[k + 1])
    reset_solver.reset()
    p, p_next, x0 = points[3], points[4], flow_x0(x, points[3])
    first_order = euler_step(x, x0, p, p_next)
    assert (reset_solver.step(x, x0, p, p_next) - first_order).abs().max() < 1e-12
    x = solver.step(x, x0, p, p_next)
    assert (x - first_order).abs().max() > 1e-3  # with its history: second order
    # A stochastic window takes the trajectory from points[4] to points[7]; the solver then resumes.
    p, p_next = points[7], points[8]
    x0 = flow_x0(x, p)
    with pytest.raises(ValueError, match="call reset"):
        solver.step(x, x0, p, p_next)
    solver.reset()
    assert (solver.step(x, x0, p, p_next) - euler_step(x, x0, p, p_next)).abs().max() < 1e-12


@pytest.mark.parametrize("name", ["euler", "dpmpp_2m"])
@pytest.mark.parametrize("indices", [slice(None, None, 2), slice(7, None, 3)])
def test_compressed_sequence_ends_at_the_last_x0_hat(name, indices):
    sigmas = sigma_schedule(16, 3.0)[indices]  # every other sigma; or the sigmas after a window, resampled
    assert sigmas[-1] == 0
    points = [Point.flow(s) for s in sigmas]
    xs = solve(name, points, flow_x0, start(points))
    assert torch.equal(xs[-1], flow_x0(xs[-2], points[-2]))


def test_bad_steps_and_names_are_rejected():
    with pytest.raises(ValueError, match="cleaner"):
        euler_step(torch.zeros(1), torch.zeros(1), Point.flow(0.3), Point.flow(0.5))
    with pytest.raises(ValueError, match="already 0"):
        DPMSolverPP2M().step(torch.zeros(1), torch.zeros(1), Point.flow(0.0), Point.flow(0.0))
    with pytest.raises(ValueError, match="dpmpp_2m"):
        make_solver("heun")
