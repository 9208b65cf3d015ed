"""The client's session as the proxy uses it while a statement's calls are evaluated: the
statement's parameters (the client's, then the proxy's own), the proxy's helper
statements in it (what handlers see as :class:`~handlers.signatures.SessionSQL`), COPY
in and out, the session's ``statement_timeout``, and the statement the backend waits in
while a handler works (see :meth:`proxy.engine.executor.Execution.invoke`).

Everything runs in-band, as the client's role, inside its transaction; all requests go
with Flush, never Sync, so the client's implicit transaction and error state stay
PostgreSQL's own.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections.abc import AsyncIterator, Hashable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from handlers.functions import HOLD_CLASS, Services
from proxy.engine import values
from proxy.engine.upstream import (
    ERRORS,
    CopyIn,
    CopyOut,
    Reply,
    Result,
    ServerError,
    Skipped,
    Upstream,
)
from proxy.wire import codec, encoding


@dataclass
class BoundParams:
    """The client's own parameters of an extended-protocol statement."""

    values: list[bytes | None] = field(default_factory=list)
    formats: list[int] = field(default_factory=list)
    oids: list[int] = field(default_factory=list)


_HOLD_SQL = (
    "SELECT set_config('lock_timeout', '0', true), "
    f"pg_advisory_lock({HOLD_CLASS}, $1::int), pg_advisory_unlock({HOLD_CLASS}, $1::int), "
    "set_config('lock_timeout', $2, true)"
)
"""The client's backend waits for a lock the proxy holds (see :mod:`handlers.holds`),
whatever its ``lock_timeout``, which it has again afterwards."""
HOLD_SECONDS = (0.005, 0.1)
"""Where the proxy cannot hold a lock: the shortest and longest ``pg_sleep`` the backend
waits in instead, one after another, each a fiftieth of the time the handler has worked
so far (a cancel that reaches the backend between two of them is dropped)."""
_SETTINGS_SQL = (
    "SELECT setting, current_setting('lock_timeout') FROM pg_settings "
    "WHERE name = 'statement_timeout'"
)


@dataclass
class _Hold:
    """A statement the client's backend waits in while a handler works."""

    reply: Reply
    ended: asyncio.Future[None]
    key: int | None = None
    """The proxy's lock it waits for, until let go of; ``None``: a sleep."""


class SessionSQL:
    """The proxy's statements in the client's session, for one statement of the client's."""

    def __init__(
        self,
        upstream: Upstream,
        services: Services,
        *,
        database: str,
        params: BoundParams | None = None,
        helper: str = "",
        confirmed: set[Hashable] | None = None,
    ) -> None:
        self.upstream = upstream
        self.services = services
        self.database = database
        self.user = params or BoundParams()
        self.helper = helper
        """The prepared statement name helper SQL uses ("" where the unnamed one is free)."""
        self.params_own: list[bytes | None] = []
        self.confirmed = set() if confirmed is None else confirmed
        """The session's checks that have passed once (see :meth:`check`)."""
        self._copying = False
        """A COPY of a handler's is under way: no other request may go meanwhile."""
        self.started = time.monotonic()
        self.deadline: float | None = None
        """When ``statement_timeout`` ends the statement; read when first needed."""
        self._lock_timeout: bytes | None = b"0"
        """The session's ``lock_timeout``, read with the deadline."""
        self._hold: _Hold | None = None
        """The statement the backend waits in while a handler works."""

    # --- the session's limits, and the statement the backend waits in ------------------

    async def _settings(self) -> float:
        """When the statement times out (``inf``: never), by its ``statement_timeout``;
        the session's ``lock_timeout`` is kept for the hold statements."""
        result = await self.select(_SETTINGS_SQL, [])
        milliseconds = int(values.text(result.rows[0][0]))
        self._lock_timeout = result.rows[0][1]
        return self.started + milliseconds / 1000 if milliseconds > 0 else math.inf

    async def _hold_backend(self, worked: float) -> None:
        """Send the statement the backend waits in: for a lock of the proxy's while it
        can take one, else a sleep of a fiftieth of ``worked``."""
        holds = self.services.holds
        key = None if holds is None else await holds.take(self.database)
        if self._copying:  # began meanwhile: nothing else may go until it ends
            if holds is not None and key is not None:
                holds.release(self.database, key)
            return
        if key is None:
            shortest, longest = HOLD_SECONDS
            seconds = min(max(worked / 50, shortest), longest)
            reply = self._send(f"SELECT pg_sleep({seconds:.3f})", [])
        else:
            reply = self._send(_HOLD_SQL, [str(key).encode(), self._lock_timeout])
        self.upstream.flush()
        self._hold = _Hold(reply, reply.ended(), key)

    def _end_hold(self) -> _Hold | None:
        """The backend's hold ends (it goes on to what follows it); the hold, if any."""
        hold, self._hold = self._hold, None
        if hold is not None:
            self._let_go(hold)
        return hold

    def _let_go(self, hold: _Hold) -> None:
        if hold.key is not None and self.services.holds is not None:
            self.services.holds.release(self.database, hold.key)
            hold.key = None

    # --- the statement's parameters --------------------------------------------------

    def param_oids(self) -> list[int]:
        return self.user.oids + [values.TEXT_OID] * len(self.params_own)

    def param_values(self) -> list[bytes | None]:
        return self.user.values + self.params_own

    def param_formats(self) -> list[int]:
        return self.user.formats + [0] * len(self.params_own)

    def add_param(self, value: str | None) -> str:
        """A parameter of the proxy's own, numbered after the client's."""
        self.params_own.append(None if value is None else values.client_bytes(value))
        return f"${len(self.user.values) + len(self.params_own)}"

    # --- SQL of the proxy's own, in the client's session --------------------------------

    def request(self, sql: str, own: Sequence[bytes | None] | None = None) -> Reply:
        """Buffer one helper statement (sent with the next flush).  Its ``$n`` are the
        statement's parameters, or ``own`` (text values) when given.  A hold the backend
        waits in ends, so that the statement runs next."""
        if self._hold is not None:
            self._let_go(self._hold)
        return self._send(sql, own)

    def _send(self, sql: str, own: Sequence[bytes | None] | None) -> Reply:
        if own is None:
            params, oids, formats = self.param_values(), self.param_oids(), self.param_formats()
        else:
            params, oids, formats = list(own), [values.TEXT_OID] * len(own), []
        return self.upstream.statement(sql, params, oids, formats, name=self.helper)

    async def select(self, sql: str, own: Sequence[bytes | None] | None = None) -> Result:
        reply = self.request(sql, own)
        self.upstream.flush()
        return await reply

    async def check(self, sql: str, params: Sequence[str | None], key: Hashable) -> None:
        """A statement that raises when the caller may not go on.  The first time ``key``
        is checked in the session it runs now; after that it goes with the next statement
        sent, so it costs no round trip of its own, and an error of it is the client's
        statement's before any result of it reaches the client."""
        own = [None if p is None else p.encode(encoding.current()) for p in params]
        if key not in self.confirmed:
            await self.select(sql, own)
            self.confirmed.add(key)
            return
        reply = self.upstream.statement(
            sql, own, [values.TEXT_OID] * len(own), name=self.helper, forward=ERRORS
        )
        reply.on_failure(lambda: self.confirmed.discard(key))

    async def run_sql(self, sql: str, params: Sequence[str | None] = ()) -> list[list[Any]]:
        text = encoding.current()
        result = await self.select(sql, [None if p is None else p.encode(text) for p in params])
        return [[None if v is None else v.decode(text) for v in row] for row in result.rows]

    async def notice(self, message: str) -> None:
        self.upstream.notice(codec.PgError("NOTICE", "00000", message).encode(b"N"))

    async def copy_in(self, sql: str, chunks: AsyncIterator[bytes]) -> int:
        """``COPY ... FROM STDIN`` fed with ``chunks`` as fast as the server takes them.
        An error stops the copy (CopyFail) and is raised."""
        with self._copy():
            return await self._copy_in(sql, chunks)

    @contextlib.contextmanager
    def _copy(self) -> Iterator[None]:
        if self._hold is not None:
            self._let_go(self._hold)
        self._copying = True
        try:
            yield
        finally:
            self._copying = False

    async def _copy_in(self, sql: str, chunks: AsyncIterator[bytes]) -> int:
        upstream = self.upstream
        upstream.parse(self.helper, sql)
        upstream.bind(self.helper, self.helper)
        reply = upstream.execute(self.helper, reply=CopyIn())
        upstream.flush()
        assert isinstance(reply, CopyIn)
        await reply.started.wait()
        if reply.done:
            await reply
        try:
            async for chunk in chunks:
                if reply.done:
                    break
                upstream.write_raw(codec.copy_data(chunk))
                await upstream.writable()
        except BaseException as error:
            upstream.write_raw(codec.copy_fail(f"load stopped: {type(error).__name__}"))
            upstream.flush()
            with contextlib.suppress(ServerError, Skipped):
                await reply
            raise
        upstream.write_raw(codec.COPY_DONE)
        if self.helper:
            upstream.close(b"S", self.helper)
        upstream.flush()
        result = await reply
        return int(result.tag.rsplit(" ", 1)[-1])

    async def copy_out(self, sql: str) -> AsyncIterator[bytes]:
        """``COPY ... TO STDOUT``: each CopyData payload as it arrives, read from the
        server as fast as the caller takes them.  Stopping early leaves the rest to the
        reply queue, which drops it."""
        upstream = self.upstream
        reply = CopyOut(upstream.pause_reading)
        with self._copy():
            upstream.parse(self.helper, sql)
            upstream.bind(self.helper, self.helper)
            upstream.execute(self.helper, reply=reply)
            if self.helper:
                upstream.close(b"S", self.helper)
            upstream.flush()
            try:
                while (chunk := await reply.next()) is not None:
                    yield chunk
            finally:
                reply.abandon()
            await reply
