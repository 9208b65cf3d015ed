"""``--workers N``: the proxy's relay processes, started, watched and stopped.

The process the user started only supervises: it starts N relay processes that accept
on the same port (``SO_REUSEPORT``, the kernel spreading connections over them), says
the proxy is ready once every one listens, starts again one that dies (the others and
their clients go on), and on SIGINT or SIGTERM asks each to drain and waits for them.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import shutil
import signal
import socket
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from multiprocessing.connection import Connection, wait
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from multiprocessing.process import BaseProcess

    from proxy.config import Settings
    from proxy.relay.address import UpstreamAddress

log = logging.getLogger("pgml_proxy.workers")

RESTART_PAUSE = 1.0
"""The least time between two starts of one relay process (a process that dies at once
is not started again in a tight loop)."""
STOP_MARGIN = 10.0
"""Seconds a relay process gets beyond ``--shutdown-grace`` to exit before it is killed."""
SOCKET_PATH_MAX = 107
"""The longest path a Unix socket may have (``sun_path`` is 108 bytes with its NUL)."""


@dataclass(frozen=True, slots=True)
class Slot:
    """Which relay process this is, and where the others listen for cancels and counters."""

    folder: Path
    index: int
    count: int


RelayMain = Callable[["Settings", "UpstreamAddress", Slot, Connection], None]
"""A relay process's body: serve until told to stop, ``send`` the port once listening."""


def peer_folder(count: int) -> Path:
    """A new folder, only this user's, for the relay processes' sockets: in the temporary
    folder (``TMPDIR``), or in ``/tmp`` where the sockets' paths would be too long there."""
    longest = len(f"/{count - 1}.sock")
    for base in dict.fromkeys((tempfile.gettempdir(), "/tmp")):
        try:
            folder = tempfile.mkdtemp(prefix="pgml-proxy-", dir=base)
        except OSError:
            continue
        if len(os.fsencode(folder)) + longest <= SOCKET_PATH_MAX:
            return Path(folder)
        os.rmdir(folder)
    raise OSError(
        f"no folder for the relay processes' sockets: {tempfile.gettempdir()} (TMPDIR) gives "
        f"paths longer than {SOCKET_PATH_MAX} bytes and /tmp cannot be written"
    )


class Supervisor:
    def __init__(self, settings: Settings, upstream: UpstreamAddress, relay: RelayMain) -> None:
        self.settings = settings
        self.upstream = upstream
        self.relay = relay
        self._context = multiprocessing.get_context("spawn")
        self._folder = peer_folder(settings.workers)
        self._processes: dict[int, BaseProcess] = {}
        self._started: dict[int, float] = {}
        self._stopping = False

    def _start(self, index: int) -> Connection:
        receive, send = self._context.Pipe(duplex=False)
        slot = Slot(self._folder, index, self.settings.workers)
        process = self._context.Process(
            target=self.relay,
            args=(self.settings, self.upstream, slot, send),
            name=f"pgml-proxy relay {index}",
        )
        process.start()
        send.close()
        self._processes[index] = process
        self._started[index] = time.monotonic()
        return receive

    def _stop(self, signum: int, frame: FrameType | None) -> None:
        self._stopping = True

    def run(self, ready: Callable[[int], None]) -> int:
        """Serve until SIGINT or SIGTERM; ``ready(port)`` once every process listens.
        Returns the exit status: a relay process's own when one fails before it is ready."""
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, self._stop)
        try:
            status = self._start_all(ready)
            if status == 0:
                self._watch()
            return status
        finally:
            self._stop_all()
            shutil.rmtree(self._folder, ignore_errors=True)

    def _start_all(self, ready: Callable[[int], None]) -> int:
        pending = {self._start(index): index for index in range(self.settings.workers)}
        port = self.settings.port
        while pending and not self._stopping:
            sentinels = {self._processes[i].sentinel: i for i in pending.values()}
            for event in wait([*pending, *sentinels], timeout=0.5):
                if isinstance(event, int):
                    return self._failed(sentinels[event])
                assert isinstance(event, Connection)
                try:
                    port = event.recv()
                except EOFError:  # it ended before it listened
                    return self._failed(pending[event])
                pending.pop(event)
                event.close()
        if not self._stopping:
            ready(port)
        return 0

    def _failed(self, index: int) -> int:
        """The exit status of relay process ``index``, which ended before it was ready."""
        ended = self._processes[index]
        ended.join()  # its sentinel closes a moment before it can be reaped
        return ended.exitcode if ended.exitcode and ended.exitcode > 0 else 1  # killed: 1

    def _watch(self) -> None:
        while not self._stopping:
            by_sentinel = {p.sentinel: i for i, p in self._processes.items()}
            for sentinel in wait(list(by_sentinel), timeout=0.5):
                if self._stopping:
                    break
                assert isinstance(sentinel, int)
                index = by_sentinel[sentinel]
                ended = self._processes[index]
                ended.join()  # as in _failed
                log.error(
                    "relay process %d ended (exit code %s): starting it again",
                    index,
                    ended.exitcode,
                )
                time.sleep(max(0.0, self._started[index] + RESTART_PAUSE - time.monotonic()))
                self._start(index).close()

    def _stop_all(self) -> None:
        running = [p for p in self._processes.values() if p.is_alive()]
        for process in running:
            process.terminate()
        deadline = time.monotonic() + self.settings.shutdown_grace + STOP_MARGIN
        for process in running:
            process.join(max(0.0, deadline - time.monotonic()))
            if process.is_alive():
                log.warning("relay process %s did not stop in time: killed", process.name)
                process.kill()
                process.join()


def reserve_port(settings: Settings) -> tuple[Settings, socket.socket | None]:
    """With ``--port 0``, pick the port every relay process binds, and hold it (bound,
    not listening, so it takes no connection) until the proxy stops."""
    if settings.port != 0:
        return settings, None
    family, kind, proto, _, address = socket.getaddrinfo(
        settings.host, 0, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )[0]
    held = socket.socket(family, kind, proto)
    held.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    held.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    held.bind(address)
    return replace(settings, port=held.getsockname()[1]), held
