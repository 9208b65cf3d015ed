"""One queue per model and operation, shared by every session: requests that arrive
while the model is busy are run together as one batch."""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import Awaitable, Callable, Hashable
from dataclasses import dataclass
from typing import Any

from handlers.capacity import Stopped

Work = Callable[[list[Any], Stopped], list[Any]]
"""Blocking: inputs in, one result per input out; it may stop early (a generation stops
between tokens) once ``stopped()``: no one waits for its results any more."""
Run = Callable[[Any, Work, list[Any], Stopped], Awaitable[list[Any]]]
"""Runs one batch of work on a model, off the event loop."""


@dataclass(slots=True)
class _Request:
    items: list[Any]
    done: asyncio.Future[list[Any]]
    stopped: Stopped


class Batcher:
    def __init__(self, run: Run, limit: int) -> None:
        self._run = run
        self.limit = limit
        self._queues: dict[Hashable, list[_Request]] = defaultdict(list)
        self._draining: set[Hashable] = set()
        self._tasks: set[asyncio.Future[None]] = set()

    async def submit(
        self,
        key: Hashable,
        model: Any,
        work: Work,
        items: list[Any],
        stopped: Stopped = lambda: False,
    ) -> list[Any]:
        """Results of ``work`` on ``model`` for ``items``, run with whatever else waits
        under ``key``.  ``stopped`` tells whether this request's caller has given up."""
        if not items:
            return []
        request = _Request(items, asyncio.get_running_loop().create_future(), stopped)
        self._queues[key].append(request)
        if key not in self._draining:
            self._draining.add(key)
            task = asyncio.ensure_future(self._drain(key, model, work))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        return await request.done

    async def _drain(self, key: Hashable, model: Any, work: Work) -> None:
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
                    await self._serve(model, taken, work)
        finally:
            self._draining.discard(key)
            self._queues.pop(key, None)

    async def _serve(self, model: Any, taken: list[_Request], work: Work) -> None:
        inputs = [item for request in taken for item in request.items]

        def abandoned() -> bool:
            """Every request of the batch cancelled (its caller gone) or stopped."""
            return all(request.done.done() or request.stopped() for request in taken)

        try:
            outputs = await self._run(model, work, inputs, abandoned)
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
