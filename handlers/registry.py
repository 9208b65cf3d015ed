"""Every pgml function the proxy runs, by name."""

from __future__ import annotations

import functools
import json
from collections import defaultdict
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import proxy
from handlers.access import authorize_serving, authorize_serving_model
from handlers.chunking import chunk
from handlers.classic.predict import (
    decompose,
    predict_batch,
    predict_features,
    predict_joint,
    predict_model_batch,
    predict_model_features,
    predict_model_joint,
    predict_model_proba,
    predict_model_row,
    predict_proba_features,
    predict_row,
)
from handlers.classic.train import train, train_joint
from handlers.embedding import SentenceEmbedder, embed_options, trusted_code
from handlers.errors import invalid_argument
from handlers.files import rights_of
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
from handlers.rank import rank
from handlers.signatures import Args, CallContext, Function, Handler, Overload, Param
from handlers.transform import (
    authorize_transform,
    stream_rows,
    transform_messages,
    transform_stream,
    transform_texts,
)
from handlers.tuning.tune import tune


async def authorize_model(ctx: CallContext, args: Args) -> None:
    """The hook of ``embed`` and ``rank``: the model named first is checked, and the
    caller's privilege asked if it is a server path, while the session may be used."""
    if args and isinstance(args[0], str):
        await ctx.services.check_model_for(ctx, args[0])


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
    """Embed each group of texts with its (model, kwargs), a batch of them per model
    call: a cancel stops the work between two."""
    services = ctx.services
    out: list[list[list[float]]] = []
    for (name, kwargs), group in zip(keys, texts, strict=True):
        given = _kwargs(kwargs)
        options = embed_options(given, services.device)
        remote_code = trusted_code(given)
        services.capacity.check_inputs("pgml.embed", group)
        async with services.lease(
            "embedding-remote-code" if remote_code else "embedding",
            name,
            functools.partial(SentenceEmbedder, trust_remote_code=remote_code),
            rights=rights_of(ctx),
            remote_code=remote_code,
            stopped=ctx.cancelled,
        ) as embedder:
            out.append(await services.in_pieces(ctx, group, _embedding(ctx, embedder, options)))
    return out


def _embedding(
    ctx: CallContext, embedder: SentenceEmbedder, options: dict[str, Any]
) -> Callable[[list[str]], Awaitable[list[Any]]]:
    async def embed(piece: list[str]) -> list[Any]:
        work = functools.partial(embedder.embed, piece, **options)
        vectors: list[Any] = await ctx.services.infer(ctx, embedder.model, work)
        return vectors

    return embed


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


def _samples(args: Sequence[Any]) -> bool:
    """Whether ``pgml.generate`` samples: its config asks so, or is read per row."""
    config = args[2]
    if isinstance(config, str):
        config = json.loads(config)
    return not isinstance(config, dict) or bool(config.get("do_sample"))


_SAMPLING_TASKS = frozenset({"text-generation", "conversational"})
"""Pipelines that sample unless ``do_sample`` is false (transformers' defaults)."""


def _transform_samples(args: Sequence[Any]) -> bool:
    """Whether ``pgml.transform`` samples: its args ask so, or a generation task does by
    default; unknown (read per row) counts as sampling."""
    task, options = args[0], args[1]
    if isinstance(task, str) and task.lstrip().startswith("{"):
        task = json.loads(task)
    if isinstance(options, str):
        options = json.loads(options)
    if task is None or not isinstance(options, dict):
        return True
    name = task.get("task") if isinstance(task, dict) else task
    sample = options.get("do_sample")
    if sample is not None:
        return bool(sample)
    return str(name).replace("_", "-") in _SAMPLING_TASKS


def _transform_overloads() -> tuple[Overload, ...]:
    """PostgresML's four: the task as text or JSONB, the inputs as TEXT[] or JSONB[]."""
    overloads = []
    for inputs, handler in (("text[]", transform_texts), ("jsonb[]", transform_messages)):
        for task in ("text", "jsonb"):
            params = (
                Param("task", task),
                Param("args", "jsonb", "{}", required=False),
                Param("inputs", inputs, [], required=False),
                Param("cache", "boolean", False, required=False),
            )
            overloads.append(
                Overload(
                    params,
                    "jsonb",
                    handler,
                    varies=_transform_samples,
                    authorize=authorize_transform,
                )
            )
    return tuple(overloads)


def _transform_stream_overloads() -> tuple[Overload, ...]:
    """One text input, or one conversation of JSONB messages; rows of generated text."""
    overloads = []
    for name, kind, default in (("input", "text", ""), ("inputs", "jsonb[]", [])):
        for task in ("text", "jsonb"):
            params = (
                Param("task", task),
                Param("args", "jsonb", "{}", required=False),
                Param(name, kind, default, required=False),
                Param("cache", "boolean", False, required=False),
            )
            overloads.append(
                Overload(
                    params,
                    "text",
                    transform_stream,
                    set_returning=True,
                    row_dependent_ok=False,
                    stream=stream_rows,
                    authorize=authorize_transform,
                )
            )
    return tuple(overloads)


_PROJECT = Param("project_name", "text")
_MODEL = Param("model_id", "bigint")
_FEATURES = Param("features", "real[]")


def _served(
    params: tuple[Param, ...],
    returns: str,
    handler: Handler,
    varies: Callable[[Sequence[Any]], bool] | None = None,
) -> Overload:
    """A call that serves a project's deployed model, or a model named by its id: only
    to roles that can read it."""
    authorize = authorize_serving_model if params[0] is _MODEL else authorize_serving
    return Overload(params, returns, handler, varies=varies, authorize=authorize)


def _predict_batch(named: Param, handler: Handler) -> Overload:
    return Overload(
        (named, _FEATURES),
        "real",
        handler,
        set_returning=True,
        row_dependent_ok=False,
        authorize=authorize_serving_model if named is _MODEL else authorize_serving,
    )


_TRAIN_COLUMNS = (
    ("project", "text"),
    ("task", "text"),
    ("algorithm", "text"),
    ("deployed", "boolean"),
)
_CONFIG = Param("config", "jsonb", "{}", required=False)


def _train_overload(labels: str, handler: Handler) -> Overload:
    """PostgresML's ``train`` (one label column, ``text``) or ``train_joint`` (``text[]``)."""
    return Overload(
        (
            Param("project_name", "text"),
            Param("task", "text", None, required=False),
            Param("relation_name", "text", None, required=False),
            Param("y_column_name", labels, None, required=False),
            Param("algorithm", "text", "linear", required=False),
            Param("hyperparams", "jsonb", "{}", required=False),
            Param("search", "text", None, required=False),
            Param("search_params", "jsonb", "{}", required=False),
            Param("search_args", "jsonb", "{}", required=False),
            Param("test_size", "real", 0.25, required=False),
            Param("test_sampling", "text", "random", required=False),
            Param("runtime", "text", None, required=False),
            Param("automatic_deploy", "boolean", True, required=False),
            Param("materialize_snapshot", "boolean", False, required=False),
            Param("preprocess", "jsonb", "{}", required=False),
        ),
        "record",
        handler,
        set_returning=True,
        columns=_TRAIN_COLUMNS,
        row_dependent_ok=False,
        strict=False,
    )


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
                    Param("materialize_snapshot", "boolean", False, required=False),
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
    "train": Function("train", (_train_overload("text", train),)),
    "train_joint": Function("train_joint", (_train_overload("text[]", train_joint),)),
    "predict": Function(
        "predict",
        (
            _served((_PROJECT, Param("input", "text")), LABEL, predict_text),
            _served((_PROJECT, Param("inputs", "text[]")), LABEL + "[]", predict_array),
            _served((_PROJECT, _FEATURES), "real", predict_features),
            _served((_PROJECT, Param("row", "record")), "real", predict_row),
            _served((_MODEL, _FEATURES), "real", predict_model_features),
            _served((_MODEL, Param("row", "record")), "real", predict_model_row),
        ),
    ),
    "predict_joint": Function(
        "predict_joint",
        (
            _served((_PROJECT, _FEATURES), "real[]", predict_joint),
            _served((_MODEL, _FEATURES), "real[]", predict_model_joint),
        ),
    ),
    "predict_batch": Function(
        "predict_batch",
        (_predict_batch(_PROJECT, predict_batch), _predict_batch(_MODEL, predict_model_batch)),
    ),
    "predict_proba": Function(
        "predict_proba",
        (
            _served((_PROJECT, Param("input", "text")), "jsonb", predict_proba_text),
            _served((_PROJECT, Param("inputs", "text[]")), "jsonb", predict_proba_array),
            _served((_PROJECT, _FEATURES), "real[]", predict_proba_features),
            _served((_MODEL, _FEATURES), "real[]", predict_model_proba),
        ),
    ),
    "decompose": Function(
        "decompose",
        (_served((_PROJECT, Param("vector", "real[]")), "real[]", decompose),),
    ),
    "generate": Function(
        "generate",
        (
            _served(
                (_PROJECT, Param("input", "text"), _CONFIG), "text", generate_text, varies=_samples
            ),
            _served(
                (_PROJECT, Param("inputs", "text[]"), _CONFIG),
                "text[]",
                generate_array,
                varies=_samples,
            ),
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
                authorize=authorize_model,
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
                authorize=authorize_model,
            ),
        ),
    ),
    "chunk": Function(
        "chunk",
        (
            Overload(
                (
                    Param("splitter", "text"),
                    Param("text", "text"),
                    Param("kwargs", "jsonb", "{}", required=False),
                ),
                "record",
                chunk,
                set_returning=True,
                columns=(("chunk_index", "bigint"), ("chunk", "text")),
            ),
        ),
    ),
    "transform": Function("transform", _transform_overloads()),
    "transform_stream": Function("transform_stream", _transform_stream_overloads()),
    "rank": Function(
        "rank",
        (
            Overload(
                (
                    Param("transformer", "text"),
                    Param("query", "text"),
                    Param("documents", "text[]"),
                    Param("kwargs", "jsonb", "{}", required=False),
                ),
                "record",
                rank,
                set_returning=True,
                columns=(("corpus_id", "integer"), ("score", "real"), ("text", "text")),
                authorize=authorize_model,
            ),
        ),
    ),
}
