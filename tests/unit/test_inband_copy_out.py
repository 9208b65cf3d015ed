"""``Inband.copy_out``, the engine's ``COPY ... TO STDOUT`` in a client's session, fed with
the messages PostgreSQL sends: every CopyData payload in order; stopped early, the rest of
the copy read and dropped so that the session stays in step; errors raised as the
server's own."""

from __future__ import annotations

import asyncio
import contextlib

import pytest

from proxy import protocol as pg
from proxy.inband import Inband, ServerError
from proxy.protocol import Message


def message(kind: bytes, body: bytes = b"") -> Message:
    raw = pg.message(kind, body)
    return Message(raw[0], raw)


def error(code: str, text: str) -> Message:
    return message(b"E", b"SERROR\0C" + code.encode() + b"\0M" + text.encode() + b"\0\0")


ROWS = [b"one,1\n", b'"two\nlines",0\n', b"three,1\n"]


def copy_replies(rows: list[bytes]) -> list[Message]:
    return [
        message(b"1"),
        message(b"2"),
        message(b"H", b"\0\0\0"),
        *(message(b"d", row) for row in rows),
        message(b"c"),
        message(b"C", b"COPY 3\0"),
    ]


def run(
    replies: list[Message], stop_after: int | None = None
) -> tuple[list[bytes], list[bytes], Inband]:
    """Feed ``replies`` (and CloseComplete once Close is sent); read the copy."""
    sent: list[bytes] = []
    inband: Inband

    def send_upstream(data: bytes) -> None:
        sent.append(data)
        if data.startswith(b"C"):  # Close: the server answers CloseComplete
            inband.deliver(message(b"3"))

    inband = Inband(send_upstream, lambda _: None)
    for reply in replies:
        inband.deliver(reply)

    async def read() -> list[bytes]:
        got: list[bytes] = []
        rows = inband.copy_out("__pgml_copy", "COPY (SELECT 1) TO STDOUT")
        async with contextlib.aclosing(rows):
            async for row in rows:
                got.append(row)
                if stop_after is not None and len(got) == stop_after:
                    break
        return got

    return asyncio.run(read()), sent, inband


def test_every_row_in_order_then_the_statement_is_closed() -> None:
    got, sent, inband = run(copy_replies(ROWS))
    assert got == ROWS
    assert sent[0].startswith(b"P") and b"COPY (SELECT 1) TO STDOUT" in sent[0]
    assert sent[-1].startswith(b"C") and b"__pgml_copy" in sent[-1]
    assert inband._queue.empty()  # nothing left unread: the session is in step


def test_stopped_early_the_rest_is_read_and_dropped() -> None:
    got, sent, inband = run(copy_replies(ROWS), stop_after=1)
    assert got == ROWS[:1]
    assert sent[-1].startswith(b"C")
    assert inband._queue.empty()


def test_an_error_before_the_copy_starts() -> None:
    with pytest.raises(ServerError) as raised:
        run([message(b"1"), error("42501", "permission denied for table t")])
    assert raised.value.sqlstate == "42501"


def test_an_error_in_the_middle_of_the_copy() -> None:
    replies = [*copy_replies(ROWS)[:4], error("22012", "division by zero")]
    sent: list[bytes] = []
    inband = Inband(sent.append, lambda _: None)
    for reply in replies:
        inband.deliver(reply)
    got: list[bytes] = []

    async def read() -> None:
        async for row in inband.copy_out("__pgml_copy", "COPY (SELECT 1) TO STDOUT"):
            got.append(row)

    with pytest.raises(ServerError) as raised:
        asyncio.run(read())
    assert raised.value.sqlstate == "22012"
    assert got == ROWS[:1]
    assert len(sent) == 1  # no Close: PostgreSQL skips to the Sync the executor sends
