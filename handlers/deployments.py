"""What each project has deployed, cached per database and dropped whenever the catalog
says it changed (its triggers notify ``pgml_catalog``), so that a redeploy by any
session or any proxy is seen at once and a steady stream of predictions asks nothing."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass, field
from typing import Any

from handlers.catalog import CHANGES_CHANNEL
from handlers.projects import Catalog, Deployed
from handlers.service import ServiceConnections

log = logging.getLogger("pgml_proxy.deployments")


@dataclass(slots=True)
class _Listened:
    connection: Any = None
    generation: int = 0
    deployed: dict[str, Deployed] = field(default_factory=dict)


class DeploymentCache:
    def __init__(self, service: ServiceConnections) -> None:
        self.service = service
        self._databases: dict[str, _Listened] = {}
        self._lock = asyncio.Lock()

    async def deployed(self, database: str, catalog: Catalog, project: str) -> Deployed:
        state = await self._listening(database)
        if state is not None and project in state.deployed:
            return state.deployed[project]
        generation = None if state is None else state.generation
        found = await catalog.deployed(project)
        if state is not None and state.generation == generation and state.connection:
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
        if state is not None and state.connection is not None:
            return state
        async with self._lock:
            state = self._databases.setdefault(database, _Listened())
            if state.connection is None:
                try:
                    connection = await self.service.connect(database)
                    await connection.add_listener(CHANGES_CHANNEL, self._changed(state))
                    connection.add_termination_listener(self._lost(state))
                except (TimeoutError, OSError, Exception) as exc:
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
