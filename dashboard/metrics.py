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
        """Returns the proxy's ModelCache, or None before the first pgml call."""

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
        yield from self._model_families()
        gpu = _gpu_memory()
        if gpu:
            memory = GaugeMetricFamily(
                "pgml_proxy_gpu_memory_bytes", "CUDA memory of this process.", labels=["kind"]
            )
            for kind, n in gpu.items():
                memory.add_metric([kind], n)
            yield memory

    def _model_families(self) -> Iterator[Any]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        cache = self._models()
        loaded = [] if cache is None else cache.loaded()
        yield GaugeMetricFamily(
            "pgml_proxy_models_loaded", "Models loaded in this proxy.", value=len(loaded)
        )
        yield GaugeMetricFamily(
            "pgml_proxy_model_parameter_bytes",
            "Bytes of parameters and buffers of the loaded models.",
            value=sum(m.bytes for m in loaded),
        )
        sizes = GaugeMetricFamily(
            "pgml_proxy_model_bytes", "Bytes of each loaded model.", labels=["model", "kind"]
        )
        used = GaugeMetricFamily(
            "pgml_proxy_model_last_used_seconds",
            "When each loaded model was last used (Unix time).",
            labels=["model", "kind"],
        )
        for model in loaded:
            sizes.add_metric([model.name, model.kind], model.bytes)
            used.add_metric([model.name, model.kind], model.last_used)
        yield sizes
        yield used
        if cache is None:
            return
        if cache.known_budget is not None:
            yield GaugeMetricFamily(
                "pgml_proxy_model_memory_budget_bytes",
                "The model memory budget (--model-memory).",
                value=cache.known_budget,
            )
        yield GaugeMetricFamily(
            "pgml_proxy_model_memory_used_bytes",
            "Bytes held by loaded models, loads in progress and evicted models not yet freed.",
            value=cache.used,
        )
        for name, value, text in (
            ("pgml_proxy_model_evictions", cache.evictions, "Idle models evicted for room."),
            ("pgml_proxy_model_refusals", cache.refusals, "Loads refused for lack of room."),
            (
                "pgml_proxy_out_of_memory",
                cache.out_of_memory,
                "Calls failed by a device out-of-memory.",
            ),
        ):
            yield CounterMetricFamily(name, text, value=value)


class Exporter:
    """A ``prometheus_client`` registry over this module's numbers."""

    def __init__(self, open_connections: Any, models: Any) -> None:
        from prometheus_client import CollectorRegistry

        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(_Collector(open_connections, models))

    def render(self) -> bytes:
        from prometheus_client import generate_latest

        return generate_latest(self.registry)
