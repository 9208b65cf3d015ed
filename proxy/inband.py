"""In-band access to a client's own upstream session, for the statements the proxy runs.

While the proxy executes a pgml statement, the relay hands every server message to an
:class:`Inband` instead of the client.  The executor sends helper SQL through it and
reads the replies; it decides which replies reach the client (the final statement's
rows) and which are swallowed (helpers').  Notices, notifications and parameter changes
always reach the client at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import struct
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field

from proxy import protocol as pg
from proxy.protocol import Message

_ALWAYS_FORWARDED = frozenset(b"NAS")
"""NoticeResponse, NotificationResponse, ParameterStatus."""

_INT16 = struct.Struct("!h")
_INT32 = struct.Struct("!i")
_FIELD_TAIL = struct.Struct("!IhIhih")


class ServerError(Exception):
    """PostgreSQL answered a statement the proxy sent with an ErrorResponse."""

    def __init__(self, message: Message) -> None:
        self.message = message
        self.fields = pg.parse_error_fields(message.body)
        super().__init__(self.fields.get("M", "error"))

    @property
    def sqlstate(self) -> str:
        return self.fields.get("C", "XX000")


@dataclass(frozen=True, slots=True)
class Column:
    name: str
    type_oid: int
    type_modifier: int
    format: int


@dataclass(slots=True)
class Result:
    """What one statement returned: its columns, rows (text or binary values) and tag."""

    columns: list[Column] = field(default_factory=list)
    rows: list[list[bytes | None]] = field(default_factory=list)
    tag: str = ""
    suspended: bool = False
    """An Execute with a row limit stopped before the end (PortalSuspended)."""
    parameter_oids: list[int] = field(default_factory=list)
    row_description: bytes | None = None
    """The RowDescription body as the server sent it, or None for NoData."""


def parse_row_description(body: bytes) -> list[Column]:
    count = _INT16.unpack_from(body)[0]
    columns: list[Column] = []
    pos = 2
    for _ in range(count):
        end = body.index(b"\x00", pos)
        name = body[pos:end].decode("utf-8")
        _table, _attnum, oid, _size, modifier, fmt = _FIELD_TAIL.unpack_from(body, end + 1)
        columns.append(Column(name, oid, modifier, fmt))
        pos = end + 1 + _FIELD_TAIL.size
    return columns


def parse_parameter_description(body: bytes) -> list[int]:
    count = _INT16.unpack_from(body)[0]
    return list(struct.unpack_from(f"!{count}I", body, 2))


def parse_data_row(body: bytes) -> list[bytes | None]:
    return read_values(body, 0)[0]


def read_values(body: bytes, pos: int) -> tuple[list[bytes | None], int]:
    """A count, then that many length-prefixed values (-1: NULL), as DataRow and Bind
    carry them; returns the values and the position after them."""
    count = _INT16.unpack_from(body, pos)[0]
    pos += 2
    values: list[bytes | None] = []
    for _ in range(count):
        length = _INT32.unpack_from(body, pos)[0]
        pos += 4
        if length < 0:
            values.append(None)
        else:
            values.append(body[pos : pos + length])
            pos += length
    return values, pos


def encode_parse(name: str, sql: str, param_oids: Sequence[int] = ()) -> bytes:
    body = (
        pg.cstring(name)
        + pg.cstring(sql)
        + struct.pack(f"!h{len(param_oids)}I", len(param_oids), *param_oids)
    )
    return pg.message(b"P", body)


def encode_bind(
    portal: str,
    statement: str,
    params: Sequence[bytes | None],
    param_formats: Sequence[int] = (),
    result_formats: Sequence[int] = (),
) -> bytes:
    parts = [pg.cstring(portal), pg.cstring(statement)]
    parts.append(struct.pack(f"!h{len(param_formats)}h", len(param_formats), *param_formats))
    parts.append(_INT16.pack(len(params)))
    for value in params:
        parts.append(_INT32.pack(-1) if value is None else _INT32.pack(len(value)) + value)
    parts.append(struct.pack(f"!h{len(result_formats)}h", len(result_formats), *result_formats))
    return pg.message(b"B", b"".join(parts))


def encode_describe(kind: bytes, name: str) -> bytes:
    return pg.message(b"D", kind + pg.cstring(name))


def encode_execute(portal: str, max_rows: int = 0) -> bytes:
    return pg.message(b"E", pg.cstring(portal) + _INT32.pack(max_rows))


def encode_close(kind: bytes, name: str) -> bytes:
    return pg.message(b"C", kind + pg.cstring(name))


SYNC = pg.message(b"S")
FLUSH = pg.message(b"H")

_STEP_REPLIES = frozenset(b"123nTCIs")
"""Replies that complete one extended-protocol message (an ErrorResponse ends them all)."""


class Inband:
    """The executor's end of a session while the proxy runs a statement itself."""

    def __init__(
        self,
        send_upstream: Callable[[bytes], None],
        send_client: Callable[[bytes], None],
        upstream_writable: Callable[[], Awaitable[object]] | None = None,
    ) -> None:
        self._send_upstream = send_upstream
        self.send_client = send_client
        self._upstream_writable = upstream_writable
        self._queue: asyncio.Queue[Message | None] = asyncio.Queue()
        self.status = b"I"
        """Transaction status of the last ReadyForQuery seen."""

    # --- fed by the relay ----------------------------------------------------------

    def deliver(self, message: Message) -> None:
        if message.type in _ALWAYS_FORWARDED:
            self.send_client(message.raw)
        else:
            self._queue.put_nowait(message)

    def upstream_gone(self) -> None:
        self._queue.put_nowait(None)

    # --- used by the executor ----------------------------------------------------------

    def send(self, data: bytes) -> None:
        self._send_upstream(data)

    async def receive(self) -> Message:
        message = await self._queue.get()
        if message is None:
            raise ConnectionError("the upstream connection ended")
        if message.type == pg.READY_FOR_QUERY:
            self.status = message.body[:1]
        return message

    async def query(self, sql: str) -> list[Result]:
        """Run SQL as a simple Query; return every statement's result.

        Raises :class:`ServerError` for the first error, after its ReadyForQuery.
        """
        self.send(pg.message(b"Q", pg.cstring(sql)))
        return await self.collect()

    async def steps(
        self, count: int, forward: Callable[[Message], bool] | None = None
    ) -> list[Result]:
        """Read the replies to ``count`` extended-protocol messages sent with a Flush.

        Raises :class:`ServerError` on an ErrorResponse; PostgreSQL then ignores
        everything up to the next Sync.
        """
        results: list[Result] = []
        current = Result()
        done = 0
        describing_statement = False
        while done < count:
            message = await self.receive()
            kind = message.type
            if kind == pg.ERROR_RESPONSE:
                raise ServerError(message)
            if forward is not None and forward(message):
                self.send_client(message.raw)
            if kind == ord("D"):
                current.rows.append(parse_data_row(message.body))
            elif kind == ord("t"):
                current.parameter_oids = parse_parameter_description(message.body)
                describing_statement = True
            elif kind == ord("T"):
                current.columns = parse_row_description(message.body)
                current.row_description = message.body
            if kind in _STEP_REPLIES:
                done += 1
                if kind in (ord("C"), ord("I"), ord("s")):
                    current.tag = message.body[:-1].decode() if kind == ord("C") else ""
                    current.suspended = kind == ord("s")
                    results.append(current)
                    current = Result()
                elif kind in (ord("T"), ord("n")) and describing_statement:
                    describing_statement = False
                    results.append(current)
                    current = Result()
        return results

    async def sync(self) -> bytes:
        """Send Sync and read up to its ReadyForQuery; return the transaction status."""
        self.send(SYNC)
        while (await self.receive()).type != pg.READY_FOR_QUERY:
            pass
        return self.status

    async def copy_in(
        self,
        name: str,
        sql: str,
        params: Sequence[bytes | None],
        oids: Sequence[int],
        chunks: AsyncIterator[bytes],
    ) -> str:
        """``COPY ... FROM STDIN`` fed with ``chunks``, sent as fast as the server takes
        them; returns the command tag.  An error stops the copy (CopyFail) and is raised."""
        self.send(
            encode_parse(name, sql, oids)
            + encode_bind(name, name, params)
            + encode_execute(name)
            + FLUSH
        )
        while (message := await self.receive()).type != ord("G"):
            if message.type == pg.ERROR_RESPONSE:
                raise ServerError(message)
        try:
            async for chunk in chunks:
                self.send(pg.message(b"d", chunk))
                if self._upstream_writable is not None:
                    await self._upstream_writable()
        except BaseException as error:
            self.send(pg.message(b"f", pg.cstring(f"load stopped: {type(error).__name__}")))
            self.send(FLUSH)
            with contextlib.suppress(ServerError):
                while (await self.receive()).type != pg.ERROR_RESPONSE:
                    pass
            raise
        self.send(pg.message(b"c") + encode_close(b"S", name) + FLUSH)
        (result,) = await self.steps(2)
        return result.tag

    async def copy_out(self, name: str, sql: str) -> AsyncIterator[bytes]:
        """``COPY ... TO STDOUT``: each CopyData payload as the server sends it.  Stopped
        early, the rest of the copy is read and dropped, so the session stays in step."""
        self.send(
            encode_parse(name, sql) + encode_bind(name, name, []) + encode_execute(name) + FLUSH
        )
        while (message := await self.receive()).type != ord("H"):
            if message.type == pg.ERROR_RESPONSE:
                raise ServerError(message)
        error: ServerError | None = None
        try:
            while (message := await self.receive()).type == ord("d"):
                yield message.body
        finally:
            # Read to the CommandComplete whether or not the reader stopped early.
            while message.type != ord("C"):
                if message.type == pg.ERROR_RESPONSE:
                    error = ServerError(message)
                    break
                message = await self.receive()
            if error is None:
                self.send(encode_close(b"S", name) + FLUSH)
                await self.steps(1)
        if error is not None:
            raise error

    async def close_statements(self, names: Sequence[str]) -> None:
        """Close prepared statements that may have been left open (closing none is fine)."""
        self.send(b"".join(encode_close(b"S", name) for name in names))
        await self.sync()

    async def collect(self, forward: Callable[[Message], bool] | None = None) -> list[Result]:
        """Read replies up to ReadyForQuery; ``forward`` picks messages for the client."""
        results: list[Result] = []
        current = Result()
        error: ServerError | None = None
        while True:
            message = await self.receive()
            if forward is not None and forward(message):
                self.send_client(message.raw)
            kind = message.type
            if kind == ord("T"):
                current.columns = parse_row_description(message.body)
            elif kind == ord("D"):
                current.rows.append(parse_data_row(message.body))
            elif kind in (ord("C"), ord("I"), ord("s")):
                current.tag = message.body[:-1].decode() if kind == ord("C") else ""
                results.append(current)
                current = Result()
            elif kind == pg.ERROR_RESPONSE and error is None:
                error = ServerError(message)
            elif kind == pg.READY_FOR_QUERY:
                if error is not None:
                    raise error
                return results
