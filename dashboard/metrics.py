"""``/metrics``: the proxy's counters (:mod:`proxy.metrics`) and its state as Prometheus
metric families, built each time the page is read (``prometheus_client`` is imported
then, never on the proxy's hot path)."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from typing import Any

from proxy import metrics as counters


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
            "pgml_proxy_connections",
            "Client connections accepted.",
            value=counters.connections_opened,
        )
        yield GaugeMetricFamily(
            "pgml_proxy_connections_open", "Client connections open now.", value=self._open()
        )
        yield CounterMetricFamily(
            "pgml_proxy_statements_relayed",
            "Query/Parse messages relayed upstream without a pgml call.",
            value=counters.statements_relayed,
        )
        family = CounterMetricFamily(
            "pgml_proxy_pgml_calls", "pgml function calls.", labels=["function", "status"]
        )
        for (function, status), n in sorted(counters.calls.items()):
            family.add_metric([function, status], n)
        yield family
        histogram = HistogramMetricFamily(
            "pgml_proxy_pgml_call_seconds",
            "Duration of pgml function calls.",
            labels=["function"],
        )
        for function, h in sorted(counters.latency.items()):
            histogram.add_metric([function], h.cumulative(), sum_value=h.total)
        yield histogram
        for name, values, text in (
            ("pgml_proxy_rows_in", counters.rows_in, "Argument rows given to per-row pgml calls."),
            ("pgml_proxy_rows_out", counters.rows_out, "Results returned by per-row pgml calls."),
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
