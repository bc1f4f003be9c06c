"""Exact running statistics: integer sums (no float drift), min/max, and bounded samples for percentiles.

Values are integers (tokens, or microseconds for times), so sums and sums of squares are exact however many
requests a run has. Percentiles come from the samples: all of them up to ``MAX_SAMPLES``, then a uniform reservoir.
The output follows the seed results format: ``{value, stats: {count, sum, mean, min, max, stddev, stderr}}``.
"""

from __future__ import annotations

import math
import random
from array import array
from collections import Counter
from dataclasses import Field, dataclass, field, fields
from typing import Any, TypeVar

T = TypeVar("T")

MAX_SAMPLES = 20_000
"""Samples kept per summary for percentiles: p99 of 20,000 uniform samples is within a tenth of a percentile rank of
the true one, and three summaries of 100,000 samples made the proxy's memory grow 9 % over 100k requests (3 % now)."""


def percentile(sorted_values: list[int], q: float) -> float:
    """The q-th percentile (0-100) by linear interpolation between closest ranks."""
    if not sorted_values:
        return 0.0
    if len(sorted_values) == 1:
        return float(sorted_values[0])
    pos = (len(sorted_values) - 1) * q / 100
    lo = math.floor(pos)
    hi = min(lo + 1, len(sorted_values) - 1)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (pos - lo)


def subsample(samples: array[int], n: int) -> array[int]:
    """``n`` of ``samples`` drawn uniformly without replacement, in their original order (all of them if fewer).

    Seeded, so the same samples give the same persisted file and the same percentiles.
    """
    if n >= len(samples):
        return array("q", samples)
    picked = sorted(random.Random(len(samples)).sample(range(len(samples)), max(n, 0)))
    return array("q", (samples[i] for i in picked))


@dataclass
class Summary:
    """Count, exact sum and sum of squares, min, max and samples of integer observations."""

    count: int = 0
    total: int = 0
    squares: int = 0
    min: int | None = None
    max: int | None = None
    samples: array[int] = field(default_factory=lambda: array("q"))
    """Compact machine integers: 20,000 samples take 160 kB, not the 720 kB a list of ints would."""
    keep: int = MAX_SAMPLES
    """How many samples to keep for percentiles (0: none, when only sums and extremes are reported)."""
    _rng: random.Random | None = field(default=None, repr=False, compare=False)
    """The reservoir's draws, made when the samples are full (seeded: the same run keeps the same samples)."""

    def add(self, value: int) -> None:
        self.count += 1
        self.total += value
        self.squares += value * value
        if self.min is None or value < self.min:
            self.min = value
        if self.max is None or value > self.max:
            self.max = value
        if len(self.samples) < self.keep:
            self.samples.append(value)
        elif self.keep:
            if self._rng is None:
                self._rng = random.Random(0)
            j = self._rng.randrange(self.count)
            if j < self.keep:
                self.samples[j] = value

    def merge(self, other: Summary) -> Summary:
        """The summary of both: sums, extremes, and samples drawn in proportion to the counts they stand for.

        A persisted run keeps fewer samples than it had observations, so concatenating samples would over-weight the
        run with more samples kept; each side instead contributes ``size * its_count / total_count`` samples, with
        ``size`` as large as the side with the fewest samples per observation allows.
        """
        out = Summary(self.count + other.count, self.total + other.total, self.squares + other.squares)
        mins = [m for m in (self.min, other.min) if m is not None]
        maxs = [m for m in (self.max, other.max) if m is not None]
        out.min = min(mins) if mins else None
        out.max = max(maxs) if maxs else None
        out.keep = max(self.keep, other.keep)
        sides = [s for s in (self, other) if s.count and s.samples]
        if not sides or not out.keep:
            return out
        weight = sum(s.count for s in sides)
        # Largest sample size at which every side can supply its share (shares are exact up to rounding).
        size = min([out.keep, *(len(s.samples) * weight // s.count for s in sides)])
        for s in sides:
            out.samples.extend(subsample(s.samples, round(size * s.count / weight)))
        return out

    def copy(self) -> Summary:
        """The same numbers and samples, to read while this one goes on counting."""
        return Summary(self.count, self.total, self.squares, self.min, self.max, array("q", self.samples), self.keep)

    @property
    def mean(self) -> float:
        return self.total / self.count if self.count else 0.0

    def stddev(self) -> float:
        """Sample standard deviation, from exact integer sums."""
        if self.count < 2:
            return 0.0
        var_num = self.count * self.squares - self.total * self.total  # exact integer arithmetic
        return math.sqrt(max(var_num, 0) / (self.count * (self.count - 1)))

    def percentiles(self, qs: tuple[float, ...] = (50, 90, 99), scale: float = 1.0) -> dict[str, float]:
        ordered = sorted(self.samples)
        return {f"p{q:g}": round(percentile(ordered, q) * scale, 3) for q in qs}

    def histogram(self, bins: int = 12, scale: float = 1.0) -> dict[str, list[float] | list[int]]:
        """Equal-width bins over the samples: ``edges`` (bins + 1 of them, scaled) and ``counts``."""
        if not self.samples:
            return {"edges": [], "counts": []}
        lo, hi = min(self.samples), max(self.samples)
        width = max(1, math.ceil((hi - lo + 1) / bins))
        counts = [0] * bins
        for v in self.samples:
            counts[min((v - lo) // width, bins - 1)] += 1
        edges = [round((lo + i * width) * scale, 6) for i in range(bins + 1)]
        return {"edges": edges, "counts": counts}

    def seed_stats(self, scale: float = 1.0) -> dict[str, Any]:
        """``{value, stats: {...}}`` in the seed results format; ``scale`` converts units (µs to ms: 0.001)."""
        sd = self.stddev()
        return {
            "value": round(self.mean * scale, 6),
            "stats": {
                "count": self.count,
                "sum": round(self.total * scale, 6),
                "mean": round(self.mean * scale, 6),
                "min": round((self.min or 0) * scale, 6),
                "max": round((self.max or 0) * scale, 6),
                "stddev": round(sd * scale, 6),
                "stderr": round(sd / math.sqrt(self.count) * scale, 6) if self.count else 0.0,
            },
        }

    def dump(self, keep_samples: int = 10_000) -> dict[str, Any]:
        """JSON form; at most ``keep_samples`` samples, drawn uniformly (not the first ones: those are the warm-up)."""
        # The sum of squares outgrows JSON's 64-bit integers (orjson refuses them) after ~5,000 one-minute answers
        # in microseconds: past that it is written as a decimal string, and load reads either.
        squares: int | str = self.squares if self.squares < 2**63 else str(self.squares)
        return {"count": self.count, "total": self.total, "squares": squares, "min": self.min,
                "max": self.max, "samples": subsample(self.samples, keep_samples).tolist()}

    @classmethod
    def load(cls, data: dict[str, Any], keep: int = MAX_SAMPLES) -> Summary:
        # A file may hold more samples than are kept now (written with a larger MAX_SAMPLES): a uniform draw of
        # them, not the first ones (those are the run's warm-up).
        samples = subsample(array("q", data.get("samples", [])), keep)
        return cls(int(data["count"]), int(data["total"]), int(data["squares"]), data.get("min"), data.get("max"),
                   samples, keep)


# -- numbers as data: a dataclass of counters and summaries, dumped, loaded and merged field by field --------------
# A field is an int (summed), a Counter (added), a Summary (merged), or a dict of Summaries (merged per key); a field
# with ``metadata={"merge": f}`` is merged by ``f(a, b)`` instead, and one with ``metadata={"persist": False}`` is
# neither dumped nor loaded.


def _persisted(obj: Any) -> list[Field[Any]]:
    return [f for f in fields(obj) if f.metadata.get("persist", True)]


def dump_fields(obj: Any, keep_samples: int) -> dict[str, Any]:
    """The persisted fields of a dataclass as JSON; at most ``keep_samples`` samples per summary."""
    out: dict[str, Any] = {}
    for f in _persisted(obj):
        v = getattr(obj, f.name)
        if isinstance(v, Summary):
            v = v.dump(keep_samples)
        elif isinstance(v, dict) and v and all(isinstance(s, Summary) for s in v.values()):
            v = {k: s.dump(keep_samples) for k, s in v.items()}
        elif isinstance(v, Counter):
            v = dict(v)
        out[f.name] = v
    return out


def load_fields(empty: T, data: dict[str, Any]) -> T:
    """``empty`` (a dataclass with its defaults) with the persisted fields ``data`` holds; a field the data lacks
    (written before it existed) keeps its default. Summaries keep as many samples as the default's ``keep``."""
    for f in _persisted(empty):
        if f.name not in data:
            continue
        v, new = getattr(empty, f.name), data[f.name]
        if isinstance(v, Summary):
            new = Summary.load(new, keep=v.keep)
        elif isinstance(v, dict) and v and all(isinstance(s, Summary) for s in v.values()):
            new = {**v, **{k: Summary.load(s, keep=v[k].keep) for k, s in new.items() if k in v}}
        elif isinstance(v, Counter):
            new = Counter(new)
        elif isinstance(v, int) and not isinstance(v, bool):
            new = int(new)
        setattr(empty, f.name, new)
    return empty


def merge_fields(a: T, b: T, out: T) -> T:
    """``out`` with every field of ``a`` and ``b`` merged (see above); returns ``out``."""
    for f in fields(out):  # type: ignore[arg-type]  # T is a dataclass by contract; TypeVar cannot say so
        x, y = getattr(a, f.name), getattr(b, f.name)
        merge = f.metadata.get("merge")
        if merge is not None:
            v = merge(x, y)
        elif isinstance(x, Summary):
            v = x.merge(y)
        elif isinstance(x, dict) and not isinstance(x, Counter):
            v = {k: x[k].merge(y[k]) for k in x}
        else:
            v = x + y  # ints and Counters
        setattr(out, f.name, v)
    return out


def copy_fields(obj: T) -> T:
    """A new ``obj`` with the same numbers: counters and samples copied (cheap: arrays copy as memory), so ``obj``
    may go on counting while the copy is read elsewhere."""
    values: dict[str, Any] = {}
    for f in fields(obj):  # type: ignore[arg-type]  # as in merge_fields
        v = getattr(obj, f.name)
        if isinstance(v, Summary):
            v = v.copy()
        elif isinstance(v, dict):
            v = v.copy() if isinstance(v, Counter) else {k: s.copy() for k, s in v.items()}
        values[f.name] = v
    return type(obj)(**values)
