"""Every pgml function the proxy runs, by name."""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

import proxy
from handlers.embedding import SentenceEmbedder, embed_options
from handlers.errors import invalid_argument
from handlers.functions import Args, CallContext, Function, Overload, Param
from handlers.loading import load_dataset


async def version(ctx: CallContext, batch: Sequence[Args]) -> list[Any]:
    return [proxy.__version__ for _ in batch]


def _kwargs(value: Any) -> dict[str, Any]:
    parsed = json.loads(value) if isinstance(value, str) else value
    if not isinstance(parsed, dict):
        raise invalid_argument("kwargs must be a JSON object", hint="For example '{}'.")
    return parsed


async def _embed_groups(
    ctx: CallContext, keys: list[tuple[str, str]], texts: list[list[str]]
) -> list[list[list[float]]]:
    """Embed each group of texts with its (model, kwargs); one model call per group."""
    services = ctx.services
    out: list[list[list[float]]] = []
    for (name, kwargs), group in zip(keys, texts, strict=True):
        options = embed_options(_kwargs(kwargs))
        embedder = await services.model("embedding", name, SentenceEmbedder)
        out.append(await services.run(lambda e=embedder, g=group, o=options: e.embed(g, **o)))
    return out


async def embed_text(ctx: CallContext, batch: Sequence[Args]) -> list[Any]:
    groups: dict[tuple[str, str], list[int]] = defaultdict(list)
    for index, (name, _text, kwargs) in enumerate(batch):
        groups[(name, json.dumps(kwargs) if not isinstance(kwargs, str) else kwargs)].append(index)
    keys = list(groups)
    vectors = await _embed_groups(ctx, keys, [[batch[i][1] for i in groups[k]] for k in keys])
    results: list[Any] = [None] * len(batch)
    for key, group_vectors in zip(keys, vectors, strict=True):
        for index, vector in zip(groups[key], group_vectors, strict=True):
            results[index] = vector
    return results


async def embed_array(ctx: CallContext, batch: Sequence[Args]) -> list[Any]:
    keys = [
        (name, kwargs if isinstance(kwargs, str) else json.dumps(kwargs))
        for name, _, kwargs in batch
    ]
    texts = [[t for t in inputs if t is not None] for _, inputs, _ in batch]
    return await _embed_groups(ctx, keys, texts)


FUNCTIONS: dict[str, Function] = {
    "load_dataset": Function(
        "load_dataset",
        (
            Overload(
                (
                    Param("source", "text"),
                    Param("subset", "text", None, required=False),
                    Param("limit", "bigint", None, required=False),
                    Param("kwargs", "jsonb", "{}", required=False),
                ),
                "record",
                load_dataset,
                set_returning=True,
                columns=(("table_name", "text"), ("rows", "bigint")),
                row_dependent_ok=False,
                strict=False,
            ),
        ),
    ),
    "version": Function("version", (Overload((), "text", version),)),
    "embed": Function(
        "embed",
        (
            Overload(
                (
                    Param("transformer", "text"),
                    Param("text", "text"),
                    Param("kwargs", "jsonb", "{}", required=False),
                ),
                "real[]",
                embed_text,
            ),
            Overload(
                (
                    Param("transformer", "text"),
                    Param("inputs", "text[]"),
                    Param("kwargs", "jsonb", "{}", required=False),
                ),
                "real[]",
                embed_array,
                set_returning=True,
                row_dependent_ok=False,
            ),
        ),
    ),
}
