"""The listening proxy: accepts clients into sessions and shuts down cleanly."""

from __future__ import annotations

import asyncio
import itertools
import ssl
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from proxy import metrics
from proxy.relay.address import UpstreamAddress
from proxy.relay.hub import Hub
from proxy.relay.peers import Peers
from proxy.relay.session import ClientSession
from proxy.wire.codec import PgError

if TYPE_CHECKING:
    from handlers.modelcache import ModelCache
    from handlers.serving import Services
    from proxy.engine.session import Engine
    from proxy.engine.upstream import Upstream

SHUTDOWN_ERROR = PgError(
    "FATAL", "57P01", "terminating connection because pgml-proxy is shutting down"
)


class Proxy:
    """Process-wide state: the listener, the sessions, the services the handlers share."""

    def __init__(
        self,
        upstream: UpstreamAddress,
        *,
        tls_context: ssl.SSLContext | None = None,
        connect_timeout: float = 10.0,
        services: Callable[[], Services] | None = None,
    ) -> None:
        self.hub = Hub(upstream, tls_context, connect_timeout, self._engine)
        self._ids = itertools.count(1)
        self._server: asyncio.Server | None = None
        self._make_services = services
        self._services: Services | None = None
        self._peers: Peers | None = None

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

    def _engine(self, upstream: Upstream, session: ClientSession) -> Engine:
        from proxy.engine.session import Engine

        return Engine(upstream, self.services, session)

    async def listen(self, host: str, port: int, *, reuse_port: bool = False) -> asyncio.Server:
        """Accept clients; with ``reuse_port`` beside the proxy's other relay processes,
        the kernel spreading the connections over them."""
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: ClientSession(self.hub, next(self._ids)),
            host,
            port,
            reuse_address=True,
            reuse_port=reuse_port or None,
            backlog=1024,
        )
        return self._server

    async def join(self, folder: Path, index: int, count: int) -> None:
        """Become relay process ``index`` of ``count``: cancels and counters cross over
        the Unix sockets in ``folder``."""
        self._peers = Peers(folder, index, count, self.hub.cancel_here, self._counters)
        await self._peers.start()
        self.hub.elsewhere = self._peers.cancel

    def _counters(self) -> metrics.Counters:
        return metrics.snapshot(len(self.hub.sessions))

    async def counters(self) -> metrics.Counters:
        """The counters of every relay process of this proxy, added up."""
        if self._peers is None:
            return self._counters()
        return await self._peers.counters()

    @property
    def port(self) -> int:
        assert self._server is not None
        return int(self._server.sockets[0].getsockname()[1])

    # --- what the dashboard reads --------------------------------------------------------

    @property
    def models(self) -> ModelCache | None:
        """This process's loaded models, for ``/metrics`` (None before the first pgml
        statement)."""
        return None if self._services is None else self._services.models

    # --- shutdown ------------------------------------------------------------------------

    async def shutdown(self, grace: float) -> None:
        """Stop accepting, let in-flight statements finish for ``grace`` s, then close all."""
        if self._server is not None:
            self._server.close()
        deadline = time.monotonic() + grace
        sessions = self.hub.sessions
        while True:
            for session in list(sessions):
                if not session.in_flight or time.monotonic() >= deadline:
                    session.terminate(SHUTDOWN_ERROR)
            if not sessions or time.monotonic() >= deadline + 1:
                break
            await asyncio.sleep(0.05)
        if self._server is not None:
            await self._server.wait_closed()
        if self._peers is not None:
            await self._peers.close()
        if self._services is not None:
            await self._services.close()
