"""A proxy stops looking for trainings left behind in a database once it is dropped."""

from __future__ import annotations

import asyncio
from typing import Any

import asyncpg

from handlers.trainings import Trainings


class _Gone:
    """Service connections to a database that no longer exists (PostgreSQL's 3D000)."""

    name = "test"

    def __init__(self) -> None:
        self.asked = 0

    async def pool(self, database: str) -> Any:
        self.asked += 1
        raise asyncpg.InvalidCatalogNameError(f'database "{database}" does not exist')


def test_the_watch_of_a_dropped_database_ends() -> None:
    async def scenario() -> None:
        service = _Gone()
        trainings = Trainings(service)  # type: ignore[arg-type]
        trainings.watch("dropped")
        for _ in range(100):
            await asyncio.sleep(0.01)
            if "dropped" not in trainings._watches:
                break
        assert "dropped" not in trainings._watches and service.asked == 1
        trainings.watch("dropped")  # used again (created anew): watched again
        assert "dropped" in trainings._watches
        await trainings.close()

    asyncio.run(scenario())
