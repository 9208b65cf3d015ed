"""The listening proxy: accepts clients, maps cancel keys, shuts down cleanly."""

from __future__ import annotations

import asyncio
import itertools
import logging
import ssl
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from proxy import protocol as pg
from proxy.protocol import PgError
from proxy.session import ClientSession
from proxy.upstream import UpstreamAddress

if TYPE_CHECKING:
    from handlers.serving import Services

log = logging.getLogger("pgml_proxy.server")

SHUTDOWN_ERROR = PgError(
    "FATAL", "57P01", "terminating connection because pgml-proxy is shutting down"
)


class Proxy:
    """Process-wide state shared by every session."""

    def __init__(
        self,
        upstream: UpstreamAddress,
        *,
        tls_context: ssl.SSLContext | None = None,
        connect_timeout: float = 10.0,
        services: Callable[[], Services] | None = None,
    ) -> None:
        self.upstream = upstream
        self.tls_context = tls_context
        self.connect_timeout = connect_timeout
        self.sessions: set[ClientSession] = set()
        self.cancel_keys: dict[tuple[int, bytes], ClientSession] = {}
        self._ids = itertools.count(1)
        self._server: asyncio.Server | None = None
        self._background: set[asyncio.Task[None]] = set()
        self._make_services = services
        self._services: Services | None = None

    @property
    def services(self) -> Services:
        """What the pgml handlers share; created on the first pgml statement."""
        if self._services is None:
            if self._make_services is None:
                from handlers.serving import Services

                self._services = Services()
            else:
                self._services = self._make_services()
        return self._services

    async def listen(self, host: str, port: int) -> asyncio.Server:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: ClientSession(self, next(self._ids)),
            host,
            port,
            reuse_address=True,
            backlog=1024,
        )
        return self._server

    @property
    def port(self) -> int:
        assert self._server is not None
        return int(self._server.sockets[0].getsockname()[1])

    # --- cancel ----------------------------------------------------------------------

    def forward_cancel(self, request: pg.CancelRequest) -> None:
        """Relay a client's CancelRequest to the backend its key was issued for."""
        session = self.cancel_keys.get((request.pid, request.secret))
        if session is None:
            log.info("cancel request with an unknown key ignored")
            return
        session.request_cancel()

    def send_cancel(self, pid: int, secret: bytes) -> None:
        task = asyncio.get_running_loop().create_task(self._send_cancel(pid, secret))
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _send_cancel(self, pid: int, secret: bytes) -> None:
        try:
            transport, _ = await asyncio.wait_for(
                self.upstream.open(asyncio.Protocol, tls=False), self.connect_timeout
            )
        except (OSError, TimeoutError) as exc:
            log.warning("could not deliver a cancel request upstream: %s", exc)
            return
        transport.write(pg.CancelRequest(pid, secret).encode())
        transport.close()

    # --- shutdown --------------------------------------------------------------------

    async def shutdown(self, grace: float) -> None:
        """Stop accepting, let in-flight statements finish for ``grace`` s, then close all."""
        if self._server is not None:
            self._server.close()
        deadline = time.monotonic() + grace
        while True:
            for session in list(self.sessions):
                if not session.in_flight or time.monotonic() >= deadline:
                    session.terminate(SHUTDOWN_ERROR)
            if not self.sessions or time.monotonic() >= deadline + 1:
                break
            await asyncio.sleep(0.05)
        if self._server is not None:
            await self._server.wait_closed()
        if self._services is not None:
            await self._services.close()
