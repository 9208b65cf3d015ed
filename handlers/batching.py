"""One queue per model and operation, shared by every session: requests that arrive
while the model is busy are run together as one batch."""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import Awaitable, Callable, Hashable
from dataclasses import dataclass
from typing import Any

Work = Callable[[list[Any]], list[Any]]
"""Blocking: inputs in, one result per input out."""


@dataclass(slots=True)
class _Request:
    items: list[Any]
    done: asyncio.Future[list[Any]]


class Batcher:
    def __init__(self, run: Callable[[Work, list[Any]], Awaitable[list[Any]]], limit: int) -> None:
        self._run = run
        self.limit = limit
        self._queues: dict[Hashable, list[_Request]] = defaultdict(list)
        self._draining: set[Hashable] = set()
        self._tasks: set[asyncio.Future[None]] = set()

    async def submit(self, key: Hashable, work: Work, items: list[Any]) -> list[Any]:
        """Results of ``work`` for ``items``, run with whatever else waits under ``key``."""
        if not items:
            return []
        request = _Request(items, asyncio.get_running_loop().create_future())
        self._queues[key].append(request)
        if key not in self._draining:
            self._draining.add(key)
            task = asyncio.ensure_future(self._drain(key, work))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        return await request.done

    async def _drain(self, key: Hashable, work: Work) -> None:
        queue = self._queues[key]
        try:
            while queue:
                taken: list[_Request] = []
                size = 0
                while queue and (not taken or size + len(queue[0].items) <= self.limit):
                    request = queue.pop(0)
                    if request.done.cancelled():
                        continue
                    taken.append(request)
                    size += len(request.items)
                if taken:
                    await self._serve(taken, work)
        finally:
            self._draining.discard(key)
            self._queues.pop(key, None)

    async def _serve(self, taken: list[_Request], work: Work) -> None:
        inputs = [item for request in taken for item in request.items]
        try:
            outputs = await self._run(work, inputs)
        except Exception as exc:
            for request in taken:
                if not request.done.done():
                    request.done.set_exception(exc)
            return
        start = 0
        for request in taken:
            end = start + len(request.items)
            if not request.done.done():
                request.done.set_result(outputs[start:end])
            start = end
