"""``pgml.transform`` and ``pgml.transform_stream``.

Calls are grouped by (task, args); each group's inputs go to its pipeline through the
shared batcher, so the rows of one statement and the calls of many sessions share
pipeline batches.  A call's result is what ``transformers.pipeline(task)(inputs, **args)``
gives, as JSONB.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
from collections import defaultdict
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Sequence
from typing import Any

from handlers.capacity import Stopped
from handlers.errors import PgmlError, invalid_argument
from handlers.files import FileRights, rights_of, with_rights
from handlers.modelcache import weights_bytes
from handlers.models import adapter_base
from handlers.pipelines import (
    COLLAPSING,
    CONVERSATIONAL,
    MODEL_KEYS,
    LoadedPipeline,
    TaskSpec,
    task_spec,
    transform_args,
)
from handlers.signatures import Args, CallContext

_DONE = object()


def check_pipeline(services: Any, spec: TaskSpec, rights: FileRights) -> None:
    """Refuse a task that names a model (its model, config, tokenizer, processors) that
    ``--allow-models`` does not allow or whose files the caller may not have read."""
    for name in spec.model_names():
        services.check_model(name, rights=rights, remote_code=spec.remote_code)


async def authorize_transform(ctx: CallContext, args: Args) -> None:
    """The hook of ``transform`` and ``transform_stream``: the task's model names are
    checked, and the caller's privilege asked if one is a server path, while the session
    may be used (calls read per row may not use it)."""
    if args and args[0] is not None:
        spec = task_spec(args[0])
        await with_rights(
            ctx, lambda rights: check_pipeline(ctx.services, spec, rights), thread=False
        )


@contextlib.asynccontextmanager
async def pipeline_lease(
    services: Any, spec: TaskSpec, rights: FileRights, stopped: Callable[[], bool]
) -> AsyncIterator[LoadedPipeline]:
    """The task's pipeline, loaded once per proxy within the model memory budget, held
    (never evicted) until the block ends.  Every call checks the caller's rights over the
    models it names, and over the base model of an adapter, loaded or not."""
    check_pipeline(services, spec, rights)
    key = ("pipeline", spec.key)
    loaded = services.models.touch(key)
    if loaded is None:
        folder = await services.resolve_model(
            spec.model, rights=rights, remote_code=spec.remote_code, stopped=stopped
        )
        folders = {
            name: await services.resolve_model(
                spec.options[name], rights=rights, remote_code=spec.remote_code, stopped=stopped
            )
            for name in MODEL_KEYS
            if name in spec.options
        }
        base = adapter_base(folder)
        if base is not None:
            services.check_model(base, rights=rights, remote_code=spec.remote_code)
        device = services.device
        precise = "dtype" in spec.options or "torch_dtype" in spec.options

        async def estimate() -> int:
            element = None if precise else (2 if device.startswith("cuda") else 4)
            return int(await services.run(weights_bytes, folder, element))

        async def load() -> LoadedPipeline:
            return await services.run(LoadedPipeline, spec, folder, device, folders)  # type: ignore[no-any-return]

        loaded = await services.models.get(
            key,
            load,
            name=f"{spec.model} ({spec.task})",
            kind="pipeline",
            estimate=estimate,
            stopped=stopped,
        )
    if loaded.base_model is not None:
        services.check_model(loaded.base_model, rights=rights, remote_code=spec.remote_code)
    with services.using(loaded):
        yield loaded


def _inputs(spec: TaskSpec, inputs: list[Any], messages: bool) -> list[Any]:
    """The pipeline items of one call: its texts, or for a chat its one conversation."""
    if any(i is None for i in inputs):
        raise PgmlError("22004", "pgml.transform inputs must not contain NULL")
    chat = messages and spec.pipeline_task == "text-generation"
    if spec.task == CONVERSATIONAL and not messages:
        raise invalid_argument(
            "conversational takes a JSONB[] of messages",
            hint="""inputs => ARRAY['{"role": "user", "content": "Hi"}'::jsonb]""",
        )
    if not chat:
        return list(inputs)
    if not inputs:
        raise invalid_argument("a conversation needs at least one message")
    for message in inputs:
        if not isinstance(message, dict) or not {"role", "content"} <= set(message):
            raise invalid_argument(
                'chat messages are {"role": ..., "content": ...} objects',
                hint="""ARRAY['{"role": "user", "content": "Hi"}'::jsonb]""",
            )
    return [list(inputs)]


async def _transform(ctx: CallContext, batch: Sequence[Args], messages: bool) -> list[Any]:
    services = ctx.services
    groups: dict[tuple[str, str], list[int]] = defaultdict(list)
    specs: dict[str, TaskSpec] = {}
    calls: list[list[Any]] = []
    parsed: dict[tuple[str, str], tuple[TaskSpec, str]] = {}
    for index, (task, args, inputs, _cache) in enumerate(batch):
        raw = (json.dumps(task, sort_keys=True), json.dumps(args, sort_keys=True))
        if raw not in parsed:  # the rows of a per-row call share their task and args
            spec = task_spec(task)
            parsed[raw] = (spec, json.dumps(transform_args(args), sort_keys=True))
        spec, options_key = parsed[raw]
        specs[spec.key] = spec
        calls.append(_inputs(spec, list(inputs), messages))
        services.capacity.check_inputs("pgml.transform", calls[-1])
        groups[(spec.key, options_key)].append(index)
    results: list[Any] = [None] * len(batch)
    for (spec_key, options_key), indexes in groups.items():
        spec = specs[spec_key]
        items = [item for i in indexes for item in calls[i]]
        if not items:
            for i in indexes:
                results[i] = []
            continue
        options = json.loads(options_key)
        if spec.streams:
            services.capacity.check_generation("pgml.transform", options)
        async with pipeline_lease(services, spec, rights_of(ctx), ctx.cancelled) as pipeline:

            def work(
                chunk: list[Any],
                stopped: Stopped,
                p: LoadedPipeline = pipeline,
                o: dict[str, Any] = options,
                generates: bool = spec.streams,
            ) -> list[Any]:
                stops = services.capacity.generation_stops(stopped) if generates else None
                return p.run(chunk, o, services.batch_size, stops)

            key = ("transform", id(pipeline), options_key)
            outputs = iter(await services.submit(ctx, pipeline.model, key, work, items))
        for i in indexes:
            mine = [next(outputs) for _ in calls[i]]
            chat = messages and spec.pipeline_task == "text-generation"
            if chat or (len(mine) == 1 and spec.pipeline_task in COLLAPSING):
                results[i] = mine[0]
            else:
                results[i] = mine
        ctx.check_cancel()
    return results


async def transform_texts(ctx: CallContext, batch: Sequence[Args]) -> list[Any]:
    """``inputs TEXT[]``."""
    return await _transform(ctx, batch, messages=False)


async def transform_messages(ctx: CallContext, batch: Sequence[Args]) -> list[Any]:
    """``inputs JSONB[]``: chat messages (one conversation) or JSON inputs (question
    answering's ``{"question", "context"}``)."""
    return await _transform(ctx, batch, messages=True)


async def stream_rows(ctx: CallContext, args: Args) -> AsyncGenerator[str, None]:
    """One ``transform_stream`` call's text, a row per piece as it is generated.

    Generation runs on a worker thread and stops at the next token once the iterator is
    closed or the statement is cancelled (57014); the model is held until it has stopped.
    """
    task, call_args, input_value, _cache = args
    spec = task_spec(task)
    options = transform_args(call_args)
    if not spec.streams:
        raise PgmlError(
            "0A000",
            f"pgml.transform_stream streams generated text; {spec.task} does not generate",
            hint="Use pgml.transform for this task.",
        )
    messages = isinstance(input_value, list)
    items = _inputs(spec, [input_value] if not messages else list(input_value), messages)
    if len(items) != 1:
        raise invalid_argument(
            "pgml.transform_stream takes one text, or one conversation of JSONB messages"
        )
    (item,) = items
    services = ctx.services
    capacity = services.capacity
    capacity.check_inputs("pgml.transform_stream", items)
    capacity.check_generation("pgml.transform_stream", options)
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[Any] = asyncio.Queue()
    stop = threading.Event()

    def emit(text: str) -> None:
        loop.call_soon_threadsafe(queue.put_nowait, text)

    async with pipeline_lease(services, spec, rights_of(ctx), ctx.cancelled) as pipeline:
        stops = capacity.generation_stops(capacity.stopped(stop.is_set, ctx.cancelled))
        generating = services.infer(
            ctx, pipeline.model, pipeline.stream, item, options, emit, stops
        )
        work = asyncio.ensure_future(generating)
        work.add_done_callback(lambda _: queue.put_nowait(_DONE))
        rows = 0
        try:
            while True:
                piece = await queue.get()
                if piece is _DONE:
                    break
                rows += 1
                capacity.check_stream_row(rows)
                yield piece
            await work
            ctx.check_cancel()
        finally:
            stop.set()
            if not work.done():
                with contextlib.suppress(Exception):
                    await asyncio.shield(work)


async def transform_stream(ctx: CallContext, batch: Sequence[Args]) -> list[Any]:
    """Each call's rows collected (for an engine that sends rows when the call ends)."""
    results: list[Any] = []
    for args in batch:
        async with contextlib.aclosing(stream_rows(ctx, args)) as rows:
            results.append([piece async for piece in rows])
    return results
