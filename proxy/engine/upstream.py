"""The engine's end of a client's own upstream session.

Requests are buffered, recorded in the session's reply queue with the route of their
replies, and written together on :meth:`Upstream.flush` or :meth:`Upstream.sync`, so a
batch of helper statements costs one round trip.  Each request returns a :class:`Reply`
to await: its result, :class:`ServerError` for an ErrorResponse, :class:`Skipped` when the
server ignored it after an earlier error of its batch.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Generator, Sequence
from dataclasses import dataclass, field
from typing import Any

from proxy.engine.names import own
from proxy.wire import codec
from proxy.wire.codec import Backend, Column, Frontend, Message
from proxy.wire.replies import RELAYED, Expected, ReplyQueue, ends_session

NOTHING: frozenset[int] = frozenset()
ABORT_NAME = own("abort")
"""The statement whose Parse fails a batch: never created, so any name would do."""
_ABORT_SQL = "a pgml call failed"
"""A syntax error: PostgreSQL's transaction state follows a failed pgml call."""
RESULTS = frozenset(
    {
        Backend.ROW_DESCRIPTION,
        Backend.DATA_ROW,
        Backend.COMMAND_COMPLETE,
        Backend.EMPTY_QUERY,
        Backend.PORTAL_SUSPENDED,
    }
)
"""A statement's rows and tag, as the client receives them from PostgreSQL."""
ROWS = RESULTS - {Backend.ROW_DESCRIPTION}
ERRORS = frozenset({Backend.ERROR})


class ServerError(Exception):
    """PostgreSQL answered a request of the proxy's with an ErrorResponse."""

    def __init__(self, message: Message) -> None:
        self.message = message
        self.fields = codec.parse_error_fields(message.body)
        self.own_text = False
        """Whether it is about text the client wrote itself (its position stands)."""
        super().__init__(self.fields.get("M", "error"))

    def for_client(self) -> bytes:
        """The ErrorResponse for the client: without a position that points into SQL
        the proxy wrote; nothing for a FATAL one, which the reply queue has forwarded."""
        if ends_session(self.message.raw):
            return b""
        return self.message.raw if self.own_text else codec.moved_position(self.message.raw, None)

    @property
    def sqlstate(self) -> str:
        return self.fields.get("C", "XX000")


class Skipped(Exception):
    """The server skipped the request: an earlier request of its batch failed."""


@dataclass(slots=True, eq=False)
class Result:
    """What one statement returned: its columns, rows (text or binary values) and tag."""

    columns: list[Column] = field(default_factory=list)
    row_description: bytes | None = None
    """The RowDescription body as the server sent it (None: NoData, or not described)."""
    parameter_oids: list[int] = field(default_factory=list)
    rows: list[list[bytes | None]] = field(default_factory=list)
    tag: str = ""
    suspended: bool = False
    """An Execute with a row limit stopped before the end (PortalSuspended)."""


class Reply:
    """One request's outcome, filled in by the reply queue (a :class:`~proxy.wire.replies.Sink`)."""

    __slots__ = ("_future", "error", "result", "status")

    def __init__(self) -> None:
        self._future: asyncio.Future[Result] = asyncio.get_running_loop().create_future()
        self.result = Result()
        self.error: ServerError | None = None
        """For a Query or Sync: the first ErrorResponse among its replies."""
        self.status = b""
        """For a Query or Sync: the transaction status its ReadyForQuery gave."""

    def deliver(self, message: Message) -> None:
        kind, body = message.type, message.raw[5:]
        result = self.result
        if kind == Backend.DATA_ROW:
            result.rows.append(codec.parse_data_row(body))
        elif kind == Backend.ROW_DESCRIPTION:
            result.columns = codec.parse_row_description(body)
            result.row_description = body
        elif kind == Backend.PARAMETER_DESCRIPTION:
            result.parameter_oids = codec.parse_parameter_description(body)
        elif kind == Backend.COMMAND_COMPLETE:
            result.tag = codec.command_tag(body)
        elif kind == Backend.PORTAL_SUSPENDED:
            result.suspended = True
        elif kind == Backend.ERROR and self.error is None:
            self.error = ServerError(message)
        elif kind == Backend.READY_FOR_QUERY:
            self.status = body[:1]

    def complete(self, error: Message | None) -> None:
        if self._future.done():
            return
        if error is not None:
            self._future.set_exception(ServerError(error))
            self._future.exception()  # the awaiter re-raises it; never "unretrieved"
        else:
            self._future.set_result(self.result)

    def skip(self, cause: Message | None) -> None:
        """Skipped for an error of the proxy's own (``cause``): that error is this
        request's too; else the client's own error came first."""
        if not self._future.done():
            self._future.set_exception(Skipped() if cause is None else ServerError(cause))
            self._future.exception()

    @property
    def done(self) -> bool:
        return self._future.done()

    def ended(self) -> asyncio.Future[None]:
        """A future done once the request is answered, whichever way: one to wait on
        and give up waiting on (cancelling it leaves the request alone)."""
        ended: asyncio.Future[None] = asyncio.get_running_loop().create_future()

        def end(_: asyncio.Future[Result]) -> None:
            if not ended.done():
                ended.set_result(None)

        self._future.add_done_callback(end)
        return ended

    def on_failure(self, callback: Callable[[], object]) -> None:
        """Call ``callback`` if the server answers the request with an error."""

        def check(future: asyncio.Future[Result]) -> None:
            if isinstance(future.exception(), ServerError):
                callback()

        self._future.add_done_callback(check)

    def on_success(self, callback: Callable[[], object]) -> None:
        """Call ``callback`` once the request has been answered without an error."""

        def check(future: asyncio.Future[Result]) -> None:
            if not future.cancelled() and future.exception() is None:
                callback()

        self._future.add_done_callback(check)

    def __await__(self) -> Generator[Any, None, Result]:
        return self._future.__await__()


COPY_HIGH_WATER = 4 << 20
"""Bytes of CopyData waiting for their reader at which reading from PostgreSQL pauses (the
server then waits on its socket), so a table of any size passes through in bounded
memory."""
COPY_LOW_WATER = 1 << 20
"""Bytes left waiting at which reading goes on."""


class CopyOut(Reply):
    """An Execute of ``COPY ... TO STDOUT``: its data handed on as it arrives, read from
    PostgreSQL no faster than :meth:`next` takes it.  ``pause(True)`` stops reading from
    the server, ``pause(False)`` goes on."""

    __slots__ = ("_abandoned", "_chunks", "_pause", "_paused", "_waiting")

    def __init__(self, pause: Callable[[bool], None]) -> None:
        super().__init__()
        self._chunks: asyncio.Queue[bytes | None] = asyncio.Queue()
        self._pause = pause
        self._paused = False
        self._waiting = 0
        self._abandoned = False

    async def next(self) -> bytes | None:
        """The next CopyData payload; None after the last."""
        chunk = await self._chunks.get()
        if chunk is not None:
            self._waiting -= len(chunk)
            if self._paused and self._waiting <= COPY_LOW_WATER:
                self._set_paused(False)
        return chunk

    def abandon(self) -> None:
        """The reader stops early: drop what comes from now on (reading goes on)."""
        self._abandoned = True
        while not self._chunks.empty():
            self._chunks.get_nowait()
        self._waiting = 0
        self._set_paused(False)

    def deliver(self, message: Message) -> None:
        if message.type != Backend.COPY_DATA:
            super().deliver(message)
        elif not self._abandoned:
            chunk = message.raw[5:]
            self._chunks.put_nowait(chunk)
            self._waiting += len(chunk)
            if not self._paused and self._waiting >= COPY_HIGH_WATER:
                self._set_paused(True)

    def complete(self, error: Message | None) -> None:
        super().complete(error)
        self._chunks.put_nowait(None)

    def skip(self, cause: Message | None) -> None:
        super().skip(cause)
        self._chunks.put_nowait(None)

    def _set_paused(self, paused: bool) -> None:
        if paused != self._paused:
            self._paused = paused
            self._pause(paused)


class CopyIn(Reply):
    """An Execute of ``COPY ... FROM STDIN``: ``started`` once the server takes data."""

    __slots__ = ("started",)

    def __init__(self) -> None:
        super().__init__()
        self.started = asyncio.Event()

    def deliver(self, message: Message) -> None:
        if message.type == Backend.COPY_IN:
            self.started.set()
        else:
            super().deliver(message)

    def complete(self, error: Message | None) -> None:
        super().complete(error)
        self.started.set()

    def skip(self, cause: Message | None) -> None:
        super().skip(cause)
        self.started.set()


class Upstream:
    """Requests of the engine's on a session's upstream connection, and local answers."""

    def __init__(
        self,
        queue: ReplyQueue,
        write_upstream: Callable[[bytes], None],
        write_client: Callable[[bytes], None],
        upstream_writable: Callable[[], Awaitable[object]],
        pause_reading: Callable[[bool], None],
    ) -> None:
        self.queue = queue
        self._write_upstream = write_upstream
        self._write_client = write_client
        self._writable = upstream_writable
        self.pause_reading = pause_reading
        """``pause_reading(True)`` stops reading replies from the server until
        ``pause_reading(False)``: a reader of the engine's is behind."""
        self._buffer: list[bytes] = []
        self.unclosed: dict[str, int] = {}
        """Named statements of the proxy's that may still exist (their Close has not been
        answered, or its batch failed first), each with the number of Parses sent for it:
        closed again after the next Sync, so none outlives the statement it served."""

    @property
    def status(self) -> bytes:
        """The transaction status of the last ReadyForQuery: I, T or E."""
        return self.queue.status

    # --- requests ------------------------------------------------------------------------

    def request(
        self,
        data: bytes,
        kind: int,
        forward: frozenset[int] = NOTHING,
        *,
        reply: Reply | None = None,
        position: int | None = None,
        explains: bool = True,
    ) -> Reply:
        """Buffer one request; its replies in ``forward`` go to the client, the rest to
        the returned reply.  Errors forwarded lose their position (or move it by
        ``position``): the proxy's SQL is not the text the client wrote."""
        sink = reply or Reply()
        self._buffer.append(data)
        self.queue.expect(Expected(kind, forward, sink, position, explains=explains))
        return sink

    def relay(self, data: bytes, kind: int) -> None:
        """Buffer a client's own request, answered straight back to the client."""
        self._buffer.append(data)
        self.queue.expect(RELAYED[kind])

    def parse(self, name: str, sql: str, oids: Sequence[int] = ()) -> Reply:
        """A named statement replaces any left by an earlier failure (closing one that
        does not exist is no error)."""
        self.forget(b"S", name)
        self.opened(name)
        return self.request(codec.parse(name, sql, oids), Frontend.PARSE)

    def opened(self, name: str) -> None:
        """A Parse of the proxy's goes out: a named statement is recorded until closed."""
        if name:
            self.unclosed[name] = self.unclosed.get(name, 0) + 1

    def forget(self, kind: bytes, name: str) -> None:
        """Close a named statement or portal that a failure may have left open."""
        if name:
            self.close(kind, name)

    def bind(
        self,
        portal: str,
        statement: str,
        values: Sequence[bytes | None] = (),
        formats: Sequence[int] = (),
        result_formats: Sequence[int] = (),
    ) -> Reply:
        self.forget(b"P", portal)
        return self.request(
            codec.bind(portal, statement, values, formats, result_formats), Frontend.BIND
        )

    def describe(self, kind: bytes, name: str, forward: frozenset[int] = NOTHING) -> Reply:
        return self.request(codec.describe(kind, name), Frontend.DESCRIBE, forward)

    def execute(
        self,
        portal: str,
        max_rows: int = 0,
        forward: frozenset[int] = NOTHING,
        *,
        reply: Reply | None = None,
    ) -> Reply:
        return self.request(codec.execute(portal, max_rows), Frontend.EXECUTE, forward, reply=reply)

    def close(self, kind: bytes, name: str) -> Reply:
        reply = self.request(codec.close(kind, name), Frontend.CLOSE)
        if kind == b"S" and name in self.unclosed:
            parses = self.unclosed[name]

            def closed() -> None:
                if self.unclosed.get(name) == parses:  # no Parse of that name since
                    del self.unclosed[name]

            reply.on_success(closed)
        return reply

    def close_unclosed(self) -> None:
        """After a Sync: close the statements of the proxy's that its batch may have
        left (a failure skips the Close that follows them)."""
        if self.unclosed:
            for name in list(self.unclosed):
                self.close(b"S", name)
            self._buffer.append(codec.FLUSH)

    def fail_batch(self) -> None:
        """Parse text that PostgreSQL's parser refuses, so that PostgreSQL's
        transaction and batch fail as a failed statement's would and nothing is created;
        its error is not the client's (the proxy has answered)."""
        self.request(codec.parse(ABORT_NAME, _ABORT_SQL), Frontend.PARSE, explains=False)

    def query(
        self, sql: str, forward: frozenset[int] = NOTHING, position: int | None = None
    ) -> Reply:
        return self.request(codec.query(sql), Frontend.QUERY, forward, position=position)

    def statement(
        self,
        sql: str,
        values: Sequence[bytes | None] = (),
        oids: Sequence[int] = (),
        formats: Sequence[int] = (),
        *,
        name: str = "",
        forward: frozenset[int] = NOTHING,
    ) -> Reply:
        """One statement through the extended protocol, described and run to the end:
        the reply of its Execute, with the columns in its result.  Its replies in
        ``forward`` go to the client."""
        executed = Reply()
        into = _Into(executed)
        self.forget(b"S", name)
        self.forget(b"P", name)
        self.opened(name)
        for data, kind in (
            (codec.parse(name, sql, oids), Frontend.PARSE),
            (codec.bind(name, name, values, formats), Frontend.BIND),
            (codec.describe(b"P", name), Frontend.DESCRIBE),
        ):
            self._buffer.append(data)
            self.queue.expect(Expected(kind, forward, into, None))
        self.execute(name, 0, forward, reply=executed)
        if name:
            self.close(b"P", name)
            self.close(b"S", name)
        return executed

    # --- writing ---------------------------------------------------------------------

    def flush(self) -> None:
        """Write the buffered requests with a Flush: the server answers them now, and
        its implicit transaction and error state stay the client's."""
        self._buffer.append(codec.FLUSH)
        self._write()
        released = self.queue.release()
        if released:
            self._write_client(released)

    def sync(self, forward: frozenset[int] = NOTHING) -> Reply:
        """Write the buffered requests and a Sync; its reply carries the status."""
        reply = self.request(codec.SYNC, Frontend.SYNC, forward)
        self.close_unclosed()
        self._write()
        return reply

    def push(self) -> None:
        """Write the buffered requests as they are (they end in a Sync or a Query)."""
        self._write()

    def write_raw(self, data: bytes) -> None:
        """Bytes that get no reply (copy data), after the buffered requests."""
        self._buffer.append(data)
        self._write()

    async def writable(self) -> None:
        """Until the upstream connection's write buffer has room again."""
        await self._writable()

    def _write(self) -> None:
        data = b"".join(self._buffer)
        self._buffer.clear()
        self._write_upstream(data)

    # --- the client ------------------------------------------------------------------------

    def local(self, data: bytes, *, held: bool = False) -> None:
        """An answer to the client, after every reply owed before it (dropped, like the
        message it answers, if the server skips the batch it belongs to); ``held``: an
        extended-protocol answer, sent when PostgreSQL would send it (see
        :class:`~proxy.wire.replies.Expected`)."""
        now = self.queue.local(data, held=held)
        if now:
            self._write_client(now)

    def notice(self, data: bytes) -> None:
        """A NoticeResponse for the client at once (notices may come at any time)."""
        self._write_client(data)


class _Into:
    """Hands a request's replies to another request's reply: the Parse, Bind and
    Describe of a statement to the reply of its Execute (which the server skips if one
    of them fails: then their error is the Execute's)."""

    __slots__ = ("target",)

    def __init__(self, target: Reply) -> None:
        self.target = target

    def deliver(self, message: Message) -> None:
        self.target.deliver(message)

    def complete(self, error: Message | None) -> None:
        if error is not None:
            self.target.complete(error)

    def skip(self, cause: Message | None) -> None:
        """The Execute after it is skipped too, and says so."""
