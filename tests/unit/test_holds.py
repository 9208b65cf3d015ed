"""The hold connection of a database: kept while it holds a lock, closed once it has held
none for a while, opened again by the next hold."""

from __future__ import annotations

import asyncio
from typing import Any

from handlers.holds import Holds


class Connection:
    """The part of an asyncpg connection the holds use, recording what is asked."""

    def __init__(self) -> None:
        self.locked: set[int] = set()
        self.closed = False
        self.answer = asyncio.Event()
        self.answer.set()

    async def fetchval(self, sql: str, _class: int, key: int) -> bool:
        assert "pg_try_advisory_lock" in sql
        self.locked.add(key)
        await self.answer.wait()  # the lock is taken before the answer arrives
        return True

    async def execute(self, sql: str, _class: int, keys: list[int]) -> None:
        assert "pg_advisory_unlock" in sql
        self.locked -= set(keys)

    async def close(self, timeout: float) -> None:
        self.closed = True

    def is_closed(self) -> bool:
        return self.closed

    def terminate(self) -> None:
        self.closed = True


class Service:
    def __init__(self) -> None:
        self.opened: list[Connection] = []

    async def connect(self, database: str, purpose: str) -> Any:
        assert purpose == "holds"
        self.opened.append(Connection())
        return self.opened[-1]


def test_an_idle_hold_connection_is_closed_and_opened_again() -> None:
    async def run() -> None:
        service = Service()
        holds = Holds(service, idle_seconds=0.05)  # type: ignore[arg-type]
        key = await holds.take("db")
        assert key is not None and len(service.opened) == 1
        await asyncio.sleep(0.1)  # held: kept however long
        assert not service.opened[0].closed
        holds.release("db", key)
        second = await holds.take("db")  # taken again before the idle time: the same one
        assert second is not None and len(service.opened) == 1
        holds.release("db", second)
        await asyncio.sleep(0.2)
        first = service.opened[0]
        assert first.closed and not first.locked
        third = await holds.take("db")
        assert third is not None and len(service.opened) == 2
        holds.release("db", third)
        await asyncio.sleep(0.01)
        assert not service.opened[1].locked
        await holds.close()
        assert service.opened[1].closed

    asyncio.run(run())


def test_a_lock_taken_for_a_caller_stopped_meanwhile_is_let_go_of() -> None:
    """A statement stopped while its lock's query is out: the lock is taken all the same
    (the query was sent) and let go of once its answer is in, so no key is left held."""

    async def run() -> None:
        service = Service()
        holds = Holds(service, idle_seconds=60)  # type: ignore[arg-type]
        first = await holds.take("db")
        assert first is not None
        connection = service.opened[0]
        connection.answer.clear()
        caller = asyncio.ensure_future(holds.take("db"))
        await asyncio.sleep(0.01)
        assert len(connection.locked) == 2
        caller.cancel()
        await asyncio.gather(caller, return_exceptions=True)
        assert caller.cancelled()
        connection.answer.set()
        await asyncio.sleep(0.01)
        assert connection.locked == {first}
        holds.release("db", first)
        await asyncio.sleep(0.01)
        assert not connection.locked
        await holds.close()

    asyncio.run(run())
