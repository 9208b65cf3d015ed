"""``/metrics``: the proxy's counters (:mod:`proxy.metrics`, added up over its relay
processes) and its state as Prometheus metric families, built each time the page is read
(``prometheus_client`` is imported then, never on the proxy's hot path)."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from typing import Any

from proxy.metrics import Counters

ALL_MODELS = "all"
"""The ``model`` label of per-model series summed over a kind (no names shown)."""


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

    def __init__(self, counters: Counters, models: Any, name_models: bool) -> None:
        self._counters = counters
        self._models = models
        """Returns the proxy's ModelCache, or None before the first pgml call."""
        self._name_models = name_models
        """Whether per-model series carry the model's name (project names, paths): only
        where ``/metrics`` needs a login. Else they are summed per kind, ``model="all"``."""

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import (
            CounterMetricFamily,
            GaugeMetricFamily,
            HistogramMetricFamily,
        )

        counters = self._counters
        yield CounterMetricFamily(
            "pgml_proxy_connections",
            "Client connections accepted.",
            value=counters.connections_opened,
        )
        yield GaugeMetricFamily(
            "pgml_proxy_connections_open",
            "Client connections open now.",
            value=counters.connections_open,
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
        for function, (_, _, total) in sorted(counters.latency.items()):
            histogram.add_metric([function], counters.cumulative(function), sum_value=total)
        yield histogram
        for name, values, text in (
            ("pgml_proxy_rows_in", counters.rows_in, "Argument rows given to per-row pgml calls."),
            ("pgml_proxy_rows_out", counters.rows_out, "Results returned by per-row pgml calls."),
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
            "pgml_proxy_model_bytes",
            'Bytes of each loaded model (of each kind, model="all", unless /metrics needs a '
            "login).",
            labels=["model", "kind"],
        )
        used = GaugeMetricFamily(
            "pgml_proxy_model_last_used_seconds",
            'When each loaded model (the latest of each kind, model="all", unless /metrics '
            "needs a login) was last used (Unix time).",
            labels=["model", "kind"],
        )
        if self._name_models:
            for model in loaded:
                sizes.add_metric([model.name, model.kind], model.bytes)
                used.add_metric([model.name, model.kind], model.last_used)
        else:
            for kind in sorted({m.kind for m in loaded}):
                of_kind = [m for m in loaded if m.kind == kind]
                sizes.add_metric([ALL_MODELS, kind], sum(m.bytes for m in of_kind))
                used.add_metric([ALL_MODELS, kind], max(m.last_used for m in of_kind))
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
    """The Prometheus text of the proxy's counters and models."""

    def __init__(self, models: Any, *, name_models: bool = False) -> None:
        self._models = models
        self._name_models = name_models

    def render(self, counters: Counters) -> bytes:
        from prometheus_client import CollectorRegistry, generate_latest

        registry = CollectorRegistry(auto_describe=False)
        registry.register(_Collector(counters, self._models, self._name_models))
        return generate_latest(registry)
