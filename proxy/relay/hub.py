"""What every session of one proxy shares: where the server is, the registry of sessions
and cancel keys, and how to start the statement engine for a session.

The listener (:mod:`proxy.relay.server`) owns it; sessions only ever see this.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from proxy.relay.address import UpstreamAddress
from proxy.wire.codec import CancelRequest

if TYPE_CHECKING:
    from proxy.engine.session import Engine
    from proxy.engine.upstream import Upstream
    from proxy.relay.session import ClientSession

log = logging.getLogger("pgml_proxy.server")

EngineFactory = Callable[["Upstream", "ClientSession"], "Engine"]


@dataclass(eq=False)
class Hub:
    upstream: UpstreamAddress
    tls_context: ssl.SSLContext | None = None
    connect_timeout: float = 10.0
    make_engine: EngineFactory | None = None
    """Starts the statement engine of a session (on its first pgml statement)."""
    elsewhere: Callable[[CancelRequest], None] | None = None
    """Hands a cancel whose key this process did not issue to the proxy's other relay
    processes (``--workers``)."""
    sessions: set[ClientSession] = field(default_factory=set)
    cancel_keys: dict[tuple[int, bytes], ClientSession] = field(default_factory=dict)
    _background: set[asyncio.Task[Any]] = field(default_factory=set)

    def forward_cancel(self, request: CancelRequest) -> None:
        """Relay a client's CancelRequest to the session its key was issued for."""
        if self.cancel_here(request):
            return
        if self.elsewhere is not None:
            self.elsewhere(request)
        else:
            log.info("cancel request with an unknown key ignored")

    def cancel_here(self, request: CancelRequest) -> bool:
        """Cancel the session of this process the key was issued for, if there is one."""
        session = self.cancel_keys.get((request.pid, request.secret))
        if session is None:
            return False
        session.request_cancel()
        return True

    def send_cancel(self, pid: int, secret: bytes) -> asyncio.Task[None]:
        """Ask the server to cancel what backend ``pid`` runs (on a connection of its own).
        The task ends once the server has taken the request (it closes the connection
        after signalling the backend), as libpq's cancel waits."""
        task = asyncio.get_running_loop().create_task(self._send_cancel(pid, secret))
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        return task

    async def _send_cancel(self, pid: int, secret: bytes) -> None:
        try:
            transport, protocol = await asyncio.wait_for(
                self.upstream.open(_UntilClosed, tls=False), self.connect_timeout
            )
        except (OSError, TimeoutError) as exc:
            log.warning("could not deliver a cancel request upstream: %s", exc)
            return
        assert isinstance(protocol, _UntilClosed)
        transport.write(CancelRequest(pid, secret).encode())
        try:
            await asyncio.wait_for(asyncio.shield(protocol.closed), self.connect_timeout)
        except TimeoutError:
            log.warning("the server did not close a cancel request's connection")
        finally:
            transport.close()


class _UntilClosed(asyncio.Protocol):
    """A connection whose end is awaited (``closed``)."""

    def __init__(self) -> None:
        self.closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.closed.done():
            self.closed.set_result(None)
