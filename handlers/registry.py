"""Every pgml function the proxy runs, by name."""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

import proxy
from handlers.access import authorize_serving
from handlers.embedding import SentenceEmbedder, embed_options
from handlers.errors import invalid_argument
from handlers.functions import Args, CallContext, Function, Handler, Overload, Param
from handlers.inference import (
    LABEL,
    deploy_model,
    deploy_strategy,
    generate_array,
    generate_text,
    predict_array,
    predict_proba_array,
    predict_proba_text,
    predict_text,
)
from handlers.loading import load_dataset
from handlers.tuning.tune import tune


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


_PROJECT = Param("project_name", "text")


def _served(params: tuple[Param, ...], returns: str, handler: Handler) -> Overload:
    """A call that serves a project's deployed model: only to roles that can read it."""
    return Overload(params, returns, handler, authorize=authorize_serving)


_CONFIG = Param("config", "jsonb", "{}", required=False)
_DEPLOY_COLUMNS = (("project", "text"), ("strategy", "text"), ("algorithm", "text"))

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
    "tune": Function(
        "tune",
        (
            Overload(
                (
                    Param("project_name", "text"),
                    Param("task", "text", None, required=False),
                    Param("relation_name", "text", None, required=False),
                    Param("y_column_name", "text", None, required=False),
                    Param("model_name", "text", None, required=False),
                    Param("hyperparams", "jsonb", "{}", required=False),
                    Param("test_size", "real", 0.25, required=False),
                    Param("test_sampling", "text", "random", required=False),
                    Param("automatic_deploy", "boolean", True, required=False),
                ),
                "record",
                tune,
                set_returning=True,
                columns=(
                    ("project", "text"),
                    ("task", "text"),
                    ("algorithm", "text"),
                    ("deployed", "boolean"),
                ),
                row_dependent_ok=False,
                strict=False,
            ),
        ),
    ),
    "predict": Function(
        "predict",
        (
            _served((_PROJECT, Param("input", "text")), LABEL, predict_text),
            _served((_PROJECT, Param("inputs", "text[]")), LABEL + "[]", predict_array),
        ),
    ),
    "predict_proba": Function(
        "predict_proba",
        (
            _served((_PROJECT, Param("input", "text")), "jsonb", predict_proba_text),
            _served((_PROJECT, Param("inputs", "text[]")), "jsonb", predict_proba_array),
        ),
    ),
    "generate": Function(
        "generate",
        (
            _served((_PROJECT, Param("input", "text"), _CONFIG), "text", generate_text),
            _served((_PROJECT, Param("inputs", "text[]"), _CONFIG), "text[]", generate_array),
        ),
    ),
    "deploy": Function(
        "deploy",
        (
            Overload(
                (
                    _PROJECT,
                    Param("strategy", "text"),
                    Param("algorithm", "text", None, required=False),
                ),
                "record",
                deploy_strategy,
                set_returning=True,
                columns=_DEPLOY_COLUMNS,
                row_dependent_ok=False,
                strict=False,
            ),
            Overload(
                (Param("model_id", "bigint"),),
                "record",
                deploy_model,
                set_returning=True,
                columns=_DEPLOY_COLUMNS,
                row_dependent_ok=False,
            ),
        ),
    ),
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
