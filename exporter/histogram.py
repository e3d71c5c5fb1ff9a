"""An immutable histogram: the poller and the task state build new ones, the collector only reads."""

from __future__ import annotations

import bisect
import math
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Exemplar:
    """The last observation that fell in a bucket, to jump from a bucket to a task."""

    task_id: str
    value: float
    timestamp: float


@dataclass(frozen=True, slots=True)
class Histogram:
    bounds: tuple[float, ...]
    counts: tuple[int, ...]
    """Per bucket, not cumulative; one more than `bounds`, the last for +Inf."""
    total: float = 0.0
    exemplars: tuple[Exemplar | None, ...] = ()

    @classmethod
    def empty(cls, bounds: tuple[float, ...]) -> Histogram:
        size = len(bounds) + 1
        return cls(bounds, (0,) * size, 0.0, (None,) * size)

    def observe(self, value: float, exemplar: Exemplar | None = None) -> Histogram:
        index = bisect.bisect_left(self.bounds, value)
        counts = list(self.counts)
        counts[index] += 1
        exemplars = self.exemplars
        if exemplar is not None:
            exemplars = (*exemplars[:index], exemplar, *exemplars[index + 1 :])
        return Histogram(self.bounds, tuple(counts), self.total + value, exemplars)

    @property
    def count(self) -> int:
        return sum(self.counts)

    def cumulative(self) -> list[tuple[str, int, Exemplar | None]]:
        """(le, cumulative count, exemplar) per bucket, +Inf last, as the exposition wants."""
        rows = []
        running = 0
        for bound, count, exemplar in zip((*self.bounds, math.inf), self.counts, self.exemplars, strict=True):
            running += count
            rows.append((_le(bound), running, exemplar))
        return rows


def _le(bound: float) -> str:
    if math.isinf(bound):
        return "+Inf"
    return repr(float(bound))


def merged(histograms: list[Histogram]) -> Histogram:
    """The sum of histograms with the same bounds (e.g. over buckets folded into one label value)."""
    first = histograms[0]
    if len(histograms) == 1:
        return first
    counts = tuple(sum(column) for column in zip(*(h.counts for h in histograms), strict=True))
    exemplars = tuple(
        max((e for e in column if e is not None), key=lambda e: e.timestamp, default=None)
        for column in zip(*(h.exemplars for h in histograms), strict=True)
    )
    return Histogram(first.bounds, counts, sum(h.total for h in histograms), exemplars)
