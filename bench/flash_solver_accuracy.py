"""How accurate are the deterministic steps around an SDE window, MixGRPO-Flash's way against
ours, on data whose clean prediction is exact: x0 in {-1, +1} plus N(0, 0.15^2) noise per
element, so x0_hat(x, sigma) = E[x0 | x_sigma] is a closed form and the only error is the
solver's. The reference trajectory is DPM-Solver++(2M) on 2000 levels from the same point.

- Before the window: the error of x at the window's start after Euler (MixGRPO-Flash,
  `sampling.prefix_solver: euler`) or DPM-Solver++(2M) (`prefix_solver: ode_solver`) steps.
- After the window: the error of the clean sample when DPM-Solver++ restarts first-order
  after the window (`sampling.solver_history: reset`) or extrapolates from the window's last
  x0_hat (`keep`, MixGRPO-Flash), on every remaining level or on 4 steps (`even_t`).

    python bench/flash_solver_accuracy.py [--samples 20000]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from fastvideo_grpo.sampling.sde import sde_step, sigma_schedule, time_shift  # noqa: E402
from fastvideo_grpo.sampling.solvers import DPMSolverPP2M, Point  # noqa: E402

MODES, SPREAD = torch.tensor([-1.0, 1.0], dtype=torch.float64), 0.15


def x0_hat(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """E[x0 | x_sigma = (1 - sigma) x0 + sigma eps] for the two-mode data."""
    var = (1 - sigma) ** 2 * SPREAD**2 + sigma**2
    centred = x[:, None] - (1 - sigma) * MODES
    weights = torch.softmax(-centred**2 / (2 * var), dim=1)
    return (weights * (MODES + (1 - sigma) * SPREAD**2 / var * centred)).sum(dim=1)


def dpmpp(x: torch.Tensor, levels: list[float], solver: DPMSolverPP2M | None = None) -> torch.Tensor:
    solver = solver or DPMSolverPP2M()
    for sigma, sigma_next in zip(levels[:-1], levels[1:]):
        x = solver.step(x, x0_hat(x, sigma), Point.flow(sigma), Point.flow(sigma_next))
    return x


def euler(x: torch.Tensor, levels: list[float]) -> torch.Tensor:
    for sigma, sigma_next in zip(levels[:-1], levels[1:]):
        x = x + (sigma_next - sigma) * (x - x0_hat(x, sigma)) / sigma
    return x


def exact(x: torch.Tensor, sigma: float, sigma_next: float, shift: float) -> torch.Tensor:
    """DPM-Solver++(2M) on 2000 levels evenly spaced in unshifted time."""
    unshift = sigma / (shift - (shift - 1) * sigma)
    unshift_next = sigma_next / (shift - (shift - 1) * sigma_next)
    fine = time_shift(torch.linspace(unshift, unshift_next, 2001, dtype=torch.float64), shift).tolist()
    return dpmpp(x, fine)


def rms(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a - b).pow(2).mean().sqrt().item()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=20000)
    args = parser.parse_args()
    gen = torch.Generator().manual_seed(0)
    window = 4
    print("| N, shift, SDE, eta | window start | prefix error euler / dpmpp_2m | end error, all levels: reset / keep "
          "| end error, 4 even_t steps: reset / keep |")
    print("|---|---|---|---|---|")
    for n, shift, sde_type, eta in [(25, 3.0, "flow_grpo", 0.7), (25, 3.0, "dance", 0.7), (16, 5.0, "dance", 0.25),
                                    (10, 3.0, "cps", 0.8)]:
        sigmas = sigma_schedule(n, shift)
        levels = sigmas.tolist()
        for start in (0, 4, 8):
            after = start + window
            if after > n - 2:
                continue
            noise = torch.randn(args.samples, generator=gen, dtype=torch.float64)
            x = exact(noise, levels[0], levels[start], shift) if start else noise
            prefix = (f"{rms(euler(noise, levels[:start + 1]), x):.2e} / {rms(dpmpp(noise, levels[:start + 1]), x):.2e}"
                      if start else "-")
            for j in range(start, after):
                before, sigma = x, levels[j]
                step = sde_step((x - x0_hat(x, sigma)) / sigma, x, sigmas, j, eta, sde_type,
                                noise=torch.randn(args.samples, generator=gen, dtype=torch.float64))
                x = step.prev_sample
            last_x0 = x0_hat(before, levels[after - 1])
            truth = exact(x, levels[after], 0.0, shift)
            cells = []
            for post in (levels[after:], time_shift(torch.linspace(1 - after / n, 0, 5, dtype=torch.float64),
                                                    shift).tolist()):
                errors = []
                for history in ("reset", "keep"):
                    solver = DPMSolverPP2M()
                    if history == "keep":
                        solver.record(last_x0, Point.flow(levels[after - 1]), Point.flow(levels[after]))
                    errors.append(f"{rms(dpmpp(x, post, solver), truth):.2e}")
                cells.append(" / ".join(errors))
            print(f"| {n}, {shift:g}, {sde_type}, {eta:g} | {start} | {prefix} | {cells[0]} | {cells[1]} |")


if __name__ == "__main__":
    main()
