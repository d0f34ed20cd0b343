"""Deterministic ODE solvers over an arbitrary sequence of noise levels.

A point on the trajectory is (alpha, sigma) with x_t = alpha * x0 + sigma * eps: rectified
flow has alpha = 1 - sigma; DDIM has alpha = sqrt(alpha_bar), sigma = sqrt(1 - alpha_bar).
Each step goes from a noisier point to a cleaner one and takes the data prediction x0_hat
at the current point (the model family turns its network output into x0_hat). The last
point of a trajectory is sigma = 0 (alpha = 1), where every solver returns x0_hat.

    solver = make_solver("dpmpp_2m")
    for k in range(len(points) - 1):
        x = solver.step(x, x0_hat_at(x, points[k]), points[k], points[k + 1])
"""

from __future__ import annotations

import math
from typing import NamedTuple, Protocol

import torch


class Point(NamedTuple):
    """A noise level: x_t = alpha * x0 + sigma * eps."""

    alpha: float
    sigma: float

    @classmethod
    def flow(cls, sigma: float) -> Point:
        """Rectified flow: (1 - sigma, sigma)."""
        return cls(1.0 - float(sigma), float(sigma))

    @classmethod
    def ddim(cls, alpha_bar: float) -> Point:
        """DDIM: (sqrt(alpha_bar), sqrt(1 - alpha_bar))."""
        return cls(math.sqrt(float(alpha_bar)), math.sqrt(1.0 - float(alpha_bar)))


def log_snr(point: tuple[float, float]) -> float:
    """lambda = log(alpha / sigma); -inf at alpha = 0 (pure noise), +inf at sigma = 0 (data)."""
    alpha, sigma = point
    if alpha == 0:
        return -math.inf
    if sigma == 0:
        return math.inf
    return math.log(alpha) - math.log(sigma)


def _check_step(point: tuple[float, float], point_next: tuple[float, float]) -> tuple[float, float]:
    """lambda and lambda_next of a step, which must go to a strictly cleaner point."""
    lam, lam_next = log_snr(point), log_snr(point_next)
    if point[1] == 0:
        raise ValueError(f"solver step from {tuple(point)}: sigma is already 0, nothing left to denoise")
    if not lam_next > lam:
        raise ValueError(f"solver step from {tuple(point)} to {tuple(point_next)}: expected the next point "
                         f"to be cleaner (log-SNR {lam_next} > {lam})")
    return lam, lam_next


def euler_step(x: torch.Tensor, x0_hat: torch.Tensor, point: tuple[float, float],
               point_next: tuple[float, float]) -> torch.Tensor:
    """x_next = (sigma_next/sigma) x + (alpha_next - alpha sigma_next/sigma) x0_hat: deterministic DDIM,
    which for rectified flow is the Euler step x + (sigma_next - sigma) v, v = (x - x0_hat) / sigma."""
    _check_step(point, point_next)
    (alpha, sigma), (alpha_next, sigma_next) = point, point_next
    if sigma_next == 0:
        return alpha_next * x0_hat
    ratio = sigma_next / sigma
    return ratio * x + (alpha_next - alpha * ratio) * x0_hat


class Solver(Protocol):
    def step(self, x: torch.Tensor, x0_hat: torch.Tensor, point: tuple[float, float],
             point_next: tuple[float, float]) -> torch.Tensor: ...

    def reset(self) -> None: ...

    def record(self, x0_hat: torch.Tensor, point: tuple[float, float], point_next: tuple[float, float]) -> None: ...


class EulerSolver:
    """First order, no history: every step is `euler_step`."""

    def step(self, x: torch.Tensor, x0_hat: torch.Tensor, point: tuple[float, float],
             point_next: tuple[float, float]) -> torch.Tensor:
        return euler_step(x, x0_hat, point, point_next)

    def reset(self) -> None:
        pass

    def record(self, x0_hat: torch.Tensor, point: tuple[float, float], point_next: tuple[float, float]) -> None:
        pass


class DPMSolverPP2M:
    """DPM-Solver++(2M) in data-prediction form (Lu et al. 2022, Algorithm 2), with lower_order_final.

    x_next = (sigma_next/sigma) x - alpha_next (exp(-h) - 1) D, h = lambda_next - lambda, where
    D = x0_hat on the first step (or the first after `reset()`), otherwise
    D = (1 + 1/(2r)) x0_hat - 1/(2r) x0_hat_prev with r = h_prev / h. The step into sigma = 0
    returns x0_hat. The history is the previous step's x0_hat and log-SNRs; call `reset()`
    when the trajectory leaves the solver (e.g. for stochastic steps) before coming back, or
    `record()` to keep a step another method took as history (MixGRPO-Flash).
    """

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        # (x0_hat, lambda, lambda_next) of the previous step.
        self._prev: tuple[torch.Tensor, float, float] | None = None

    def step(self, x: torch.Tensor, x0_hat: torch.Tensor, point: tuple[float, float],
             point_next: tuple[float, float]) -> torch.Tensor:
        lam, lam_next = _check_step(point, point_next)
        (_, sigma), (alpha_next, sigma_next) = point, point_next
        if sigma_next == 0:
            self.reset()
            return alpha_next * x0_hat
        h = lam_next - lam
        d = x0_hat
        if self._prev is not None:
            x0_prev, lam_prev, lam_prev_next = self._prev
            if not math.isclose(lam, lam_prev_next, rel_tol=1e-9, abs_tol=1e-12):
                raise ValueError(f"DPMSolverPP2M.step from {tuple(point)} (log-SNR {lam}): the previous step "
                                 f"ended at log-SNR {lam_prev_next}; call reset() when the trajectory "
                                 "leaves the solver")
            # 1/(2r) = h / (2 h_prev); h_prev = inf (a start at pure noise) gives D = x0_hat.
            d = x0_hat + (h / (2 * (lam - lam_prev))) * (x0_hat - x0_prev)
        self._prev = (x0_hat, lam, lam_next)
        return (sigma_next / sigma) * x - (alpha_next * math.expm1(-h)) * d

    def record(self, x0_hat: torch.Tensor, point: tuple[float, float], point_next: tuple[float, float]) -> None:
        """A step from `point` to `point_next` that another method took, from `x0_hat`: the
        next step extrapolates from it as from one of its own."""
        self._prev = (x0_hat, *_check_step(point, point_next))


SOLVERS = {"euler": EulerSolver, "dpmpp_2m": DPMSolverPP2M}


def make_solver(name: str) -> Solver:
    """A fresh solver by name: one of `SOLVERS`."""
    if name not in SOLVERS:
        raise ValueError(f"solver {name!r} is not one of {sorted(SOLVERS)}")
    return SOLVERS[name]()
