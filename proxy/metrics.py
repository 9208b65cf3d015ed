"""Counters the proxy keeps for ``/metrics``, as plain Python numbers.

Incremented on the relay's hot path, so this module imports nothing: the dashboard turns
the numbers into Prometheus metric families when ``/metrics`` is read, from a
:class:`Counters` snapshot that adds up every relay process of the proxy.
"""

from __future__ import annotations

from bisect import bisect_left
from dataclasses import dataclass, field
from typing import Any, TypeVar

Key = TypeVar("Key")

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


@dataclass
class Counters:
    """A copy of this module's numbers that can cross processes (as JSON) and be added up."""

    connections_open: int = 0
    connections_opened: int = 0
    connections_closed: int = 0
    statements_relayed: int = 0
    calls: dict[tuple[str, str], int] = field(default_factory=dict)
    rows_in: dict[str, int] = field(default_factory=dict)
    rows_out: dict[str, int] = field(default_factory=dict)
    latency: dict[str, tuple[list[int], int, float]] = field(default_factory=dict)
    """By function: the bucket counts (not cumulative), the count and the sum."""

    def add(self, other: Counters) -> None:
        self.connections_open += other.connections_open
        self.connections_opened += other.connections_opened
        self.connections_closed += other.connections_closed
        self.statements_relayed += other.statements_relayed
        _add_counts(self.calls, other.calls)
        _add_counts(self.rows_in, other.rows_in)
        _add_counts(self.rows_out, other.rows_out)
        for function, (buckets, count, total) in other.latency.items():
            held = self.latency.get(function)
            if held is None:
                self.latency[function] = (list(buckets), count, total)
            else:
                merged = [a + b for a, b in zip(held[0], buckets, strict=True)]
                self.latency[function] = (merged, held[1] + count, held[2] + total)

    def cumulative(self, function: str) -> list[tuple[str, float]]:
        """The latency buckets of ``function`` as Prometheus reads them (cumulative)."""
        running = 0
        out: list[tuple[str, float]] = []
        bounds = (*LATENCY_BUCKETS, float("inf"))
        for bound, n in zip(bounds, self.latency[function][0], strict=True):
            running += n
            out.append(("+Inf" if bound == float("inf") else repr(bound), float(running)))
        return out

    def to_json(self) -> dict[str, Any]:
        data = {k: v for k, v in vars(self).items() if k != "calls"}
        data["calls"] = [[f, s, n] for (f, s), n in self.calls.items()]
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Counters:
        fields = dict(data)
        fields["calls"] = {(f, s): int(n) for f, s, n in data["calls"]}
        fields["latency"] = {
            f: (list(b), int(c), float(t)) for f, (b, c, t) in data["latency"].items()
        }
        return cls(**fields)


def _add_counts(mine: dict[Key, int], theirs: dict[Key, int]) -> None:
    for key, n in theirs.items():
        mine[key] = mine.get(key, 0) + n


def snapshot(connections_open: int) -> Counters:
    """This process's numbers now."""
    return Counters(
        connections_open=connections_open,
        connections_opened=connections_opened,
        connections_closed=connections_closed,
        statements_relayed=statements_relayed,
        calls=dict(calls),
        rows_in=dict(rows_in),
        rows_out=dict(rows_out),
        latency={f: (list(h.buckets), h.count, h.total) for f, h in latency.items()},
    )
