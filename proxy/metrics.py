"""Counters the proxy keeps for ``/metrics``, as plain Python numbers.

Incremented on the relay's hot path, so this module imports nothing: the dashboard turns
the numbers into Prometheus metric families when ``/metrics`` is read.
"""

from __future__ import annotations

from bisect import bisect_left

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
"""Upper bounds (seconds) of the pgml call latency histogram."""

connections_opened = 0
connections_closed = 0
statements_relayed = 0
"""Client Query/Parse messages relayed upstream without a pgml call."""

calls: dict[tuple[str, str], int] = {}
"""pgml calls by (function, status)."""
rows_in: dict[str, int] = {}
rows_out: dict[str, int] = {}


class _Histogram:
    """Cumulative-on-export bucket counts, a sum and a count."""

    __slots__ = ("buckets", "count", "total")

    def __init__(self) -> None:
        self.buckets = [0] * (len(LATENCY_BUCKETS) + 1)
        self.count = 0
        self.total = 0.0

    def observe(self, value: float) -> None:
        self.buckets[bisect_left(LATENCY_BUCKETS, value)] += 1
        self.count += 1
        self.total += value

    def cumulative(self) -> list[tuple[str, float]]:
        running = 0
        out: list[tuple[str, float]] = []
        for bound, n in zip((*LATENCY_BUCKETS, float("inf")), self.buckets, strict=True):
            running += n
            out.append(("+Inf" if bound == float("inf") else repr(bound), float(running)))
        return out


latency: dict[str, _Histogram] = {}


def record_call(function: str, ok: bool, seconds: float) -> None:
    """One pgml call's outcome and duration."""
    key = (function, "ok" if ok else "error")
    calls[key] = calls.get(key, 0) + 1
    histogram = latency.get(function)
    if histogram is None:
        histogram = latency[function] = _Histogram()
    histogram.observe(seconds)


def record_rows(function: str, given: int, returned: int) -> None:
    """Rows in and out of one batch of a per-row call."""
    rows_in[function] = rows_in.get(function, 0) + given
    rows_out[function] = rows_out.get(function, 0) + returned
