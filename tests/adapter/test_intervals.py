"""A reported score's interval: Wilson's for a share of right answers, value +- z*stderr otherwise."""

from __future__ import annotations

import math

import pytest

from evalproxy.adapter.core.intervals import is_proportion, score_interval, wilson


def test_a_proportion_gets_wilsons_interval_within_0_and_1() -> None:
    """4 of 6 right with inspect's stderr (n-1) is a proportion: its interval is Wilson's, inside [0, 1] (the
    normal one reached 1.08)."""
    p, n = 4 / 6, 6
    se = math.sqrt(p * (1 - p) / (n - 1))
    lo, hi = score_interval(p, se, n) or (0.0, 0.0)
    assert (lo, hi) == pytest.approx(wilson(4, 6) or (0.0, 0.0)) and 0.0 < lo < p < hi < 1.0
    assert p + 1.959964 * se > 1.0  # what the plain normal interval gave


def test_all_right_still_has_width() -> None:
    """10 of 10 right (stderr 0) is a proportion whose interval is not the single point 1.0."""
    lo, hi = score_interval(1.0, 0.0, 10) or (1.0, 1.0)
    assert hi == 1.0 and lo < 0.8


def test_other_scores_keep_the_harnesss_stderr() -> None:
    """A mean score whose stderr is not a 0/1 sample's keeps value +- z * stderr; no stderr, no interval."""
    assert not is_proportion(0.5, 0.01, 100)
    lo, hi = score_interval(0.5, 0.01, 100) or (0.0, 0.0)
    assert (lo, hi) == pytest.approx((0.5 - 0.0196, 0.5 + 0.0196), abs=1e-4)
    assert score_interval(12.5, 1.0, None) == pytest.approx((12.5 - 1.96, 12.5 + 1.96), abs=1e-3)
    assert score_interval(0.5, None, 10) is None
