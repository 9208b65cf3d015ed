"""The other relay processes of one proxy (``--workers``), reached over Unix sockets.

Each relay process listens on ``<folder>/<index>.sock`` in a folder only the proxy's own
user can open.  Two requests cross, one JSON object a line: a client's CancelRequest
whose key this process did not issue (the kernel spread the client's connections over
the processes, so its cancel may land on another one), and the counters for
``/metrics``.  A cancel still needs the key its session was given: relaying it lends no
right.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from proxy.metrics import Counters
from proxy.wire.codec import CancelRequest

log = logging.getLogger("pgml_proxy.peers")

ASK_SECONDS = 2.0
"""How long ``/metrics`` waits for another relay process's counters."""
MAX_LINE = 1 << 20


class Peers:
    """This process's end: serves the others' requests and sends its own."""

    def __init__(
        self,
        folder: Path,
        index: int,
        count: int,
        cancel: Callable[[CancelRequest], object],
        counters: Callable[[], Counters],
    ) -> None:
        self.folder = folder
        self.index = index
        self.count = count
        self._cancel = cancel
        self._counters = counters
        self._server: asyncio.AbstractServer | None = None
        self._sending: set[asyncio.Task[Any]] = set()

    def _path(self, index: int) -> str:
        return str(self.folder / f"{index}.sock")

    @property
    def others(self) -> list[int]:
        return [i for i in range(self.count) if i != self.index]

    async def start(self) -> None:
        path = Path(self._path(self.index))
        path.unlink(missing_ok=True)  # left by this slot's process before a restart
        self._server = await asyncio.start_unix_server(self._serve, path=str(path), limit=MAX_LINE)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        for task in list(self._sending):
            task.cancel()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            request = json.loads(await reader.readline())
            if "cancel" in request:
                pid, secret = request["cancel"]
                self._cancel(CancelRequest(int(pid), bytes.fromhex(secret)))
            elif "counters" in request:
                writer.write(json.dumps(self._counters().to_json()).encode() + b"\n")
                await writer.drain()
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.warning("bad request from another relay process: %s", exc)
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()

    async def _ask(self, index: int, request: dict[str, Any]) -> bytes:
        reader, writer = await asyncio.open_unix_connection(self._path(index), limit=MAX_LINE)
        try:
            writer.write(json.dumps(request).encode() + b"\n")
            await writer.drain()
            return await reader.readline()
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()

    def cancel(self, request: CancelRequest) -> None:
        """Hand a cancel whose key is not this process's to every other relay process."""
        for index in self.others:
            message = {"cancel": [request.pid, request.secret.hex()]}
            task = asyncio.get_running_loop().create_task(self._ask(index, message))
            self._sending.add(task)
            task.add_done_callback(self._sent)

    def _sent(self, task: asyncio.Task[Any]) -> None:
        self._sending.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.info("could not hand a cancel to another relay process: %s", task.exception())

    async def counters(self) -> Counters:
        """Every relay process's counters added up (a process that does not answer in
        :data:`ASK_SECONDS`, being restarted, say, is left out)."""
        total = self._counters()
        answers = await asyncio.gather(
            *(asyncio.wait_for(self._ask(i, {"counters": True}), ASK_SECONDS) for i in self.others),
            return_exceptions=True,
        )
        for index, answer in zip(self.others, answers, strict=True):
            if isinstance(answer, BaseException):
                log.info("relay process %d gave no counters: %s", index, answer)
                continue
            try:
                total.add(Counters.from_json(json.loads(answer)))
            except (ValueError, KeyError, TypeError) as exc:
                log.warning("relay process %d gave unreadable counters: %s", index, exc)
        return total
