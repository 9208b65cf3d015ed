"""Trainings in progress, known to every proxy in front of the database.

A proxy that trains a model records its name in the model's row (``trained_by``) and
holds an advisory lock on the model, on a connection of the training's own (named
``pgml-proxy training (<name>)`` in ``pg_stat_activity``).  PostgreSQL releases the lock
when that proxy is gone, however it went, so any proxy can tell a live training from
one left behind: :func:`reap` marks the latter failed, as each proxy does every
:data:`REAP_SECONDS` in each database whose catalog it serves.

Any proxy can cancel a training another one runs: it records the request in the row
(``cancel_requested_at``) and notifies the channel the training's connection listens
on.  The notification only says "look": the running proxy stops when the row says so,
so a role that may merely NOTIFY cannot stop another role's training.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass, field
from typing import Any

from handlers.service import ServiceConnections

log = logging.getLogger("pgml_proxy.trainings")

CANCEL_CHANNEL = "pgml_proxy_cancel"
LOCK_CLASS = 0x70676D6C
"""The first key of a training's advisory lock (``pg_advisory_lock(int, int)``): "pgml"."""
LOCK = f"{LOCK_CLASS}, ($1::bigint % 2147483647)::int"
"""The lock's two keys for the model id ``$1``."""
REAP_SECONDS = 10.0
"""How often a proxy looks for trainings left behind by a proxy that is gone."""


@dataclass
class Training:
    """A training this proxy runs: set :attr:`stop` to cancel it."""

    database: str
    model_id: int
    stop: asyncio.Event = field(default_factory=asyncio.Event)
    connection: Any = None
    """The training's own connection: it holds the lock and listens for cancels."""


class Trainings:
    def __init__(self, service: ServiceConnections) -> None:
        self.service = service
        self.running: dict[tuple[str, int], Training] = {}
        """The trainings this proxy runs, by (database, model id)."""
        self._checks: set[asyncio.Task[None]] = set()
        self._watches: dict[str, asyncio.Task[None]] = {}

    @property
    def name(self) -> str:
        return self.service.name

    async def start(self, database: str, model_id: int) -> Training:
        """Record that this proxy trains ``model_id`` (its row must be in progress)."""
        training = Training(database, model_id)
        connection = await self.service.connect(database, "training")
        try:
            await connection.execute(f"SELECT pg_advisory_lock({LOCK})", model_id)
            await connection.add_listener(CANCEL_CHANNEL, self._heard(training))
            await connection.execute(
                "UPDATE pgml.models SET trained_by = $2 WHERE id = $1", model_id, self.name
            )
        except BaseException:
            await _close(connection)
            raise
        connection.add_termination_listener(self._lost(training))
        training.connection = connection
        self.running[(database, model_id)] = training
        return training

    async def finish(self, training: Training) -> None:
        """The training ended (its row says how): its lock and connection go."""
        self.running.pop((training.database, training.model_id), None)
        connection, training.connection = training.connection, None
        if connection is not None:
            await _close(connection)

    async def cancel(self, database: str, model_id: int) -> bool:
        """Ask a training to stop, whichever proxy runs it; whether one was running."""
        training = self.running.get((database, model_id))
        if training is not None:
            training.stop.set()
            return True
        pool = await self.service.pool(database)
        async with pool.acquire() as connection, connection.transaction():
            requested = await connection.fetchval(
                "UPDATE pgml.models SET cancel_requested_at = clock_timestamp() "
                "WHERE id = $1 AND status = 'in_progress' AND trained_by IS NOT NULL "
                "RETURNING id",
                model_id,
            )
            if requested is not None:
                await connection.execute(f"SELECT pg_notify('{CANCEL_CHANNEL}', $1)", str(model_id))
        return requested is not None

    def _heard(self, training: Training) -> Any:
        def heard(connection: Any, pid: int, channel: str, payload: str) -> None:
            if payload == str(training.model_id) and not training.stop.is_set():
                task = asyncio.get_running_loop().create_task(self._check(training, connection))
                self._checks.add(task)
                task.add_done_callback(self._checks.discard)

        return heard

    async def _check(self, training: Training, connection: Any) -> None:
        """A cancel was announced: stop if the row asks for it."""
        try:
            requested = await connection.fetchval(
                "SELECT cancel_requested_at IS NOT NULL FROM pgml.models WHERE id = $1",
                training.model_id,
            )
        except Exception as exc:  # the connection went: the lock with it, see _lost
            log.warning("cannot read the cancel request of model %d: %s", training.model_id, exc)
            return
        if requested:
            log.info("model %d: cancelled through another proxy", training.model_id)
            training.stop.set()

    @staticmethod
    def _lost(training: Training) -> Any:
        def lost(*_: Any) -> None:
            if training.connection is not None:
                log.warning(
                    "model %d: the training's connection was lost; other proxies may now "
                    "take the training for gone",
                    training.model_id,
                )
                training.connection = None

        return lost

    async def reap(self, database: str) -> int:
        """Mark failed the trainings of ``database`` whose proxy is gone; how many."""
        pool = await self.service.pool(database)
        async with pool.acquire() as connection:
            return await reap(connection)

    def watch(self, database: str) -> None:
        """Reap ``database`` now and every :data:`REAP_SECONDS` from now on."""
        if database not in self._watches:
            task = asyncio.get_running_loop().create_task(self._watch(database))
            self._watches[database] = task

    async def _watch(self, database: str) -> None:
        failing = False
        while True:
            try:
                await self.reap(database)
                failing = False
            except Exception as exc:  # the server is away, the catalog dropped: try later
                if getattr(exc, "sqlstate", None) == "3D000":  # the database is gone
                    self._watches.pop(database, None)  # a call there again watches again
                    return
                if not failing:
                    log.warning("cannot look for trainings left behind in %s: %s", database, exc)
                failing = True
            await asyncio.sleep(REAP_SECONDS)

    async def close(self) -> None:
        """Stop watching (the trainings themselves end with their statements)."""
        for task in self._watches.values():
            task.cancel()
        await asyncio.gather(*self._watches.values(), return_exceptions=True)
        self._watches.clear()


async def reap(connection: Any) -> int:
    """:meth:`Trainings.reap` on ``connection`` (nothing on a hot standby)."""
    if await connection.fetchval("SELECT pg_is_in_recovery()"):
        return 0
    rows = await connection.fetch(
        "SELECT id, trained_by FROM pgml.models "
        "WHERE status = 'in_progress' AND trained_by IS NOT NULL"
    )
    reaped = 0
    for row in rows:
        if not await connection.fetchval(f"SELECT pg_try_advisory_lock({LOCK})", row["id"]):
            continue  # its proxy holds it: still training
        try:
            status = await connection.execute(
                "UPDATE pgml.models SET status = 'failed', updated_at = clock_timestamp(), "
                "error = format('the proxy %s that was training it is gone', trained_by) "
                "WHERE id = $1 AND status = 'in_progress'",
                row["id"],
            )
        finally:
            await connection.execute(f"SELECT pg_advisory_unlock({LOCK})", row["id"])
        if status == "UPDATE 1":
            log.warning("model %d: proxy %s is gone; marked failed", row["id"], row["trained_by"])
            reaped += 1
    return reaped


async def _close(connection: Any) -> None:
    with contextlib.suppress(Exception):
        await connection.close()
