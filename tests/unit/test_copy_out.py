"""``Execution.copy_out``, the engine's ``COPY ... TO STDOUT`` in a client's session, fed
with the bytes PostgreSQL sends through the session's real reply queue: every CopyData
payload in order; stopped early, the rest of the copy dropped so that the session stays
in step; errors raised as the server's own; reading from the server paused while the
reader is behind, and never left paused."""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections.abc import Callable, Coroutine
from typing import Any

import pytest

from handlers.serving import Services
from proxy.engine import upstream as upstream_module
from proxy.engine.executor import Execution
from proxy.engine.upstream import ServerError, Upstream
from proxy.wire import codec
from proxy.wire.replies import ReplyQueue

ROWS = [b"one,1\n", b'"two\nlines",0\n', b"three,1\n"]
START = codec.PARSE_COMPLETE + codec.BIND_COMPLETE + codec.message(b"H", b"\0\0\0")
END = codec.message(b"c") + codec.command_complete("COPY 3")
ERROR = codec.PgError("ERROR", "42501", "permission denied for table t").encode()


class Server:
    """The session's side: what the engine writes, and a way to answer it."""

    def __init__(self) -> None:
        self.queue = ReplyQueue()
        self.sent: list[bytes] = []
        self.client: list[bytes] = []
        self.pauses: list[bool] = []
        self.upstream = Upstream(
            self.queue, self.sent.append, self.client.append, self._writable, self.pauses.append
        )

    async def _writable(self) -> None:
        return None

    def answer(self, data: bytes) -> None:
        self.client.append(self.queue.feed(data))


def execution(server: Server) -> Execution:
    return Execution(server.upstream, Services(), database="db", cancelled=lambda: False)


async def read(server: Server, stop_after: int | None = None) -> list[bytes]:
    got: list[bytes] = []
    rows = execution(server).copy_out("COPY (SELECT 1) TO STDOUT")
    async with contextlib.aclosing(rows):
        async for row in rows:
            got.append(row)
            if stop_after is not None and len(got) == stop_after:
                break
    return got


def on_a_loop(test: Callable[..., Coroutine[Any, Any, None]]) -> Callable[..., None]:
    """Run an async test on a fresh event loop (arguments are pytest's fixtures)."""

    @functools.wraps(test)
    def run(*args: Any, **kwargs: Any) -> None:
        asyncio.run(test(*args, **kwargs))

    return run


def copy(rows: list[bytes]) -> bytes:
    return START + b"".join(codec.message(b"d", row) for row in rows) + END


@on_a_loop
async def test_rows_in_order() -> None:
    server = Server()
    reading = asyncio.ensure_future(read(server))
    await asyncio.sleep(0)
    server.answer(copy(ROWS))
    assert await reading == ROWS
    assert server.queue.at_boundary and not b"".join(server.client)


@on_a_loop
async def test_stopping_early_drops_the_rest_and_keeps_the_session_in_step() -> None:
    server = Server()
    reading = asyncio.ensure_future(read(server, stop_after=1))
    await asyncio.sleep(0)
    server.answer(copy(ROWS))
    assert await reading == ROWS[:1]
    assert not server.queue.busy and not b"".join(server.client)


@on_a_loop
async def test_an_error_before_the_copy_is_the_servers() -> None:
    server = Server()
    reading = asyncio.ensure_future(read(server))
    await asyncio.sleep(0)
    server.answer(codec.PARSE_COMPLETE + codec.BIND_COMPLETE + ERROR)
    with pytest.raises(ServerError) as raised:
        await reading
    assert raised.value.sqlstate == "42501"


@on_a_loop
async def test_an_error_during_the_copy_ends_it() -> None:
    server = Server()
    reading = asyncio.ensure_future(read(server))
    await asyncio.sleep(0)
    server.answer(START + codec.message(b"d", ROWS[0]) + ERROR)
    with pytest.raises(ServerError):
        await reading


@on_a_loop
async def test_reading_pauses_while_the_reader_is_behind(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(upstream_module, "COPY_HIGH_WATER", 100)
    monkeypatch.setattr(upstream_module, "COPY_LOW_WATER", 30)
    server = Server()
    rows = execution(server).copy_out("COPY t TO STDOUT")
    first = asyncio.ensure_future(rows.__anext__())
    await asyncio.sleep(0)
    row = b"x" * 20 + b"\n"
    server.answer(START + codec.message(b"d", row) * 6)  # 126 bytes wait
    assert await first == row
    assert server.pauses == [True]  # 126 bytes waited: over the high water
    for _ in range(3):
        assert await rows.__anext__() == row
    assert server.pauses == [True]  # 42 waiting: above the low water
    assert await rows.__anext__() == row
    assert server.pauses == [True, False]
    server.answer(END)
    rest = [chunk async for chunk in rows]
    assert rest == [row]


@on_a_loop
async def test_a_reader_that_stops_while_paused_leaves_reading_on(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(upstream_module, "COPY_HIGH_WATER", 100)
    server = Server()
    reading = asyncio.ensure_future(read(server, stop_after=1))
    await asyncio.sleep(0)
    server.answer(START + codec.message(b"d", b"y" * 200))
    server.answer(codec.message(b"d", b"z" * 200))
    assert await reading == [b"y" * 200]
    assert server.pauses == [True, False]
    server.answer(END)
    assert not server.queue.busy
