"""``pgml.rank``: documents scored against a query by a cross-encoder, best first, as
PostgresML does with sentence-transformers' ``CrossEncoder.rank``."""

from __future__ import annotations

import inspect
import json
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from handlers.errors import PgmlError, invalid_argument
from handlers.files import rights_of
from handlers.signatures import Args, CallContext

PROXY_OPTIONS = frozenset({"show_progress_bar", "device", "pool", "query", "documents", "self"})
"""``CrossEncoder.rank`` arguments the proxy sets itself."""


class CrossEncoderRanker:
    """One loaded cross-encoder; one ranking at a time on its model."""

    def __init__(self, path: Path, device: str) -> None:
        from sentence_transformers import CrossEncoder

        self.encoder = CrossEncoder(str(path), device=device)
        self.model = self.encoder.model
        self._lock = threading.Lock()

    def rank(self, query: str, documents: list[str], options: dict[str, Any]) -> list[Any]:
        with self._lock:
            try:
                ranked = self.encoder.rank(query, documents, show_progress_bar=False, **options)
            except (ValueError, TypeError) as exc:
                raise invalid_argument(f"pgml.rank: {exc}") from exc
        return [(int(r["corpus_id"]), float(r["score"]), r.get("text")) for r in ranked]


def rank_options(kwargs: Any) -> dict[str, Any]:
    """``kwargs``: ``CrossEncoder.rank`` arguments (``top_k``, ``return_documents``,
    ``batch_size``, ...)."""
    from sentence_transformers import CrossEncoder

    parsed = json.loads(kwargs) if isinstance(kwargs, str) else kwargs
    if not isinstance(parsed, dict):
        raise invalid_argument("kwargs must be a JSON object", hint="""'{"top_k": 3}'""")
    known = set(inspect.signature(CrossEncoder.rank).parameters) - PROXY_OPTIONS
    unknown = sorted(set(parsed) - known)
    if unknown:
        raise invalid_argument(
            f'unknown pgml.rank option "{unknown[0]}"', hint="Options: " + ", ".join(sorted(known))
        )
    top_k = parsed.get("top_k")
    if top_k is not None and (not isinstance(top_k, int) or isinstance(top_k, bool) or top_k < 1):
        raise invalid_argument("pgml.rank option top_k must be a positive integer")
    if "return_documents" in parsed and not isinstance(parsed["return_documents"], bool):
        raise invalid_argument("pgml.rank option return_documents must be true or false")
    return parsed


async def rank(ctx: CallContext, batch: Sequence[Args]) -> list[Any]:
    services = ctx.services
    results: list[Any] = []
    for transformer, query, documents, kwargs in batch:
        options = rank_options(kwargs)
        if any(d is None for d in documents):
            raise PgmlError("22004", "pgml.rank documents must not contain NULL")
        if not documents:
            results.append([])
            continue
        texts = [str(d) for d in documents]
        services.capacity.check_inputs("pgml.rank", [str(query), *texts])
        async with services.lease(
            "cross-encoder",
            transformer,
            CrossEncoderRanker,
            rights=rights_of(ctx),
            stopped=ctx.cancelled,
        ) as ranker:
            results.append(
                await services.infer(ctx, ranker.model, ranker.rank, str(query), texts, options)
            )
        ctx.check_cancel()
    return results
