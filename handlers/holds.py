"""Advisory locks a proxy holds for its callers' backends to wait on while a call works.

A pgml call's model runs in the proxy, but PostgreSQL's own controls act on the caller's
backend: ``pg_cancel_backend``, ``statement_timeout`` and a terminate stop a statement
only while the backend runs one (a cancel that reaches a backend waiting for its client
is dropped).  So while a call works, the caller's backend waits in one statement, to
take an advisory lock that this proxy holds on a connection of its own in the same
database (``pgml-proxy holds (<name>)`` in ``pg_stat_activity``).  The proxy lets go of
the lock when the call is done, or when the call sends the caller's backend SQL of its
own; the backend then takes the lock, gives it back at once and goes on.  There is no
moment in between when the backend is idle, however late the proxy is.

Should the connection go (a terminate, a restart), PostgreSQL releases its locks and the
waiting backends go on: each wait is begun again on a new connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import random
import time
from typing import Any

from handlers.service import ServiceConnections

log = logging.getLogger("pgml_proxy.holds")

HOLD_CLASS = 0x70676D68
"""The first key of a hold's advisory lock (``pg_advisory_lock(int, int)``): "pgmh"."""
_KEYS = 2**31
_TRIES = 8
"""Keys tried before giving up (another proxy in front of the database holds them)."""
RETRY_SECONDS = 5.0
"""How long after a failed connect the next one is tried (meanwhile there is no lock)."""
IDLE_SECONDS = 60.0
"""How long a connection that holds no lock is kept (a statement then opens it again)."""


class Holds:
    """This proxy's hold locks, on one connection per database, closed once it has held
    none for ``idle_seconds`` (so that an idle proxy keeps no session in a database)."""

    def __init__(self, service: ServiceConnections, idle_seconds: float = IDLE_SECONDS) -> None:
        self.service = service
        self.idle_seconds = idle_seconds
        self._holders: dict[str, _Holder] = {}

    async def take(self, database: str) -> int | None:
        """The second key of a lock this proxy now holds in ``database``; ``None`` when
        it cannot hold one (no connection to hold it on)."""
        holder = self._holders.get(database)
        if holder is None:
            holder = self._holders[database] = _Holder(self.service, database, self.idle_seconds)
        return await holder.take()

    def release(self, database: str, key: int) -> None:
        """Let go of the lock ``key`` as soon as its connection is free."""
        holder = self._holders.get(database)
        if holder is not None:
            holder.release(key)

    async def close(self) -> None:
        for holder in self._holders.values():
            await holder.close()
        self._holders.clear()


class _Holder:
    """The locks held in one database: taken one at a time, let go of in batches."""

    def __init__(self, service: ServiceConnections, database: str, idle_seconds: float) -> None:
        self.service = service
        self.database = database
        self.idle_seconds = idle_seconds
        self.idle: asyncio.TimerHandle | None = None
        self.closing: asyncio.Task[None] | None = None
        self.connection: Any = None
        self.held: set[int] = set()
        """Keys locked on :attr:`connection` and not yet let go of."""
        self.letting_go: set[int] = set()
        self.busy = asyncio.Lock()
        """One query at a time on the connection."""
        self.keys = itertools.count(random.randrange(_KEYS))
        self.retry_at = 0.0
        self.drain: asyncio.Task[None] | None = None

    async def take(self) -> int | None:
        """A key locked for the caller. A caller stopped meanwhile (a cancel) does not
        stop the lock's query, whose answer alone says whether the lock was taken: a
        lock taken for a caller that has gone is let go of."""
        taking = asyncio.ensure_future(self._take())
        try:
            return await asyncio.shield(taking)
        except asyncio.CancelledError:
            taking.add_done_callback(self._abandoned)
            raise

    def _abandoned(self, taking: asyncio.Future[int | None]) -> None:
        if not taking.cancelled() and taking.exception() is None:
            key = taking.result()
            if key is not None:
                self.release(key)

    async def _take(self) -> int | None:
        if self.idle is not None:
            self.idle.cancel()
            self.idle = None
        async with self.busy:
            connection = await self._connected()
            if connection is None:
                return None
            for _ in range(_TRIES):
                key = next(self.keys) % _KEYS
                try:
                    taken = await connection.fetchval(
                        "SELECT pg_try_advisory_lock($1, $2)", HOLD_CLASS, key
                    )
                except Exception as error:  # the connection is gone, and its locks with it
                    log.warning("the hold connection to %s failed: %s", self.database, error)
                    self._drop()
                    return None
                if taken:
                    self.held.add(key)
                    return key
            return None

    def release(self, key: int) -> None:
        if key not in self.held:  # held on a connection that is gone: so is the lock
            return
        self.held.discard(key)
        self.letting_go.add(key)
        if self.drain is None or self.drain.done():
            self.drain = asyncio.get_running_loop().create_task(self._let_go())

    async def _let_go(self) -> None:
        while self.letting_go:
            async with self.busy:
                keys, self.letting_go = sorted(self.letting_go), set()
                connection = self.connection
                if connection is None:
                    continue
                try:
                    await connection.execute(
                        "SELECT pg_advisory_unlock($1, k) FROM unnest($2::int[]) AS k",
                        HOLD_CLASS,
                        keys,
                    )
                except Exception as error:  # closing the connection lets go of them all
                    log.warning("the hold connection to %s failed: %s", self.database, error)
                    self._drop()
        if not self.held and self.connection is not None and self.idle is None:
            self.idle = asyncio.get_running_loop().call_later(self.idle_seconds, self._idle)

    def _idle(self) -> None:
        """Nothing was held for a while: the connection goes (a later take opens one)."""
        self.idle = None
        if self.held or self.letting_go or self.busy.locked() or self.connection is None:
            return
        connection, self.connection = self.connection, None
        self.closing = asyncio.get_running_loop().create_task(_close(connection))

    async def _connected(self) -> Any:
        if self.connection is not None and not self.connection.is_closed():
            return self.connection
        self.held.clear()
        self.connection = None
        if time.monotonic() < self.retry_at:
            return None
        try:
            self.connection = await self.service.connect(self.database, "holds")
        except Exception as error:
            log.warning("no hold connection to %s: %s", self.database, error)
            self.retry_at = time.monotonic() + RETRY_SECONDS
        return self.connection

    def _drop(self) -> None:
        connection, self.connection = self.connection, None
        self.held.clear()
        if connection is not None:
            connection.terminate()

    async def close(self) -> None:
        if self.idle is not None:
            self.idle.cancel()
            self.idle = None
        for task in (self.drain, self.closing):
            if task is not None:
                await asyncio.wait([task], timeout=1.0)
        if self.connection is not None:
            await _close(self.connection)
            self.connection = None


async def _close(connection: Any) -> None:
    with contextlib.suppress(Exception):
        await connection.close(timeout=1.0)
