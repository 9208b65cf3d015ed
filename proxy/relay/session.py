"""One client connection relayed to its own upstream connection.

The relay runs on asyncio protocol callbacks, not streams.  Client bytes are framed by
:class:`~proxy.wire.framing.ClientFramer`, which only walks message headers; each relayed
request is recorded in the connection's :class:`~proxy.wire.replies.ReplyQueue`, which
routes the server's answers.  While every owed answer is the client's, server bytes are
written to the client before they are even looked at.  A message the statement engine
must answer (a pgml statement) is handed to it, and what the client sends after it waits
until the engine is done with it.  Back-pressure is the transports' own.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import os
import secrets
import socket
from typing import TYPE_CHECKING, cast

from proxy import logs, metrics
from proxy.relay import startup
from proxy.relay.hub import Hub
from proxy.wire import codec
from proxy.wire.codec import Backend, Frontend, Message, PgError, ProtocolViolation
from proxy.wire.framing import ClientFramer
from proxy.wire.replies import ANSWERED, RELAYED, ReplyQueue

if TYPE_CHECKING:
    from proxy.engine.session import Engine

log = logging.getLogger("pgml_proxy.session")

STARTUP_TIMEOUT = 60.0
"""Seconds a new connection may take to send its startup packet (PostgreSQL's
authentication_timeout default); after that it is dropped."""

WRITE_BUFFER_HIGH_WATER = 64 * 1024
"""Bytes queued for one peer before the other peer's reads are paused."""

SOCKET_BUFFER = 64 * 1024
"""The kernel's buffer (which it doubles) for what the proxy sends the client, and for
what it receives from the server: with :data:`WRITE_BUFFER_HIGH_WATER`, the proxy holds
no more of a result than about one socket buffer beyond what PostgreSQL itself would
have sent the client, so a client that stops reading (and then cancels) finds the
statement still running, as it would without the proxy."""

HELD_HIGH_WATER = 256 * 1024
"""Bytes of client input held behind a pgml statement before the client is paused.  Below
it the client is read on, so that a client that leaves is noticed at once."""
LINGER = 2.0
"""The most seconds a closed session's socket stays open for the client's input after
the proxy's last byte: what the client sends meanwhile is read and dropped, for a close
with input unread would reset the connection, and a reset can cost the client the
message that told it why (its socket reports an error before it reads the message)."""

_WATCHED = frozenset({Frontend.QUERY, Frontend.PARSE, Frontend.TERMINATE})
_TRACKED = _WATCHED | {
    Frontend.BIND,
    Frontend.DESCRIBE,
    Frontend.EXECUTE,
    Frontend.CLOSE,
    Frontend.SYNC,
}
"""Client messages looked at once the session has run a pgml statement."""


class Phase(enum.Enum):
    STARTUP = "startup"
    TLS = "tls"
    CONNECTING = "connecting"
    AUTHENTICATING = "authenticating"
    RELAYING = "relaying"
    LINGERING = "lingering"
    """The proxy has said its last: its output is shut, the client's input is dropped."""
    CLOSED = "closed"


_OVER = (Phase.LINGERING, Phase.CLOSED)
"""The phases after the proxy's last byte to the client."""


class ClientSession(asyncio.Protocol):
    """The protocol for one client socket; owns the matching upstream connection."""

    def __init__(self, hub: Hub, session_id: int) -> None:
        self.hub = hub
        self.id = session_id
        self.phase = Phase.STARTUP
        self.peer = "?"
        self.user = ""
        self.database = ""
        self.cancel_key: tuple[int, bytes] | None = None
        self._cancels = 0
        """The client's cancels on their way to the server."""
        self.backend_key: tuple[int, bytes] | None = None
        self._client: asyncio.Transport | None = None
        self._upstream: asyncio.Transport | None = None
        self._startup = startup.StartupPhase(hub.tls_context is not None)
        self.replies = ReplyQueue()
        self._framer = ClientFramer(_WATCHED, ANSWERED | {Frontend.FLUSH}, self._relayed)
        self._paused: set[str] = set()
        """Why the client's input is not read now (empty: it is)."""
        self._upstream_paused: set[str] = set()
        """Why the server's replies are not read now (empty: they are)."""
        self._legacy_startup = False
        self._closing = False
        """Set once the proxy itself ends the session, so the close is not reported twice."""
        self._timer: asyncio.TimerHandle | None = None
        self._held = bytearray()
        """Client input after the message the engine is answering, not framed yet."""
        self._work: asyncio.Task[None] | None = None
        self._engine: Engine | None = None
        self._upstream_writable = asyncio.Event()
        self._upstream_writable.set()
        self._startup_buffer = b""
        """Server bytes of the startup phase not yet whole messages."""
        self._raw = False
        """Relaying the client's bytes as they are, unframed (after a message PostgreSQL
        refuses to read); the server's answers still come through the reply queue."""
        self._negotiation: asyncio.Future[bytes] | None = None
        """The server's answer to an encryption request the proxy replays to it."""

    # --- client side ---------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._client = cast(asyncio.Transport, transport)
        self._client.set_write_buffer_limits(high=WRITE_BUFFER_HIGH_WATER)
        _limit_buffer(transport, socket.SO_SNDBUF)
        peer = transport.get_extra_info("peername")
        self.peer = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else str(peer or "local")
        self.hub.sessions.add(self)
        metrics.connections_opened += 1
        self._timer = asyncio.get_running_loop().call_later(
            STARTUP_TIMEOUT, self._startup_timed_out
        )

    def _startup_timed_out(self) -> None:
        if self.phase in (Phase.STARTUP, Phase.TLS):
            log.warning("session %d: no startup packet from %s in time", self.id, self.peer)
            self._close_both()

    def data_received(self, data: bytes) -> None:
        if self.phase is Phase.RELAYING or self.phase is Phase.AUTHENTICATING:
            if self._work is not None or self._held:
                self._hold(data)
            else:
                self._client_data(data)
        elif self.phase is Phase.STARTUP:
            self._startup_data(data)

    def _client_data(self, data: bytes) -> None:
        upstream = self._upstream
        assert upstream is not None
        if self._raw:
            upstream.write(data)
            return
        chunks = self._framer.feed(data, self._want)
        if chunks is None:
            upstream.write(data)
            return
        for chunk in chunks:
            if isinstance(chunk, bytes):
                upstream.write(chunk)
            else:
                self._take(chunk)
        if self._framer.broken:
            self._go_raw()

    def _go_raw(self) -> None:
        """A message PostgreSQL will not read: from it on the stream is the server's to
        judge (it ends the session as it does for a client of its own)."""
        log.warning(
            "session %d: protocol violation from %s: invalid message length", self.id, self.peer
        )
        self._raw = True
        broken, self._framer.broken = self._framer.broken, b""
        assert self._upstream is not None
        self._upstream.write(broken)

    def _want(self, mtype: int, data: bytes, start: int, end: int) -> bool:
        """Whether the session answers this client message itself (with the engine)."""
        if mtype == Frontend.TERMINATE:
            return True
        engine = self._engine
        if mtype == Frontend.SYNC:  # the proxy closes what a failed batch left after it
            return engine is not None and bool(engine.upstream.unclosed)
        if mtype == Frontend.QUERY or mtype == Frontend.PARSE:
            if codec.mentions_pgml(data, start + 5, end):
                return True
            metrics.statements_relayed += 1
            if engine is None:
                return False
        return engine is not None and engine.wants(Message(mtype, data[start:end]))

    def _relayed(self, mtype: int) -> None:
        if mtype == Frontend.FLUSH:  # the server sends what it owes: so does the proxy
            released = self.replies.release()
            if released:
                self._write_client(released)
        else:
            self.replies.expect(RELAYED[mtype])

    def _take(self, message: Message) -> None:
        """A message the session answers itself; what followed it waits behind it."""
        rest = self._framer.rest
        self._framer.rest = b""
        if message.type == Frontend.TERMINATE:
            self._closing = True  # the upstream's close that follows is expected
            assert self._upstream is not None
            self._upstream.write(message.raw)
            return
        self._held[:0] = rest
        self._work = asyncio.get_running_loop().create_task(self._answer(message))

    def _hold(self, data: bytes) -> None:
        self._held += data
        if len(self._held) > HELD_HIGH_WATER:
            self._pause_client("held")

    async def _answer(self, message: Message) -> None:
        engine = self._engine
        if engine is None:
            engine = self._engine = self._start_engine()
            self._framer.watched = _TRACKED
        try:
            with logs.context(connection=self.id, user=self.user, database=self.database):
                await engine.answer(message)
        except asyncio.CancelledError:
            self._closing = True
            return
        except ConnectionError:
            self._close_both()
            return
        except Exception:
            log.exception("session %d: internal error answering a pgml statement", self.id)
            self._close_both()
            return
        finally:
            self._work = None
        self._resume_input()

    def _start_engine(self) -> Engine:
        from proxy.engine.upstream import Upstream

        assert self.hub.make_engine is not None
        upstream = Upstream(
            self.replies,
            self._write_upstream,
            self._write_client,
            self._upstream_writable.wait,
            self._engine_reading,
        )
        return self.hub.make_engine(upstream, self)

    def _resume_input(self) -> None:
        """Go on with the client input held behind the engine's message."""
        if self.phase is not Phase.RELAYING:
            return
        held = bytes(self._held)
        self._held.clear()
        if held:
            self._client_data(held)
        if self._work is None and not self._held:
            self._resume_client("held")

    def eof_received(self) -> bool | None:
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        was = self.phase
        self.phase = Phase.CLOSED
        metrics.connections_closed += 1
        if self._timer is not None:
            self._timer.cancel()
        self.hub.sessions.discard(self)
        if self.cancel_key is not None:
            self.hub.cancel_keys.pop(self.cancel_key, None)
        if self._work is not None:
            self._work.cancel()
        if self._engine is not None:
            self._engine.close()
        if not self._closing:
            self._report_incomplete_input(was)
        if self._upstream is not None and not self._upstream.is_closing():
            if was is Phase.RELAYING and self.in_flight and self.backend_key is not None:
                self.hub.send_cancel(*self.backend_key)
            self._upstream.write(codec.TERMINATE)
            self._upstream.close()
        log.debug("session %d: client %s disconnected", self.id, self.peer)

    def _report_incomplete_input(self, phase: Phase) -> None:
        """Log a client that hung up halfway through a packet, as PostgreSQL does."""
        if phase is Phase.STARTUP and self._startup.has_partial_packet:
            what = "incomplete startup packet"
        elif phase in (Phase.AUTHENTICATING, Phase.RELAYING) and not self._framer.at_boundary:
            what = "incomplete message from client"
        else:
            return
        log.warning("session %d: %s from %s; connection closed", self.id, what, self.peer)

    def pause_writing(self) -> None:
        self._pause_upstream("client-full")

    def resume_writing(self) -> None:
        self._resume_upstream("client-full")

    def _engine_reading(self, paused: bool) -> None:
        """The engine's reader of a COPY is behind (or has caught up)."""
        if paused:
            self._pause_upstream("engine-behind")
        else:
            self._resume_upstream("engine-behind")

    def _pause_upstream(self, reason: str) -> None:
        if not self._upstream_paused and self._upstream_open():
            assert self._upstream is not None
            self._upstream.pause_reading()
        self._upstream_paused.add(reason)

    def _resume_upstream(self, reason: str) -> None:
        self._upstream_paused.discard(reason)
        if not self._upstream_paused and self._upstream_open():
            assert self._upstream is not None
            self._upstream.resume_reading()

    def _upstream_open(self) -> bool:
        return self._upstream is not None and not self._upstream.is_closing()

    # --- startup -------------------------------------------------------------------

    def _startup_data(self, data: bytes) -> None:
        assert self._client is not None
        for decision in self._startup.feed(data):
            if isinstance(decision, startup.Answer):
                self._client.write(decision.data)
                if decision.tls:
                    self.phase = Phase.TLS
                    asyncio.get_running_loop().create_task(self._upgrade_to_tls())
            elif isinstance(decision, startup.Connect):
                self._begin_connect(decision)
            elif isinstance(decision, startup.Cancel):
                self.hub.forward_cancel(decision.request)
                self._close_client()
            elif isinstance(decision, startup.Drop):
                log.warning(
                    "session %d: protocol violation from %s: %s",
                    self.id,
                    self.peer,
                    decision.reason,
                )
                self._close_client()
            else:
                log.warning(
                    "session %d: protocol violation from %s: %s",
                    self.id,
                    self.peer,
                    decision.error.message,
                )
                self._fail(decision.error)

    async def _upgrade_to_tls(self) -> None:
        assert self._client is not None and self.hub.tls_context is not None
        loop = asyncio.get_running_loop()
        try:
            transport = await loop.start_tls(
                self._client, self, self.hub.tls_context, server_side=True
            )
        except (OSError, ConnectionError) as exc:
            log.warning("session %d: TLS handshake with %s failed: %s", self.id, self.peer, exc)
            self._client.abort()
            return
        if transport is None:
            return
        self._client = transport
        self.phase = Phase.STARTUP

    def _begin_connect(self, connect: startup.Connect) -> None:
        if self._timer is not None:
            self._timer.cancel()
        # PostgreSQL answers other major versions with one error and closes: those bytes
        # are relayed unframed.
        self._legacy_startup = connect.major != 3
        self.user = connect.params.get("user", "")
        self.database = connect.params.get("database", self.user)
        self.phase = Phase.CONNECTING
        self._pause_client("connecting")
        asyncio.get_running_loop().create_task(self._connect(connect.data, connect.replay))

    async def _connect(self, first_bytes: bytes, replay: tuple[bytes, ...]) -> None:
        address = self.hub.upstream
        try:
            transport, _ = await asyncio.wait_for(
                address.open(lambda: UpstreamConnection(self)), self.hub.connect_timeout
            )
        except (OSError, TimeoutError) as exc:
            reason = "timeout expired" if isinstance(exc, TimeoutError) else exc.strerror or exc
            log.warning(
                "session %d: upstream %s unreachable: %s", self.id, address.describe(), reason
            )
            self._fail(
                PgError(
                    "FATAL",
                    "08006",
                    f"could not connect to upstream server at {address.describe()}: {reason}",
                    hint="Check that PostgreSQL is running and that --upstream points at it.",
                )
            )
            return
        if self.phase in _OVER:
            transport.close()
            return
        self._upstream = transport
        transport.set_write_buffer_limits(high=WRITE_BUFFER_HIGH_WATER)
        _limit_buffer(transport, socket.SO_RCVBUF)
        if not await self._replay(transport, replay):
            return
        transport.write(first_bytes)
        self.phase = Phase.AUTHENTICATING
        self._timer = asyncio.get_running_loop().call_later(
            self.hub.connect_timeout, self._upstream_silent
        )
        self._resume_client("connecting")

    async def _replay(self, transport: asyncio.Transport, requests: tuple[bytes, ...]) -> bool:
        """Put the server where the client believes it is: the client's encryption
        requests again, each refused (with one byte) before the next is sent."""
        if self.hub.upstream.uses_tls:
            requests = ()  # the proxy's own TLS request was the server's first
        for request in requests:
            self._negotiation = asyncio.get_running_loop().create_future()
            transport.write(request)
            try:
                answer = await asyncio.wait_for(self._negotiation, self.hub.connect_timeout)
            except (TimeoutError, ConnectionError):
                answer = b""
            if answer != codec.SSL_REFUSED:
                log.warning("session %d: upstream did not refuse a replayed request", self.id)
                self._close_both()
                return False
        self._negotiation = None
        return True

    def _upstream_silent(self) -> None:
        """The upstream accepted the connection but never answered the startup packet."""
        address = self.hub.upstream.describe()
        log.warning("session %d: upstream %s unreachable: timeout expired", self.id, address)
        if self._upstream is not None:
            self._upstream.abort()
        self._fail(
            PgError(
                "FATAL",
                "08006",
                f"could not connect to upstream server at {address}: timeout expired",
            )
        )

    # --- upstream side ---------------------------------------------------------------

    def server_data(self, data: bytes) -> None:
        client = self._client
        if client is None or self.phase in _OVER:
            return
        if self._negotiation is not None and not self._negotiation.done():
            self._negotiation.set_result(data[:1])
            return
        if self._legacy_startup:
            client.write(data)
            return
        replies = self.replies
        try:
            if self.phase is not Phase.RELAYING:
                self._startup_replies(data)
            elif replies.routed:
                out = replies.feed(data)
                if out:
                    client.write(out)
            else:
                # Relayed before it is looked at: the accounting is bookkeeping, not a gate.
                client.write(data)
                replies.account(data)
        except ProtocolViolation as exc:
            log.error("session %d: upstream sent invalid data: %s", self.id, exc)
            self._close_both()

    def _startup_replies(self, data: bytes) -> None:
        """Authentication and the session's first ReadyForQuery: what the proxy must own
        in them is rewritten (SASL mechanisms, the cancel key)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        assert self._client is not None
        pending = self._startup_buffer + data
        pos = 0
        unpack = codec.UINT32.unpack_from
        out: list[bytes] = []
        while len(pending) - pos >= 5:
            length = unpack(pending, pos + 1)[0]
            if length < 4 or length > codec.MAX_MESSAGE_LENGTH:
                raise ProtocolViolation(f"invalid message length {length}")
            end = pos + 1 + length
            if end > len(pending):
                break
            message = Message(pending[pos], pending[pos:end])
            out.append(self._startup_reply(message))
            pos = end
            if self.phase is Phase.RELAYING:
                break
        rest = pending[pos:]
        self._startup_buffer = b""
        self._client.write(b"".join(out))
        if self.phase is not Phase.RELAYING:
            self._startup_buffer = rest
        elif rest:
            self.server_data(rest)

    def _startup_reply(self, message: Message) -> bytes:
        self.replies.last_type = message.type
        if message.type == Backend.AUTHENTICATION:
            return codec.without_channel_binding(message)
        if message.type == Backend.BACKEND_KEY_DATA:
            self.backend_key = codec.parse_backend_key_data(message.body)
            pid, secret = self.backend_key
            self.cancel_key = (pid, secrets.token_bytes(len(secret)))
            self.hub.cancel_keys[self.cancel_key] = self
            return codec.backend_key_data(*self.cancel_key)
        if message.type == Backend.PARAMETER_STATUS:
            self.replies.parameter_status(message.body)
        if message.type == Backend.READY_FOR_QUERY:
            self.phase = Phase.RELAYING
            self.replies.status = message.body[:1]
            log.debug(
                "session %d: %s connected as %s to %s", self.id, self.peer, self.user, self.database
            )
        return message.raw

    def upstream_lost(self, exc: Exception | None) -> None:
        if self._negotiation is not None and not self._negotiation.done():
            self._negotiation.set_exception(ConnectionResetError("the server closed"))
        if self._work is not None:
            self._work.cancel()
        if self._client is None or self.phase in _OVER:
            return
        replies = self.replies
        sent_fatal = replies.last_type == Backend.ERROR and replies.at_boundary
        if self.phase is Phase.RELAYING and not (sent_fatal or self._closing or self._raw):
            log.warning("session %d: upstream closed the connection unexpectedly", self.id)
            if replies.at_boundary:
                self._client.write(
                    PgError(
                        "FATAL",
                        "08006",
                        "server closed the connection unexpectedly",
                        detail="The upstream PostgreSQL connection ended; the session is over.",
                    ).encode()
                )
        self._close_client()

    def upstream_paused(self) -> None:
        self._upstream_writable.clear()
        self._pause_client("upstream-full")

    def upstream_resumed(self) -> None:
        self._upstream_writable.set()
        self._resume_client("upstream-full")

    def request_cancel(self) -> None:
        """A client's CancelRequest: stop the engine's work and the backend's query.  The
        client's next messages wait until the server has taken the cancel, so that a cancel
        still on its way cannot stop the client's next statement."""
        if self._engine is not None and self._work is not None:
            self._engine.cancel()
        if self.backend_key is not None:
            self._cancels += 1
            self._pause_client("cancelling")
            self.hub.send_cancel(*self.backend_key).add_done_callback(self._cancel_taken)

    def _cancel_taken(self, _: asyncio.Task[None]) -> None:
        self._cancels -= 1
        if self._cancels == 0:
            self._resume_client("cancelling")

    def _write_upstream(self, data: bytes) -> None:
        if self._upstream is not None and not self._upstream.is_closing():
            self._upstream.write(data)

    def _write_client(self, data: bytes) -> None:
        client = self._client
        if client is not None and not client.is_closing() and self.phase is not Phase.LINGERING:
            client.write(data)

    # --- state ---------------------------------------------------------------------

    @property
    def in_flight(self) -> bool:
        """Whether a request is still waiting for its answer."""
        return self.replies.busy or not self.replies.at_boundary or self._work is not None

    def terminate(self, error: PgError) -> None:
        """End the session from the proxy's side (shutdown)."""
        if self._client is None or self.phase is Phase.CLOSED:
            return
        if self.phase is Phase.LINGERING:
            self._client.close()
            return
        if self.replies.at_boundary:
            self._client.write(error.encode())
        self._close_both()

    def _fail(self, error: PgError) -> None:
        self._write_client(error.encode())
        self._close_client()

    def _close_client(self) -> None:
        """Shut the client's side after what was written to it, as a lingering close:
        the end of output goes out at once, the socket closes at the client's end of
        input or after :data:`LINGER` seconds."""
        self._closing = True
        client = self._client
        if client is None or client.is_closing() or self.phase is Phase.LINGERING:
            return
        if self.phase is Phase.CLOSED or not client.can_write_eof():
            client.close()
            return
        self.phase = Phase.LINGERING
        if self._timer is not None:
            self._timer.cancel()
        self._timer = asyncio.get_running_loop().call_later(LINGER, client.close)
        client.write_eof()
        self._paused.clear()
        client.resume_reading()

    def _close_both(self) -> None:
        self._closing = True
        if self._upstream is not None:
            self._upstream.close()
        self._close_client()

    def _pause_client(self, reason: str) -> None:
        if not self._paused and self._client is not None:
            self._client.pause_reading()
        self._paused.add(reason)

    def _resume_client(self, reason: str) -> None:
        self._paused.discard(reason)
        if not self._paused and self._client is not None and not self._client.is_closing():
            self._client.resume_reading()


def _limit_buffer(transport: asyncio.BaseTransport, option: int) -> None:
    """Cap a TCP socket's kernel buffer at :data:`SOCKET_BUFFER`."""
    sock = transport.get_extra_info("socket")
    if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, option, SOCKET_BUFFER)


UNREAD_LIMIT = 1 << 20
"""The most bytes read from a lost server connection's socket after the loss."""


def _unread(transport: asyncio.BaseTransport) -> bytes:
    """What the server sent that is still in its socket when the connection is lost on a
    write (the event loop closes the transport without reading on): the FATAL that says
    why, as a client of PostgreSQL's own would read it before the reset."""
    sock = transport.get_extra_info("socket")
    if sock is None:
        return b""
    out = bytearray()
    with contextlib.suppress(OSError), socket.socket(fileno=os.dup(sock.fileno())) as own:
        while len(out) < UNREAD_LIMIT and (chunk := own.recv(65536, socket.MSG_DONTWAIT)):
            out += chunk
    return bytes(out)


class UpstreamConnection(asyncio.Protocol):
    """The protocol for a session's upstream socket: hands everything to the session."""

    def __init__(self, session: ClientSession) -> None:
        self._session = session
        self._transport: asyncio.BaseTransport | None = None
        self.data_received = session.server_data  # type: ignore[method-assign]

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport

    def connection_lost(self, exc: Exception | None) -> None:
        if exc is not None and self._transport is not None:
            said = _unread(self._transport)
            if said:  # a write found the server gone before its last words were read
                self._session.server_data(said)
        self._session.upstream_lost(exc)

    def pause_writing(self) -> None:
        self._session.upstream_paused()

    def resume_writing(self) -> None:
        self._session.upstream_resumed()
