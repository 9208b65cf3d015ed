"""What each project has deployed, cached per database and dropped whenever the catalog
says it changed (its triggers notify ``pgml_catalog``), so that a redeploy by any
session or any proxy is seen at once and a steady stream of predictions asks nothing.
A hot standby cannot LISTEN: there the cache is dropped every :data:`POLL` seconds, so a
deployment replayed from the primary is seen within that."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass, field
from typing import Any

from handlers.catalog import CHANGES_CHANNEL
from handlers.projects import Catalog, Deployed
from handlers.service import ServiceConnections

log = logging.getLogger("pgml_proxy.deployments")


POLL = 0.5
"""Seconds a hot standby's cache is kept."""
_RECOVERY = "25006"
"""LISTEN's SQLSTATE on a hot standby ("cannot execute LISTEN during recovery")."""


@dataclass(slots=True)
class _Listened:
    connection: Any = None
    generation: int = 0
    deployed: dict[str, Deployed] = field(default_factory=dict)
    polled_at: float | None = None
    """When a standby's cache was last dropped (None: it listens)."""

    @property
    def caching(self) -> bool:
        return self.connection is not None or self.polled_at is not None


class DeploymentCache:
    def __init__(self, service: ServiceConnections) -> None:
        self.service = service
        self._databases: dict[str, _Listened] = {}
        self._lock = asyncio.Lock()

    async def deployed(self, database: str, catalog: Catalog, project: str) -> Deployed:
        state = await self._listening(database)
        if state is not None and state.polled_at is not None:
            now = time.monotonic()
            if now - state.polled_at > POLL:
                state.polled_at = now
                state.generation += 1
                state.deployed.clear()
        if state is not None and project in state.deployed:
            return state.deployed[project]
        generation = None if state is None else state.generation
        found = await catalog.deployed(project)
        if state is not None and state.generation == generation and state.caching:
            state.deployed[project] = found  # no change was heard while it was read
        return found

    def forget(self, database: str) -> None:
        """Drop what is known of ``database``'s deployments (its catalog was dropped)."""
        state = self._databases.get(database)
        if state is not None:
            state.generation += 1
            state.deployed.clear()

    async def _listening(self, database: str) -> _Listened | None:
        """The database's cache, listening; None (no caching) when it cannot listen."""
        state = self._databases.get(database)
        if state is not None and state.caching:
            return state
        async with self._lock:
            state = self._databases.setdefault(database, _Listened())
            if not state.caching:
                connection = None
                try:
                    connection = await self.service.connect(database, "listen")
                    await connection.add_listener(CHANGES_CHANNEL, self._changed(state))
                    connection.add_termination_listener(self._lost(state))
                except (TimeoutError, OSError, Exception) as exc:
                    if getattr(exc, "sqlstate", None) == _RECOVERY:
                        log.info("%s is a hot standby: deployments read every %s s", database, POLL)
                        state.polled_at = time.monotonic()
                        if connection is not None:
                            await connection.close()
                        return state
                    log.warning("cannot listen for catalog changes in %s: %s", database, exc)
                    return None
                state.connection = connection
        return state

    @staticmethod
    def _changed(state: _Listened) -> Any:
        def changed(*_: Any) -> None:
            state.generation += 1
            state.deployed.clear()

        return changed

    @staticmethod
    def _lost(state: _Listened) -> Any:
        def lost(*_: Any) -> None:
            state.connection = None
            state.generation += 1
            state.deployed.clear()

        return lost

    async def close(self) -> None:
        for state in self._databases.values():
            if state.connection is not None:
                with contextlib.suppress(Exception):
                    await state.connection.close()
                state.connection = None
