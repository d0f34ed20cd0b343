"""Confidence intervals of evaluation means and of differences between two evaluations."""

from __future__ import annotations

import math
from statistics import NormalDist

# Two-sided 95% quantile of the standard normal (1.95996...).
Z95 = NormalDist().inv_cdf(0.975)
# Student's t_0.975 for 1 to 6 degrees of freedom (to 6 decimals); from 7 on, the
# Cornish-Fisher expansion below is within 1e-4 of it.
T95_SMALL = (12.706205, 4.302653, 3.182446, 2.776445, 2.570582, 2.446912)


def t95(df: int) -> float:
    """Student's t two-sided 95% quantile t_0.975 with `df` degrees of freedom: a table up to
    6, then z + g1/df + ... + g4/df^4 (Abramowitz and Stegun 26.7.5)."""
    if df < 1:
        raise ValueError(f"t95 needs at least 1 degree of freedom, got {df}")
    if df <= len(T95_SMALL):
        return T95_SMALL[df - 1]
    z = Z95
    g = ((z ** 3 + z) / 4, (5 * z ** 5 + 16 * z ** 3 + 3 * z) / 96,
         (3 * z ** 7 + 19 * z ** 5 + 17 * z ** 3 - 15 * z) / 384,
         (79 * z ** 9 + 776 * z ** 7 + 1482 * z ** 5 - 1920 * z ** 3 - 945 * z) / 92160)
    return z + sum(gk / df ** (k + 1) for k, gk in enumerate(g))


def mean_ci(values: list[float], student: bool = False) -> dict[str, float]:
    """Mean, sample std (n-1) and the 95% CI of the mean, mean +- z_0.975 * std / sqrt(n).

    A normal-approximation interval: with the hundreds of prompt x seed samples of an
    evaluation it equals the Student-t one to a few percent; for n < 30 it is narrower.
    `student`: t_0.975(n - 1) in place of z, for a few values (3 training seeds: 2.2x wider).
    """
    n = len(values)
    if n == 0:
        raise ValueError("mean_ci needs at least one value")
    mean = sum(values) / n
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else 0.0
    half = (t95(n - 1) if student and n > 1 else Z95) * std / math.sqrt(n)
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
