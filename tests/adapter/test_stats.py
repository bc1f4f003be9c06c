"""Exact statistics: sums without drift, percentiles, the seed results shape."""

from __future__ import annotations

import math
import statistics

import orjson
import pytest

from evalproxy.adapter.core.summary import Summary, percentile


class TestSummary:
    def test_sums_are_exact(self) -> None:
        """A million additions of the same value sum exactly (integers: no floating-point drift)."""
        s = Summary()
        for _ in range(1_000_000):
            s.add(100_001)
        assert s.total == 100_001_000_000 and s.mean == 100_001

    def test_stddev_and_stderr_match_the_textbook(self) -> None:
        """stddev is the sample standard deviation; stderr is stddev / sqrt(n)."""
        values = [3, 7, 7, 19, 24, 1000]
        s = Summary()
        for v in values:
            s.add(v)
        out = s.seed_stats()
        assert out["stats"]["stddev"] == pytest.approx(statistics.stdev(values), rel=1e-9)
        assert out["stats"]["stderr"] == pytest.approx(statistics.stdev(values) / math.sqrt(6), rel=1e-6)
        assert (out["stats"]["min"], out["stats"]["max"], out["stats"]["count"]) == (3, 1000, 6)
        assert out["value"] == out["stats"]["mean"] == pytest.approx(sum(values) / 6)

    @pytest.mark.parametrize(("q", "expected"), [(0, 1), (50, 50.5), (90, 90.1), (99, 99.01), (100, 100)])
    def test_percentiles_interpolate(self, q: float, expected: float) -> None:
        """Percentiles of 1..100 follow linear interpolation between closest ranks."""
        assert percentile(list(range(1, 101)), q) == pytest.approx(expected)

    def test_merge_adds_everything(self) -> None:
        """Merging two summaries gives the summary of all their values."""
        a, b, both = Summary(), Summary(), Summary()
        for v in (1, 2, 3):
            a.add(v)
            both.add(v)
        for v in (10, 20):
            b.add(v)
            both.add(v)
        m = a.merge(b)
        assert (m.count, m.total, m.squares, m.min, m.max) == (both.count, both.total, both.squares, 1, 20)

    def test_round_trips_through_json(self) -> None:
        """What is persisted reads back equal."""
        s = Summary()
        for v in (5, 9, 2):
            s.add(v)
        assert Summary.load(s.dump()) == s

    def test_a_sum_of_squares_past_64_bits_round_trips_through_json(self) -> None:
        """Six thousand one-minute latencies in microseconds (squares past 2**64) persist and load back exactly."""
        s = Summary()
        for _ in range(6000):
            s.add(60_000_000)
        assert s.squares > 2**64
        back = Summary.load(orjson.loads(orjson.dumps(s.dump())))
        assert (back.count, back.total, back.squares) == (s.count, s.total, s.squares)
        assert back.stddev() == s.stddev() == 0

    def test_loading_more_samples_than_kept_draws_them_from_the_whole_run(self) -> None:
        """A file with 50,000 samples (an older, larger MAX_SAMPLES) loads as a uniform draw of them, not the first
        ones: samples 0..49,999 in order give a median near 25,000."""
        s = Summary()
        for v in range(50_000):
            s.add(v)
        data = {**s.dump(keep_samples=50_000), "samples": list(range(50_000))}
        back = Summary.load(data, keep=1000)
        assert len(back.samples) == 1000 and back.count == 50_000
        assert 20_000 < back.percentiles((50,))["p50"] < 30_000

    def test_histogram_counts_every_sample(self) -> None:
        """Histogram bins cover all samples, edges ascending from min."""
        s = Summary()
        for v in range(100):
            s.add(v)
        h = s.histogram(bins=10)
        assert sum(h["counts"]) == 100 and h["counts"] == [10] * 10
        assert h["edges"][0] == 0 and h["edges"] == sorted(h["edges"])

    def test_merge_weighs_samples_by_count(self) -> None:
        """A summary that kept few samples for many observations weighs by its count, not its sample count."""
        persisted = Summary.load({"count": 3000, "total": 300_000, "squares": 30_000_000, "min": 100,
                                       "max": 100, "samples": [100] * 10})
        live = Summary()
        for _ in range(1000):
            live.add(1)
        for merged in (persisted.merge(live), live.merge(persisted)):
            ones = sum(1 for v in merged.samples if v == 1)
            assert (ones, len(merged.samples)) == (3, 13)  # a quarter of the observations were 1s
            assert merged.percentiles()["p50"] == 100 and merged.count == 4000

    def test_persisted_samples_are_drawn_from_the_whole_run(self) -> None:
        """to_json keeps a uniform share of the samples, not the first ones (the warm-up)."""
        s = Summary()
        for v in range(1000):
            s.add(v)
        kept = s.dump(keep_samples=100)["samples"]
        assert len(kept) == 100 and kept == sorted(kept) and kept[-1] > 500 and kept[0] < 500
        assert s.dump(keep_samples=100) == s.dump(keep_samples=100)  # seeded: same file each write
