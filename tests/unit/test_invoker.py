"""The call invoker, the sans-IO way: a call of a statement parsed by the engine, with an
overload of the test's own whose handler, ``authorize`` and stream record what they are
given, run in an ``Execution`` over a reply queue that no server answers (none is asked
anything: the handlers finish before the backend would be held)."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator, Sequence
from typing import Any

import pytest

from handlers.functions import Args, CallContext, Overload, PgmlError
from handlers.serving import Services
from handlers.signatures import Function, Param
from proxy import metrics
from proxy.engine import invoker
from proxy.engine.calls import CallSite
from proxy.engine.executor import Execution
from proxy.engine.planner import parse_statement
from proxy.engine.upstream import Upstream
from proxy.wire.replies import ReplyQueue


class Recorder:
    """An overload ``embed(project text, body text) RETURNS text`` that records its use."""

    def __init__(self, *, extra_result: bool = False) -> None:
        self.authorized: list[Args] = []
        self.batches: list[list[Args]] = []
        self.extra_result = extra_result
        self.overload = Overload(
            (Param("project", "text"), Param("body", "text")),
            "text",
            self._handler,
            authorize=self._authorize,
            stream=self._stream,
        )

    async def _authorize(self, ctx: CallContext, args: Args) -> None:
        self.authorized.append(args)
        if args[0] == "forbidden":
            raise PgmlError("42501", "permission denied for project forbidden")

    async def _handler(self, ctx: CallContext, batch: Sequence[Args]) -> list[Any]:
        self.batches.append(list(batch))
        results = [body.upper() for _, body in batch]
        return [*results, ""] if self.extra_result else results

    async def _stream(self, ctx: CallContext, args: Args) -> AsyncIterator[Any]:
        for word in str(args[1]).split():
            yield word


def call_of(sql: str, recorder: Recorder) -> CallSite:
    parsed = parse_statement(sql)
    assert parsed is not None
    (call,) = parsed.calls
    return dataclasses.replace(call, function=Function("embed", (recorder.overload,)))


def execution() -> Execution:
    upstream = Upstream(ReplyQueue(), lambda _: None, lambda _: None, _writable, lambda _: None)
    return Execution(upstream, Services(), database="db", cancelled=lambda: False)


async def _writable() -> None:
    return None


def test_the_overload_is_picked_by_the_arguments_types() -> None:
    recorder = Recorder()
    call = call_of("SELECT pgml.embed('p', body) FROM t", recorder)
    assert invoker.pick(call, [25, 25]) is recorder.overload
    with pytest.raises(PgmlError) as refused:
        invoker.pick(call, [25, 16])  # boolean where text is taken
    assert refused.value.sqlstate == "42883"


def test_a_constant_call_is_authorized_once_and_runs_its_arguments() -> None:
    recorder = Recorder()
    call = call_of("SELECT pgml.embed('p', 'four')", recorder)
    before = dict(metrics.rows_in)

    async def run() -> list[Any]:
        ready = await invoker.prepare(execution(), call, recorder.overload, ["p", "four"])
        assert ready.returns == "text" and ready.bound == ("p", "four")
        return await ready.run(execution(), [ready.bound])

    assert asyncio.run(run()) == ["FOUR"]
    assert recorder.authorized == [("p", "four")]
    assert recorder.batches == [[("p", "four")]]
    assert metrics.rows_in == before  # counted as rows only where a call reads rows


def test_rows_naming_projects_are_authorized_once_per_project_before_the_handler() -> None:
    recorder = Recorder()
    call = call_of("SELECT pgml.embed(project, body) FROM t", recorder)
    before = metrics.rows_in.get("pgml.embed", 0)

    async def run() -> list[list[Any]]:
        ready = await invoker.prepare(execution(), call, recorder.overload, [None, None])
        first = await ready.run(execution(), [ready.bind(["a", "xy"]), ready.bind(["b", "z"])])
        second = await ready.run(execution(), [ready.bind(["a", "xyz"])])
        return [first, second]

    assert asyncio.run(run()) == [["XY", "Z"], ["XYZ"]]
    assert recorder.authorized == [(None, None), ("a", "xy"), ("b", "z")]
    assert metrics.rows_in["pgml.embed"] == before + 3


def test_a_project_refused_stops_the_batch_before_the_handler() -> None:
    recorder = Recorder()
    call = call_of("SELECT pgml.embed(project, body) FROM t", recorder)

    async def run() -> None:
        ready = await invoker.prepare(execution(), call, recorder.overload, [None, None])
        await ready.run(execution(), [ready.bind(["a", "x"]), ready.bind(["forbidden", "y"])])

    with pytest.raises(PgmlError) as refused:
        asyncio.run(run())
    assert refused.value.sqlstate == "42501"
    assert recorder.batches == []


def test_one_project_for_every_row_is_authorized_once() -> None:
    recorder = Recorder()
    call = call_of("SELECT pgml.embed('p', body) FROM t", recorder)

    async def run() -> None:
        ready = await invoker.prepare(execution(), call, recorder.overload, ["p", None])
        await ready.run(execution(), [ready.bind(["p", "x"]), ready.bind(["p", "y"])])

    asyncio.run(run())
    assert recorder.authorized == [("p", None)]


def test_an_empty_batch_runs_nothing() -> None:
    recorder = Recorder()
    call = call_of("SELECT pgml.embed(project, body) FROM t", recorder)

    async def run() -> list[Any]:
        ready = await invoker.prepare(execution(), call, recorder.overload, [None, None])
        return await ready.run(execution(), [])

    assert asyncio.run(run()) == []
    assert recorder.batches == []


def test_a_handler_that_miscounts_is_the_proxy_s_own_error() -> None:
    recorder = Recorder(extra_result=True)
    call = call_of("SELECT pgml.embed(project, body) FROM t", recorder)

    async def run() -> None:
        ready = await invoker.prepare(execution(), call, recorder.overload, [None, None])
        await ready.run(execution(), [ready.bind(["a", "x"])])

    with pytest.raises(PgmlError) as failed:
        asyncio.run(run())
    assert failed.value.sqlstate == "XX000"


def test_a_streamed_call_gives_its_rows_as_they_come() -> None:
    recorder = Recorder()
    call = call_of("SELECT pgml.embed('p', 'one two three')", recorder)

    async def run() -> list[bytes | None]:
        session = execution()
        ready = await invoker.prepare(session, call, recorder.overload, ["p", "one two three"])
        live = ready.stream(session)
        await live.wait(None)
        assert live.error is None
        return live.rows

    assert asyncio.run(run()) == [b"one", b"two", b"three"]
