"""Significance tests for paired and unpaired score differences (standard library only)."""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import dataclass

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
