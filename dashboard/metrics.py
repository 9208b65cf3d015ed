"""Counters the proxy increments, kept as plain Python numbers.

The proxy imports this module on its hot path, so it imports nothing heavy:
``prometheus_client`` is imported only by :func:`render`, when ``/metrics`` is read,
and turns these numbers into metric families then.
"""

from __future__ import annotations

import sys
from bisect import bisect_left
from collections.abc import Iterator
from typing import Any

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


def _model_memory(models: dict[Any, Any]) -> int:
    """Bytes of parameters of the cached torch models (0 unless torch is imported)."""
    torch = sys.modules.get("torch")
    if torch is None:
        return 0
    seen: set[int] = set()
    total = 0
    for loaded in models.values():
        for candidate in (loaded, getattr(loaded, "model", None)):
            parameters = getattr(candidate, "parameters", None)
            if not callable(parameters) or not isinstance(candidate, torch.nn.Module):
                continue
            for p in parameters():
                if id(p) not in seen:
                    seen.add(id(p))
                    total += p.numel() * p.element_size()
    return total


def _gpu_memory() -> dict[str, int]:
    """Allocated and reserved CUDA memory, only when torch is already imported."""
    torch = sys.modules.get("torch")
    if torch is None or not torch.cuda.is_available():
        return {}
    return {
        "allocated": int(torch.cuda.memory_allocated()),
        "reserved": int(torch.cuda.memory_reserved()),
    }


class _Collector:
    """Reads the numbers above (and the proxy's state) each time ``/metrics`` is scraped."""

    def __init__(self, open_connections: Any, models: Any) -> None:
        self._open = open_connections
        self._models = models

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import (
            CounterMetricFamily,
            GaugeMetricFamily,
            HistogramMetricFamily,
        )

        yield CounterMetricFamily(
            "pgml_proxy_connections", "Client connections accepted.", value=connections_opened
        )
        yield GaugeMetricFamily(
            "pgml_proxy_connections_open", "Client connections open now.", value=self._open()
        )
        yield CounterMetricFamily(
            "pgml_proxy_statements_relayed",
            "Query/Parse messages relayed upstream without a pgml call.",
            value=statements_relayed,
        )
        family = CounterMetricFamily(
            "pgml_proxy_pgml_calls", "pgml function calls.", labels=["function", "status"]
        )
        for (function, status), n in sorted(calls.items()):
            family.add_metric([function, status], n)
        yield family
        histogram = HistogramMetricFamily(
            "pgml_proxy_pgml_call_seconds",
            "Duration of pgml function calls.",
            labels=["function"],
        )
        for function, h in sorted(latency.items()):
            histogram.add_metric([function], h.cumulative(), sum_value=h.total)
        yield histogram
        for name, values, text in (
            ("pgml_proxy_rows_in", rows_in, "Argument rows given to per-row pgml calls."),
            ("pgml_proxy_rows_out", rows_out, "Results returned by per-row pgml calls."),
        ):
            rows = CounterMetricFamily(name, text, labels=["function"])
            for function, n in sorted(values.items()):
                rows.add_metric([function], n)
            yield rows
        models = self._models()
        yield GaugeMetricFamily(
            "pgml_proxy_models_loaded", "Models loaded in this proxy.", value=len(models)
        )
        yield GaugeMetricFamily(
            "pgml_proxy_model_parameter_bytes",
            "Bytes of parameters of the loaded models.",
            value=_model_memory(models),
        )
        gpu = _gpu_memory()
        if gpu:
            memory = GaugeMetricFamily(
                "pgml_proxy_gpu_memory_bytes", "CUDA memory of this process.", labels=["kind"]
            )
            for kind, n in gpu.items():
                memory.add_metric([kind], n)
            yield memory


class Exporter:
    """A ``prometheus_client`` registry over this module's numbers."""

    def __init__(self, open_connections: Any, models: Any) -> None:
        from prometheus_client import CollectorRegistry

        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(_Collector(open_connections, models))

    def render(self) -> bytes:
        from prometheus_client import generate_latest

        return generate_latest(self.registry)
