"""``pgml.predict``, ``pgml.predict_proba``, ``pgml.generate`` and ``pgml.deploy``.

Calls are grouped by project; each group goes to the project's deployed model through
the shared batcher, so rows of one statement and calls from many sessions share batches.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

from handlers.access import MODELS, PROJECTS, require_deploy, require_read
from handlers.batching import Work
from handlers.capacity import Capacity, Stopped
from handlers.classic.predict import ClassicPredictor
from handlers.errors import PgmlError
from handlers.files import rights_of
from handlers.predictor import Predictor, generation_options
from handlers.projects import Catalog, check_strategy, missing_model, missing_project
from handlers.signatures import Args, CallContext

LABEL = "label"
"""A result type that is the project's: REAL or TEXT labels, TEXT for generated text."""


async def result_type(services: Any, database: str, project: str) -> str:
    """The SQL type ``pgml.predict`` returns for ``project``."""
    return str((await services.deployment(database, project)).result_type)


async def _serve(
    ctx: CallContext,
    batch: Sequence[Args],
    operation: str,
    arrays: bool,
    options_at: int | None = None,
) -> list[Any]:
    """Run ``operation`` for each call's text (or texts); one model call per group."""
    groups: dict[tuple[str, str], list[int]] = defaultdict(list)
    for index, args in enumerate(batch):
        options = json.dumps(args[options_at], sort_keys=True) if options_at is not None else ""
        groups[(args[0], options)].append(index)
    results: list[Any] = [None] * len(batch)
    for (project, options), indexes in groups.items():
        _, predictor = await ctx.services.deployed(
            ctx.database, project, rights=rights_of(ctx), stopped=ctx.cancelled
        )
        if isinstance(predictor, ClassicPredictor):
            raise PgmlError(
                "0A000",
                f'project "{project}" is {predictor.task}: pgml.{operation} takes its '
                "features as an array of numbers",
            )
        _check_operation(project, predictor, operation)
        capacity = ctx.services.capacity
        for i in indexes:
            capacity.check_inputs(f"pgml.{operation}", batch[i][1] if arrays else [batch[i][1]])
        texts = _texts([batch[i][1] for i in indexes], arrays)
        work = _work(predictor, operation, json.loads(options) if options else {}, capacity)
        with ctx.services.using(predictor):
            key = (id(predictor), operation, options)
            outputs = iter(await ctx.services.submit(ctx, predictor.model, key, work, texts))
        for index in indexes:
            if arrays:
                results[index] = [None if t is None else next(outputs) for t in batch[index][1]]
            else:
                results[index] = next(outputs)
        ctx.check_cancel()
    return results


def _texts(values: list[Any], arrays: bool) -> list[str]:
    if not arrays:
        return [str(v) for v in values]
    return [str(t) for inputs in values for t in inputs if t is not None]


def _work(
    predictor: Predictor, operation: str, options: dict[str, Any], capacity: Capacity
) -> Work:
    if operation == "predict_proba":
        return lambda texts, _: predictor.probabilities(texts)

    def generate(texts: list[str], stopped: Stopped) -> list[Any]:
        stops = capacity.generation_stops(stopped) if predictor.generates_text else None
        if operation == "generate":
            return predictor.generate(texts, options, stops)
        return predictor.predict(texts, stops)

    return generate


def _check_operation(project: str, predictor: Predictor, operation: str) -> None:
    if operation == "predict_proba" and predictor.generates_text:
        raise PgmlError(
            "0A000",
            f'pgml.predict_proba needs a text-classification project; "{project}" is '
            f"{predictor.task}",
            hint="Use pgml.generate (or pgml.predict) for text output.",
        )
    if operation == "generate" and not predictor.generates_text:
        raise PgmlError(
            "0A000",
            f"pgml.generate needs a text-generation, translation or summarization project; "
            f'"{project}" is text-classification',
            hint="Use pgml.predict or pgml.predict_proba.",
        )


async def predict_text(ctx: CallContext, batch: Sequence[Args]) -> list[Any]:
    return await _serve(ctx, batch, "predict", arrays=False)


async def predict_array(ctx: CallContext, batch: Sequence[Args]) -> list[Any]:
    return await _serve(ctx, batch, "predict", arrays=True)


async def predict_proba_text(ctx: CallContext, batch: Sequence[Args]) -> list[Any]:
    return await _serve(ctx, batch, "predict_proba", arrays=False)


async def predict_proba_array(ctx: CallContext, batch: Sequence[Args]) -> list[Any]:
    return await _serve(ctx, batch, "predict_proba", arrays=True)


def _generation(ctx: CallContext, batch: Sequence[Args]) -> list[Args]:
    checked = [(p, t, generation_options(c)) for p, t, c in batch]
    for _, _, options in checked:
        ctx.services.capacity.check_generation("pgml.generate", options)
    return checked


async def generate_text(ctx: CallContext, batch: Sequence[Args]) -> list[Any]:
    return await _serve(ctx, _generation(ctx, batch), "generate", arrays=False, options_at=2)


async def generate_array(ctx: CallContext, batch: Sequence[Args]) -> list[Any]:
    return await _serve(ctx, _generation(ctx, batch), "generate", arrays=True, options_at=2)


async def deploy_strategy(ctx: CallContext, batch: Sequence[Args]) -> list[Any]:
    await ctx.services.ensure_catalog(ctx.database)
    catalog: Catalog = await ctx.services.catalog(ctx.database)
    rows = []
    await require_read(ctx.session, [PROJECTS, MODELS])
    for project_name, strategy, algorithm in batch:
        check_strategy(strategy)
        project = await catalog.project(project_name)
        if project is None:
            raise missing_project(project_name)
        await require_deploy(ctx.session, project, missing_project(project_name))
        chosen = await catalog.deploy(project, strategy, algorithm)
        rows.append([(project.name, strategy, chosen)])
    return rows


async def deploy_model(ctx: CallContext, batch: Sequence[Args]) -> list[Any]:
    await ctx.services.ensure_catalog(ctx.database)
    catalog: Catalog = await ctx.services.catalog(ctx.database)
    rows = []
    await require_read(ctx.session, [MODELS, PROJECTS])
    for (model_id,) in batch:
        project = await catalog.model_project(int(model_id))
        await require_deploy(ctx.session, project, missing_model(int(model_id)))
        algorithm = await catalog.deploy_model(int(model_id), project)
        rows.append([(project.name, "specific", algorithm)])
    return rows
