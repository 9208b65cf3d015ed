"""The proxy's own connections to PostgreSQL, one small pool per database.

They carry the proxy's writes that other sessions must see at once (catalog creation,
progress logs, model files, job status) and the dashboard's reads.  User data never
goes through them: it moves in-band, in the client's own session.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Any

from handlers.catalog import ensure_catalog, installed

log = logging.getLogger("pgml_proxy.service")


@dataclass(frozen=True)
class ServiceLogin:
    """Where and as whom the proxy connects for itself (``--upstream``'s credentials)."""

    host: str
    port: int
    user: str | None
    password: str | None
    sslmode: str = "disable"


class ServiceConnections:
    """Each connection names itself in ``application_name``: ``pgml-proxy <purpose>
    (<the proxy's name>)``, ``catalog`` for the pools, so that a DBA can tell them apart
    in ``pg_stat_activity``."""

    def __init__(self, login: ServiceLogin, name: str, max_size: int = 4) -> None:
        self.login = login
        self.name = name
        self.max_size = max_size
        self._pools: dict[str, Any] = {}
        self._catalogs: dict[str, asyncio.Task[int]] = {}
        self._lock = asyncio.Lock()

    async def pool(self, database: str) -> Any:
        """The pool for ``database``, opened on first use."""
        async with self._lock:
            if database not in self._pools:
                import asyncpg

                self._pools[database] = await asyncpg.create_pool(
                    **self._settings(database, "catalog"), min_size=0, max_size=self.max_size
                )
            return self._pools[database]

    async def connect(self, database: str, purpose: str) -> Any:
        """A connection of its own (not from the pool), e.g. to LISTEN on."""
        import asyncpg

        return await asyncpg.connect(**self._settings(database, purpose))

    def _settings(self, database: str, purpose: str) -> dict[str, Any]:
        return {
            "host": self.login.host,
            "port": self.login.port,
            "user": self.login.user,
            "password": self.login.password,
            "database": database,
            "ssl": None if self.login.sslmode == "disable" else self.login.sslmode,
            "server_settings": {"application_name": f"pgml-proxy {purpose} ({self.name})"},
        }

    async def ensure_catalog(self, database: str) -> None:
        """Create or migrate the catalog of ``database`` once per proxy process."""
        task = self._catalogs.get(database)
        if task is None or (task.done() and task.exception() is not None):
            task = asyncio.get_running_loop().create_task(self._migrate(database))
            self._catalogs[database] = task
        await asyncio.shield(task)

    def forget_catalog(self, database: str) -> None:
        """The catalog of ``database`` may be gone (dropped): the next call looks again."""
        task = self._catalogs.get(database)
        if task is not None and task.done():
            del self._catalogs[database]

    async def catalog_installed(self, database: str) -> bool:
        """Whether ``database`` has the catalog now (asked, not remembered)."""
        pool = await self.pool(database)
        async with pool.acquire() as connection:
            return await installed(connection)

    async def _migrate(self, database: str) -> int:
        pool = await self.pool(database)
        async with pool.acquire() as connection:
            return await ensure_catalog(connection)

    async def close(self) -> None:
        for pool in self._pools.values():
            await pool.close()
        self._pools.clear()
