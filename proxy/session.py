"""One client connection relayed to its own upstream connection.

The relay runs on asyncio protocol callbacks, not streams: each read is framed by
:class:`~proxy.protocol.MessageFramer` (which only walks message headers) and
written to the other side in the same callback.  Back-pressure is the transports'
own: when one side's write buffer fills, the other side stops reading.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import secrets
from collections.abc import Awaitable
from typing import TYPE_CHECKING, cast

from dashboard import metrics
from proxy import logs
from proxy import protocol as pg
from proxy.inband import Inband
from proxy.protocol import Message, PgError, ProtocolViolation

if TYPE_CHECKING:
    from proxy.extended import ExtendedState, TakeoverInput
    from proxy.server import Proxy

log = logging.getLogger("pgml_proxy.session")

STARTUP_TIMEOUT = 60.0
"""Seconds a new connection may take to send its startup packet (PostgreSQL's
authentication_timeout default); after that it is dropped."""

WRITE_BUFFER_HIGH_WATER = 256 * 1024
"""Bytes queued for one peer before the other peer's reads are paused."""

_CLIENT_SYNC_POINTS = (pg.QUERY, pg.SYNC, ord("F"))
"""Client messages that each get exactly one ReadyForQuery back."""
_CLIENT_STEPS = tuple(b"PBDEC")
"""Extended-protocol messages that each get exactly one completion (or an error) back."""
_TRACKED_CLIENT_TYPES = frozenset(b"QPXBDECSH")
"""Client messages watched once a session has used a pgml prepared statement."""
_SERVER_STEPS = tuple(b"123nsCITE")
"""ParseComplete, BindComplete, CloseComplete, NoData, PortalSuspended, CommandComplete,
EmptyQueryResponse, RowDescription (a Describe's answer) and ErrorResponse."""


class Phase(enum.Enum):
    STARTUP = "startup"
    TLS = "tls"
    CONNECTING = "connecting"
    AUTHENTICATING = "authenticating"
    RELAYING = "relaying"
    CLOSED = "closed"


class ClientSession(asyncio.Protocol):
    """The protocol for one client socket; owns the matching upstream connection."""

    def __init__(self, proxy: Proxy, session_id: int) -> None:
        self.proxy = proxy
        self.id = session_id
        self.phase = Phase.STARTUP
        self.peer = "?"
        self.user = ""
        self.database = ""
        self.cancel_key: tuple[int, bytes] | None = None
        self.backend_key: tuple[int, bytes] | None = None
        self._client: asyncio.Transport | None = None
        self._upstream: asyncio.Transport | None = None
        self._startup = pg.StartupReader()
        self._from_client = pg.MessageFramer(
            watched=(pg.QUERY, pg.PARSE, pg.TERMINATE),
            sync_types=_CLIENT_SYNC_POINTS,
            step_types=_CLIENT_STEPS,
        )
        self._from_server = pg.MessageFramer(
            watched=(pg.BACKEND_KEY_DATA, pg.READY_FOR_QUERY, pg.AUTHENTICATION),
            sync_types=(pg.READY_FOR_QUERY,),
            step_types=_SERVER_STEPS,
            error_type=pg.ERROR_RESPONSE,
        )
        self._paused: set[str] = set()
        self._legacy_startup = False
        self._closing = False
        """Set once the proxy itself ends the session, so the close is not reported twice."""
        self._reply_timer: asyncio.TimerHandle | None = None
        self._statement: asyncio.Task[None] | None = None
        self._held: list[pg.Chunk] = []
        """Client input that came after the pgml statement being run, in order."""
        self._inband: Inband | None = None
        self._idle_waiter: tuple[Message, asyncio.Future[None]] | None = None
        self._last_server_read = b""
        self._cancel_requested = False
        self._upstream_writable = asyncio.Event()
        self._upstream_writable.set()
        self._client_selector: pg.Selector = _client_message_of_interest
        self._extended: ExtendedState | None = None
        self._takeover_input: TakeoverInput | None = None
        self._startup_timer: asyncio.TimerHandle | None = None

    # --- client side ---------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._client = cast(asyncio.Transport, transport)
        self._client.set_write_buffer_limits(high=WRITE_BUFFER_HIGH_WATER)
        peer = transport.get_extra_info("peername")
        self.peer = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else str(peer or "local")
        self.proxy.sessions.add(self)
        metrics.connections_opened += 1
        self._startup_timer = asyncio.get_running_loop().call_later(
            STARTUP_TIMEOUT, self._startup_timed_out
        )

    def _startup_timed_out(self) -> None:
        if self.phase in (Phase.STARTUP, Phase.TLS):
            log.warning("session %d: no startup packet from %s in time", self.id, self.peer)
            self._close_both()

    def data_received(self, data: bytes) -> None:
        if self._takeover_input is not None:
            self._takeover_data(data)
        elif self.phase is Phase.RELAYING or self.phase is Phase.AUTHENTICATING:
            self._relay_client_data(data)
        elif self.phase is Phase.STARTUP:
            self._startup_data(data)

    def _relay_client_data(self, data: bytes) -> None:
        try:
            chunks = self._from_client.feed(data, self._client_selector)
        except ProtocolViolation as exc:
            self._violation(exc)
            return
        upstream = self._upstream
        assert upstream is not None
        if chunks is None:
            upstream.write(data)
            return
        self._relay_chunks(chunks)

    def _relay_chunks(self, chunks: list[pg.Chunk]) -> None:
        """Relay framed client input until a pgml statement, which is held with what follows."""
        assert self._upstream is not None
        for index, chunk in enumerate(chunks):
            if isinstance(chunk, Message):
                if chunk.type == pg.TERMINATE:
                    self._closing = True  # the upstream's close that follows is expected
                    self._upstream.write(chunk.raw)
                    continue
                if chunk.type == pg.QUERY:
                    self._begin_statement(chunk, chunks[index + 1 :])
                    return
                if self._needs_takeover(chunk):
                    self._begin_takeover(chunk, chunks[index + 1 :])
                    return
                self._upstream.write(chunk.raw)
                continue
            self._upstream.write(chunk)

    def eof_received(self) -> bool | None:
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        was = self.phase
        self.phase = Phase.CLOSED
        metrics.connections_closed += 1
        if self._startup_timer is not None:
            self._startup_timer.cancel()
        self.proxy.sessions.discard(self)
        if self.cancel_key is not None:
            self.proxy.cancel_keys.pop(self.cancel_key, None)
        if self._reply_timer is not None:
            self._reply_timer.cancel()
        if self._statement is not None:
            self._statement.cancel()
        if not self._closing:
            self._report_incomplete_input(was)
        if self._upstream is not None and not self._upstream.is_closing():
            if was is Phase.RELAYING and self.in_flight and self.backend_key is not None:
                self.proxy.send_cancel(*self.backend_key)
            self._upstream.write(pg.message(b"X"))
            self._upstream.close()
        log.debug("session %d: client %s disconnected", self.id, self.peer)

    def _report_incomplete_input(self, phase: Phase) -> None:
        """Log a client that hung up halfway through a packet, as PostgreSQL does."""
        if phase is Phase.STARTUP and self._startup.has_partial_packet:
            what = "incomplete startup packet"
        elif phase in (Phase.AUTHENTICATING, Phase.RELAYING) and not self._from_client.at_boundary:
            what = "incomplete message from client"
        else:
            return
        log.warning("session %d: %s from %s; connection closed", self.id, what, self.peer)

    def pause_writing(self) -> None:
        if self._upstream is not None and not self._upstream.is_closing():
            self._upstream.pause_reading()

    def resume_writing(self) -> None:
        if self._upstream is not None and not self._upstream.is_closing():
            self._upstream.resume_reading()

    # --- startup -------------------------------------------------------------------

    def _startup_data(self, data: bytes) -> None:
        try:
            complete = self._startup.feed(data)
            if complete is None:
                return
            packet, leftover = complete
            request = pg.parse_startup_packet(packet)
        except ProtocolViolation as exc:
            self._violation(exc)
            return
        if isinstance(request, pg.StartupMessage):
            self._begin_connect(request, leftover)
            return
        if isinstance(request, pg.CancelRequest):
            self.proxy.forward_cancel(request)
            self._close_client()
            return
        if leftover:
            self._violation(ProtocolViolation("received unencrypted data after SSL request"))
            return
        assert self._client is not None
        if isinstance(request, pg.SSLRequest) and self.proxy.tls_context is not None:
            self._client.write(pg.SSL_ACCEPTED)
            self.phase = Phase.TLS
            asyncio.get_running_loop().create_task(self._upgrade_to_tls())
        else:
            self._client.write(pg.SSL_REFUSED)

    async def _upgrade_to_tls(self) -> None:
        assert self._client is not None and self.proxy.tls_context is not None
        loop = asyncio.get_running_loop()
        try:
            transport = await loop.start_tls(
                self._client, self, self.proxy.tls_context, server_side=True
            )
        except (OSError, ConnectionError) as exc:
            log.warning("session %d: TLS handshake with %s failed: %s", self.id, self.peer, exc)
            self._client.abort()
            return
        if transport is None:
            return
        self._client = transport
        self.phase = Phase.STARTUP

    def _begin_connect(self, startup: pg.StartupMessage, leftover: bytes) -> None:
        if self._startup_timer is not None:
            self._startup_timer.cancel()
        # PostgreSQL answers other major versions with one error in the old format and
        # closes: those bytes are relayed unframed.
        self._legacy_startup = startup.major < 3
        self.user = startup.params.get("user", "")
        self.database = startup.params.get("database", self.user)
        self.phase = Phase.CONNECTING
        self._pause_client("connecting")
        asyncio.get_running_loop().create_task(self._connect(startup.raw + leftover))

    async def _connect(self, first_bytes: bytes) -> None:
        address = self.proxy.upstream
        try:
            transport, _ = await asyncio.wait_for(
                address.open(lambda: UpstreamConnection(self)), self.proxy.connect_timeout
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
        if self.phase is Phase.CLOSED:
            transport.close()
            return
        self._upstream = transport
        transport.set_write_buffer_limits(high=WRITE_BUFFER_HIGH_WATER)
        transport.write(first_bytes)
        self.phase = Phase.AUTHENTICATING
        self._reply_timer = asyncio.get_running_loop().call_later(
            self.proxy.connect_timeout, self._upstream_silent
        )
        self._resume_client("connecting")

    def _upstream_silent(self) -> None:
        """The upstream accepted the connection but never answered the startup packet."""
        address = self.proxy.upstream.describe()
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
        if client is None or self.phase is Phase.CLOSED:
            return
        if self._legacy_startup:
            client.write(data)
            return
        if self.phase is Phase.RELAYING:
            if self._inband is not None:
                self._inband_data(data)
                return
            # Relayed before it is framed: the framing is bookkeeping, not a gate.
            client.write(data)
            try:
                self._from_server.feed(data, pg.want_all)
            except ProtocolViolation as exc:
                self._upstream_violation(exc)
                return
            self._last_server_read = data
            if self._idle_waiter is not None:
                self._check_idle()
            return
        if self._reply_timer is not None:
            self._reply_timer.cancel()
            self._reply_timer = None
        try:
            chunks = self._from_server.feed(data, pg.want_all)
        except ProtocolViolation as exc:
            self._upstream_violation(exc)
            return
        for chunk in [data] if chunks is None else chunks:
            client.write(self._startup_reply(chunk) if isinstance(chunk, Message) else chunk)

    def _upstream_violation(self, exc: ProtocolViolation) -> None:
        log.error("session %d: upstream sent invalid data: %s", self.id, exc)
        self._close_both()

    def _startup_reply(self, message: Message) -> bytes:
        """Rewrite what the proxy must own in the server's startup replies."""
        if message.type == pg.AUTHENTICATION:
            return pg.without_channel_binding(message)
        if message.type == pg.BACKEND_KEY_DATA:
            self.backend_key = pg.parse_backend_key_data(message.body)
            pid, secret = self.backend_key
            self.cancel_key = (pid, secrets.token_bytes(len(secret)))
            self.proxy.cancel_keys[self.cancel_key] = self
            return pg.backend_key_data(*self.cancel_key)
        if message.type == pg.READY_FOR_QUERY and self.phase is Phase.AUTHENTICATING:
            self.phase = Phase.RELAYING
            self._from_server.watched = frozenset()
            self._from_server.syncs = self._from_client.syncs = 0
            log.debug(
                "session %d: %s connected as %s to %s", self.id, self.peer, self.user, self.database
            )
        return message.raw

    def _inband_data(self, data: bytes) -> None:
        assert self._inband is not None
        try:
            chunks = self._from_server.feed(data, pg.want_all)
        except ProtocolViolation as exc:
            self._upstream_violation(exc)
            return
        for chunk in chunks or ():
            if isinstance(chunk, Message):
                self._inband.deliver(chunk)

    def upstream_lost(self, exc: Exception | None) -> None:
        if self._inband is not None:
            self._inband.upstream_gone()
        if self._client is None or self.phase is Phase.CLOSED:
            return
        frames = self._from_server
        sent_fatal = frames.last_type == pg.ERROR_RESPONSE and frames.at_boundary
        if self.phase is Phase.RELAYING and not sent_fatal and not self._closing:
            log.warning("session %d: upstream closed the connection unexpectedly", self.id)
            if frames.at_boundary:
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

    # --- statements the proxy runs ---------------------------------------------------

    def _begin_statement(self, message: Message, rest: list[pg.Chunk]) -> None:
        self._held = rest + self._held
        self._pause_client("statement")
        self._cancel_requested = False
        self._statement = asyncio.get_running_loop().create_task(self._run_statement(message))

    async def _run_statement(self, message: Message) -> None:
        if await self._owning_upstream(self._answer_query(message)):
            self._resume_relay()

    async def _answer_query(self, message: Message) -> None:
        from proxy.statements import prepare_query

        prepared = prepare_query(message)
        if prepared is None:
            metrics.statements_relayed += 1
            self._write_upstream(message.raw)
            return
        await self._until_idle(message)
        inband = self._enter_inband()
        await prepared.run(
            inband, self.proxy.services, lambda: self._cancel_requested, self.database
        )
        self._write_client(pg.ready_for_query(inband.status))
        self._answered_through(message.syncs + 1, inband.status)

    async def _owning_upstream(self, work: Awaitable[None]) -> bool:
        """Run work that reads the server's replies itself; whether the session goes on."""
        try:
            with logs.context(connection=self.id, user=self.user, database=self.database):
                await work
        except asyncio.CancelledError:
            self._closing = True
        except ConnectionError:
            self._close_both()
        except Exception:
            log.exception("session %d: internal error running a pgml statement", self.id)
            self._close_both()
        finally:
            self._leave_inband()
            self._takeover_input = None
            self._statement = None
        return not self._closing

    def _answered_through(self, syncs: int, status: bytes) -> None:
        """Both directions' counts after the proxy answered up to a sync point itself."""
        for frames in (self._from_client, self._from_server):
            frames.syncs, frames.steps, frames.failed = syncs, 0, False
        self._last_server_read = pg.ready_for_query(status)

    # --- extended-protocol batches the proxy takes over ------------------------------

    def _needs_takeover(self, message: Message) -> bool:
        if self._extended is None:
            from proxy.extended import ExtendedState

            self._extended = ExtendedState()
            # From now on every extended-protocol message of this session is looked at.
            self._from_client.watched = _TRACKED_CLIENT_TYPES
            self._client_selector = _tracked_message
        return self._extended.needs_proxy(message)

    def _begin_takeover(self, message: Message, rest: list[pg.Chunk]) -> None:
        from proxy.extended import TakeoverInput

        self._cancel_requested = False
        self._takeover_input = TakeoverInput(message)
        rest_bytes = b"".join(c.raw if isinstance(c, Message) else c for c in rest)
        self._takeover_input.feed(rest_bytes + self._from_client.reposition())
        self._statement = asyncio.get_running_loop().create_task(self._run_takeover(message))

    def _takeover_data(self, data: bytes) -> None:
        assert self._takeover_input is not None
        try:
            self._takeover_input.feed(data)
        except ProtocolViolation as exc:
            self._violation(exc)

    async def _run_takeover(self, first: Message) -> None:
        assert self._takeover_input is not None
        source = self._takeover_input
        if await self._owning_upstream(self._answer_batch(first, source)):
            self._relay_client_data(source.leftover())

    async def _answer_batch(self, first: Message, source: TakeoverInput) -> None:
        from proxy.extended import Takeover

        assert self._extended is not None
        # Relayed messages of this batch are answered only on Sync or Flush, and the
        # client's Sync waits behind the takeover: ask for their replies now.
        self._write_upstream(pg.message(b"H"))
        await self._until_idle(first)
        inband = self._enter_inband()
        takeover = Takeover(
            self._extended,
            inband,
            self.proxy.services,
            lambda: self._cancel_requested,
            self.database,
        )
        takeover.skipping = self._from_server.failed
        while True:
            message = await source.next()
            if message.type in (pg.SYNC, pg.QUERY, ord("F")):
                await takeover.finish(message)
                break
            await takeover.handle(message)
        if inband.status == b"I":
            takeover.end_of_transaction()
        self._answered_through(message.syncs + 1, inband.status)

    def _enter_inband(self) -> Inband:
        inband = Inband(self._write_upstream, self._write_client, self._upstream_writable.wait)
        inband.status = self._last_server_read[-1:] or b"I"
        self._inband = inband
        self._from_server.watched = pg.EVERY_TYPE
        return inband

    def _leave_inband(self) -> None:
        self._inband = None
        self._from_server.watched = frozenset()

    def _resume_relay(self) -> None:
        held, self._held = self._held, []
        if held and self.phase is Phase.RELAYING:
            self._relay_chunks(held)
        if self._statement is None:
            self._resume_client("statement")

    async def _until_idle(self, message: Message) -> None:
        """Wait until the server has answered everything relayed before ``message``."""
        future = asyncio.get_running_loop().create_future()
        self._idle_waiter = (message, future)
        self._check_idle()
        try:
            await future
        finally:
            self._idle_waiter = None

    def _check_idle(self) -> None:
        assert self._idle_waiter is not None
        message, future = self._idle_waiter
        frames = self._from_server
        if future.done() or not frames.at_boundary or frames.syncs < message.syncs:
            return
        if frames.syncs > message.syncs or frames.failed or frames.steps >= message.steps:
            future.set_result(None)

    def request_cancel(self) -> None:
        """A client's CancelRequest: stop the proxy's own work and the backend's query."""
        if self._statement is not None:
            self._cancel_requested = True
        if self.backend_key is not None:
            self.proxy.send_cancel(*self.backend_key)

    def _write_upstream(self, data: bytes) -> None:
        if self._upstream is not None and not self._upstream.is_closing():
            self._upstream.write(data)

    def _write_client(self, data: bytes) -> None:
        if self._client is not None and not self._client.is_closing():
            self._client.write(data)

    # --- state ---------------------------------------------------------------------

    @property
    def in_flight(self) -> bool:
        """Whether a request is still waiting for its ReadyForQuery."""
        return self._from_client.syncs > self._from_server.syncs or not (
            self._from_server.at_boundary
        )

    def terminate(self, error: PgError) -> None:
        """End the session from the proxy's side (shutdown)."""
        if self._client is None or self.phase is Phase.CLOSED:
            return
        if self._from_server.at_boundary:
            self._client.write(error.encode())
        self._close_both()

    def _violation(self, exc: ProtocolViolation) -> None:
        log.warning("session %d: protocol violation from %s: %s", self.id, self.peer, exc)
        error = PgError("FATAL", "08P01", str(exc))
        if self._from_server.at_boundary and self._client is not None:
            self._client.write(error.encode())
        self._close_both()

    def _fail(self, error: PgError) -> None:
        if self._client is not None and not self._client.is_closing():
            self._client.write(error.encode())
        self._close_client()

    def _close_client(self) -> None:
        self._closing = True
        if self._client is not None:
            self._client.close()

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


class UpstreamConnection(asyncio.Protocol):
    """The protocol for a session's upstream socket: hands everything to the session."""

    def __init__(self, session: ClientSession) -> None:
        self._session = session
        self.data_received = session.server_data  # type: ignore[method-assign]

    def connection_lost(self, exc: Exception | None) -> None:
        self._session.upstream_lost(exc)

    def pause_writing(self) -> None:
        self._session.upstream_paused()

    def resume_writing(self) -> None:
        self._session.upstream_resumed()


def _client_message_of_interest(mtype: int, data: bytes, start: int, end: int) -> bool:
    """Terminate, or a Query or Parse that mentions ``pgml``; the others are counted as
    relayed statements."""
    if mtype == pg.TERMINATE or pg.mentions_pgml(mtype, data, start, end):
        return True
    metrics.statements_relayed += 1
    return False


def _tracked_message(mtype: int, data: bytes, start: int, end: int) -> bool:
    """Every extended-protocol message; a Query only when it mentions ``pgml``."""
    if mtype not in (pg.QUERY, pg.PARSE):
        return True
    if pg.mentions_pgml(mtype, data, start, end):
        return True
    metrics.statements_relayed += 1
    return mtype == pg.PARSE
