"""The one path by which a pgml statement's error reaches the client, without sockets:
what the client is written, and what PostgreSQL is sent to fail its batch."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

import pytest

from handlers.errors import PgmlError
from proxy.engine import errors
from proxy.engine.upstream import ServerError, Skipped, Upstream
from proxy.wire import codec
from proxy.wire.replies import ReplyQueue


async def _writable() -> None:
    return None


def _run(action: Callable[[Upstream], None]) -> tuple[list[bytes], list[bytes]]:
    """What the server and the client are written when ``action`` acts on a session
    (on an event loop, as replies are futures)."""
    to_server: list[bytes] = []
    to_client: list[bytes] = []

    async def session() -> None:
        queue = ReplyQueue()
        action(Upstream(queue, to_server.append, to_client.append, _writable, lambda _: None))

    asyncio.run(session())
    return to_server, to_client


def _fields(raw: bytes) -> dict[str, str]:
    assert raw[:1] == b"E", raw
    return codec.parse_error_fields(raw[5:])


def _server_error(sqlstate: str, text: str) -> ServerError:
    raw = codec.PgError("ERROR", sqlstate, text, None, None, {"P": "7"}).encode()
    return ServerError(codec.Message(raw[0], raw))


def _fails_the_batch(to_server: list[bytes]) -> bool:
    sent = b"".join(to_server)
    return sent[:1] == b"P" and sent.endswith(codec.FLUSH)


@pytest.mark.parametrize(
    ("error", "sqlstate", "message"),
    [
        (PgmlError("22023", "bad argument", hint="h"), "22023", "bad argument"),
        (codec.MessageFormatError("invalid string", "22021", "c"), "22021", "invalid string"),
        (RuntimeError("a bug"), "XX000", "internal error in pgml-proxy"),
    ],
)
def test_an_error_of_the_proxys_is_told_once_and_fails_postgresqls_batch(
    error: Exception, sqlstate: str, message: str, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.ERROR, "pgml_proxy.errors"):
        to_server, to_client = _run(lambda upstream: errors.report(upstream, error))
    [told] = to_client
    fields = _fields(told)
    assert (fields["C"], fields["M"]) == (sqlstate, message)
    assert _fails_the_batch(to_server)
    bug = isinstance(error, RuntimeError)
    assert any(r.exc_info and r.exc_info[1] is error for r in caplog.records) == bug


def test_postgresqls_own_error_is_passed_on_without_the_proxys_position() -> None:
    failed = _server_error("42703", 'column "x" does not exist')
    to_server, to_client = _run(lambda upstream: errors.report(upstream, failed))
    [told] = to_client
    fields = _fields(told)
    assert (fields["C"], fields["M"]) == ("42703", 'column "x" does not exist')
    assert "P" not in fields  # a position in SQL the proxy wrote means nothing to the client
    assert to_server == []  # PostgreSQL failed its batch itself


def test_nothing_more_is_said_of_a_request_postgresql_skipped() -> None:
    # an earlier error of its batch has been told
    to_server, to_client = _run(lambda upstream: errors.report(upstream, Skipped()))
    assert (to_client, to_server) == ([], [])


def test_an_extended_protocol_answer_waits_for_the_replies_owed_before_it() -> None:
    def action(upstream: Upstream) -> None:
        upstream.relay(codec.parse("", "SELECT 1", []), codec.Frontend.PARSE)
        errors.refuse(upstream, PgmlError("0A000", "no"), held=True)

    to_server, to_client = _run(action)
    assert to_client == []  # ParseComplete is owed first
    assert _fails_the_batch(to_server[-1:])
