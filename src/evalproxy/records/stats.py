"""Significance tests for paired and unpaired score differences (standard library only)."""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import dataclass
from statistics import NormalDist

from evalproxy.adapter.core.intervals import Interval as Interval
from evalproxy.adapter.core.intervals import stderr_ci, wilson

# Below this many discordant pairs McNemar's chi-square approximation is poor; the exact binomial test is used.
EXACT_BELOW = 25


@dataclass(frozen=True)
class TestResult:
    method: str
    p_value: float | None
    n: int
    detail: str = ""


def mcnemar(baseline: Sequence[float], candidate: Sequence[float]) -> TestResult:
    """McNemar's test on paired 0/1 results: exact binomial when discordant pairs are few, else chi-square (cc)."""
    b = sum(1 for x, y in zip(baseline, candidate, strict=True) if x >= 0.5 > y)
    c = sum(1 for x, y in zip(baseline, candidate, strict=True) if y >= 0.5 > x)
    n = b + c
    detail = f"{b} right only in baseline, {c} right only in candidate"
    if n == 0:
        return TestResult("mcnemar-exact", 1.0, len(baseline), detail)
    if n < EXACT_BELOW:
        k = min(b, c)
        tail = sum(math.comb(n, i) for i in range(k + 1)) / 2**n
        return TestResult("mcnemar-exact", min(1.0, 2 * tail), len(baseline), detail)
    chi2 = (abs(b - c) - 1) ** 2 / n
    return TestResult("mcnemar-chi2", math.erfc(math.sqrt(chi2 / 2)), len(baseline), detail)


def paired_bootstrap(baseline: Sequence[float], candidate: Sequence[float], *, iterations: int = 2000,
                     seed: int = 0) -> TestResult:
    """Two-sided paired bootstrap on the mean difference (candidate - baseline), seeded so reruns agree."""
    diffs = [y - x for x, y in zip(baseline, candidate, strict=True)]
    n = len(diffs)
    if n == 0:
        return TestResult("paired-bootstrap", None, 0, "no pairs")
    if all(d == 0 for d in diffs):
        return TestResult("paired-bootstrap", 1.0, n, "identical")
    rng = random.Random(seed)
    below = above = 0
    for _ in range(iterations):
        mean = sum(diffs[rng.randrange(n)] for _ in range(n)) / n
        if mean <= 0:
            below += 1
        if mean >= 0:
            above += 1
    p = min(1.0, 2 * min(below, above) / iterations)
    return TestResult("paired-bootstrap", p, n, f"{iterations} resamples, seed {seed}")


def stderr_z(delta: float, se_baseline: float | None, se_candidate: float | None) -> TestResult:
    """Unpaired z test from the harnesses' standard errors (the fallback when no per-sample results exist)."""
    if se_baseline is None or se_candidate is None:
        return TestResult("none", None, 0, "no per-sample results and no stderr")
    se = math.sqrt(se_baseline**2 + se_candidate**2)
    if se == 0:
        return TestResult("stderr-z", 1.0 if delta == 0 else 0.0, 0, "zero stderr")
    z = delta / se
    return TestResult("stderr-z", math.erfc(abs(z) / math.sqrt(2)), 0, f"z = {z:.2f}")


def is_binary(values: Sequence[float]) -> bool:
    return all(v in (0.0, 1.0) for v in values)


def quantile(sorted_values: Sequence[float], q: float) -> float | None:
    """Linear-interpolated quantile of already sorted values."""
    if not sorted_values:
        return None
    pos = (len(sorted_values) - 1) * q
    lo = math.floor(pos)
    hi = min(lo + 1, len(sorted_values) - 1)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (pos - lo)


# ------------------------------------------------------------------------------------------------ confidence intervals


# Student's t at 97.5% (two-sided 95%) for 1..30 degrees of freedom; beyond, the Cornish-Fisher expansion is exact to
# the third decimal.
_T975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145, 2.131,
         2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042)


def t_quantile(df: int, confidence: float = 0.95) -> float:
    """The two-sided ``confidence`` quantile of Student's t with ``df`` degrees of freedom (standard library only)."""
    if confidence == 0.95 and 1 <= df <= len(_T975):
        return _T975[df - 1]
    z = NormalDist().inv_cdf(1 - (1 - confidence) / 2)
    d = max(df, 1)
    return z + (z**3 + z) / (4 * d) + (5 * z**5 + 16 * z**3 + 3 * z) / (96 * d**2)


def mean_ci(values: Sequence[float], confidence: float = 0.95) -> Interval | None:
    """Interval of a mean: Wilson's for 0/1 results, Student's t otherwise; None below two values."""
    if values and is_binary(values):
        return wilson(sum(values), len(values), confidence)
    return _t_interval(values, confidence)


def _t_interval(values: Sequence[float], confidence: float) -> Interval | None:
    """Student's t interval of the mean of ``values``; None below two."""
    n = len(values)
    if n < 2:
        return None
    mean = sum(values) / n
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    half = t_quantile(n - 1, confidence) * sd / math.sqrt(n)
    return mean - half, mean + half


def paired_delta_ci(baseline: Sequence[float], candidate: Sequence[float],
                    confidence: float = 0.95) -> Interval | None:
    """Student's t interval of the mean paired difference (candidate - baseline); None below two pairs."""
    return _t_interval([y - x for x, y in zip(baseline, candidate, strict=True)], confidence)


def unpaired_delta_ci(delta: float, se_baseline: float | None, se_candidate: float | None,
                      confidence: float = 0.95) -> Interval | None:
    """delta +- z * sqrt(se_b^2 + se_c^2): the interval when no per-sample results pair the runs."""
    if se_baseline is None or se_candidate is None:
        return None
    return stderr_ci(delta, math.sqrt(se_baseline**2 + se_candidate**2), confidence)
