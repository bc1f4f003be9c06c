"""Intervals of a reported score, for every reader that shows one (the run's report, compare, gate)."""

from __future__ import annotations

import math
from statistics import NormalDist

Interval = tuple[float, float]


def wilson(successes: float, n: int, confidence: float = 0.95) -> Interval | None:
    """Wilson score interval of a proportion (right even at 0/n and n/n, where mean +- z*se collapses)."""
    if n == 0:
        return None
    z = NormalDist().inv_cdf(1 - (1 - confidence) / 2)
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def is_proportion(value: float, stderr: float, count: int) -> bool:
    """Whether a harness's (value, stderr, count) is a share of right answers: the stderr is a 0/1 sample's,
    ``sqrt(p(1-p)/(n-1))`` (lm-eval, inspect-ai) or ``sqrt(p(1-p)/n)``, within 2 %."""
    if not 0.0 <= value <= 1.0 or count < 2:
        return False
    var = value * (1 - value)
    return any(math.isclose(stderr, math.sqrt(var / d), rel_tol=0.02, abs_tol=1e-9) for d in (count - 1, count))


def score_interval(value: float, stderr: float | None, count: int | None,
                   confidence: float = 0.95) -> Interval | None:
    """A score's interval from what a harness reports: Wilson's for a proportion (it stays within [0, 1] and is
    right at 0 and 1), else value +- z * stderr; None without a stderr."""
    if stderr is None:
        return None
    if count is not None and is_proportion(value, stderr, count):
        return wilson(value * count, count, confidence)
    return stderr_ci(value, stderr, confidence)


def stderr_ci(value: float, stderr: float | None, confidence: float = 0.95) -> Interval | None:
    """value +- z * stderr (the harness's own standard error); None without one."""
    if stderr is None:
        return None
    z = NormalDist().inv_cdf(1 - (1 - confidence) / 2)
    return value - z * stderr, value + z * stderr
