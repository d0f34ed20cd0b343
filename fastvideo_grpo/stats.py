"""Confidence intervals of evaluation means and of differences between two evaluations."""

from __future__ import annotations

import math
from statistics import NormalDist

# Two-sided 95% quantile of the standard normal (1.95996...).
Z95 = NormalDist().inv_cdf(0.975)


def mean_ci(values: list[float]) -> dict[str, float]:
    """Mean, sample std (n-1) and the 95% CI of the mean, mean +- z_0.975 * std / sqrt(n).

    A normal-approximation interval: with the hundreds of prompt x seed samples of an
    evaluation it equals the Student-t one to a few percent; for n < 30 it is narrower.
    """
    n = len(values)
    if n == 0:
        raise ValueError("mean_ci needs at least one value")
    mean = sum(values) / n
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else 0.0
    half = Z95 * std / math.sqrt(n)
    return {"n": n, "mean": mean, "std": std, "ci95": half, "ci95_low": mean - half, "ci95_high": mean + half}


def delta_ci(base: list[dict], other: list[dict], name: str) -> tuple[dict[str, float], bool]:
    """The 95% CI of mean(other) - mean(base) for one reward.

    Paired (mean +- z * std / sqrt(n) of per-row differences) when both scored the same
    prompt x seed rows, which they do from the same prompts and seeds; otherwise the
    unpaired normal interval with se = sqrt(se_a^2 + se_b^2).
    """
    a = {(r["prompt_index"], r["seed"]): r[name] for r in base}
    b = {(r["prompt_index"], r["seed"]): r[name] for r in other}
    if a.keys() == b.keys():
        return mean_ci([b[k] - a[k] for k in sorted(a)]), True
    ca, cb = mean_ci(list(a.values())), mean_ci(list(b.values()))
    delta = cb["mean"] - ca["mean"]
    half = math.hypot(ca["ci95"], cb["ci95"])
    return {"n": min(ca["n"], cb["n"]), "mean": delta, "ci95": half, "ci95_low": delta - half,
            "ci95_high": delta + half}, False
