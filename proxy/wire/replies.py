"""The replies a session's upstream connection owes, in order, and where each one goes.

Every request written to the server (the client's, relayed, or the proxy's own) is
recorded as an :class:`Expected` entry; answers the proxy gives the client itself are
recorded as local entries in the same queue, so they reach the client after everything
sent before them, and are dropped, like the requests they answer, when the server skips
the rest of a failed batch.  Server bytes go in; bytes for the client come out, and the
proxy's own replies are handed to their sinks.  The rules of which server message
completes which request, and what PostgreSQL skips after an error, are written here once.

Sans-IO, as h11 is: nothing here touches a socket.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Protocol

from proxy.wire.codec import (
    MAX_MESSAGE_LENGTH,
    UINT32,
    Backend,
    Frontend,
    Message,
    ProtocolViolation,
    moved_position,
    parse_error_fields,
)

LOCAL = -1
"""The request kind of an answer the proxy gives the client itself."""

_COMPLETES: dict[int, frozenset[int]] = {
    Frontend.PARSE: frozenset({Backend.PARSE_COMPLETE}),
    Frontend.BIND: frozenset({Backend.BIND_COMPLETE}),
    Frontend.CLOSE: frozenset({Backend.CLOSE_COMPLETE}),
    Frontend.DESCRIBE: frozenset({Backend.ROW_DESCRIPTION, Backend.NO_DATA}),
    Frontend.EXECUTE: frozenset(
        {Backend.COMMAND_COMPLETE, Backend.PORTAL_SUSPENDED, Backend.EMPTY_QUERY}
    ),
    Frontend.SYNC: frozenset({Backend.READY_FOR_QUERY}),
    Frontend.QUERY: frozenset({Backend.READY_FOR_QUERY}),
    Frontend.FUNCTION_CALL: frozenset({Backend.READY_FOR_QUERY}),
    LOCAL: frozenset(),
}
"""The server message that ends the answer to each request.  An ErrorResponse also ends
the extended-protocol ones (Parse, Bind, Close, Describe, Execute)."""

ANSWERED = frozenset(k for k in _COMPLETES if k != LOCAL)
"""Frontend messages the server answers (Flush, Terminate and copy data get no reply)."""

_ENDED_BY_ERROR = frozenset(ANSWERED - {Frontend.SYNC, Frontend.QUERY, Frontend.FUNCTION_CALL})
_SYNC_POINTS = frozenset({Frontend.SYNC, Frontend.QUERY, Frontend.FUNCTION_CALL})
_ASYNC = frozenset({Backend.NOTICE, Backend.NOTIFICATION, Backend.PARAMETER_STATUS})
"""Sent at any time, whatever is being answered: always the client's."""


def ends_session(error: bytes) -> bool:
    """Whether an ErrorResponse is FATAL or PANIC (the server closes the connection):
    forwarded to the client whoever asked, so the client hears why its session ended."""
    return parse_error_fields(error[5:]).get("V") in ("FATAL", "PANIC")


EVERYTHING = frozenset(range(256))


class Sink(Protocol):
    """The proxy's end of one request: the replies it does not forward, then the outcome."""

    def deliver(self, message: Message) -> None:
        """A reply that goes to the proxy (for a Query or Sync: also each ErrorResponse)."""

    def complete(self, error: Message | None) -> None:
        """The request has been answered; ``error``: the ErrorResponse that ended it."""

    def skip(self, cause: Message | None) -> None:
        """The server will never answer it: an earlier request of its batch failed, with
        ``cause`` when that was a request of the proxy's own."""


@dataclass(slots=True, eq=False)
class Expected:
    """One request sent upstream (or one local answer) and the route of its replies."""

    request: int
    forward: frozenset[int] = EVERYTHING
    """Reply types that go to the client as they come; the others go to ``sink``."""
    sink: Sink | None = None
    position: int | None = 0
    """How forwarded errors' positions move: by this many characters (the statement was
    sent from within a longer text), or None: dropped (the statement was rewritten)."""
    local: bytes = b""
    """For ``LOCAL`` entries: the bytes to write to the client when this entry is reached."""
    held: bool = False
    """For ``LOCAL`` entries: kept back until the server would send it (it has sent
    something since, or a Sync or Flush has gone to it), as PostgreSQL buffers the
    answers to extended-protocol messages."""
    explains: bool = True
    """Whether an error of this request (not forwarded) is the answer to the client's
    message it was made for: the requests the server then skips fail with it."""

    @property
    def passthrough(self) -> bool:
        return self.sink is None and self.forward is EVERYTHING and self.position == 0


RELAYED = {kind: Expected(kind) for kind in ANSWERED}
"""Shared entries for the client's own requests, relayed and answered straight back."""


class ReplyQueue:
    """A FIFO of the replies one upstream connection owes, fed with the server's bytes.

    While every owed reply is the client's (not :attr:`routed`), the session writes the
    server's bytes to the client first and only :meth:`account` s for them afterwards, so
    the queue costs the pass-through path a walk over message headers and nothing more.
    """

    __slots__ = (
        "_answered_syncs",
        "_entries",
        "_held",
        "_ignoring",
        "_own_failure",
        "_parameter",
        "_partial",
        "_routed",
        "_skip",
        "_status_next",
        "_stub",
        "at_boundary",
        "client_encoding",
        "idle_through",
        "last_type",
        "pushed_syncs",
        "status",
    )

    def __init__(self, status: bytes = b"I") -> None:
        self._entries: deque[Expected] = deque()
        self._routed = 0
        """Entries that are not plain pass-through (proxy requests and local answers)."""
        self._ignoring = False
        """The server skips requests until the next Sync (an error in the batch)."""
        self._own_failure: Message | None = None
        """The error it skips for, when that was a reply to a request of the proxy's own."""
        self._skip = 0
        """Bytes still to come of a message already being forwarded."""
        self._stub = bytearray()
        """The start of a header already written to the client (pass-through)."""
        self._partial = bytearray()
        """The start of a message held back until whole (for a sink, or an error)."""
        self._status_next = False
        """The next byte is a ReadyForQuery's status (its message was cut short)."""
        self.status = status
        """The transaction status of the last ReadyForQuery: I, T or E."""
        self.at_boundary = True
        """Whether the server's bytes so far end on a message boundary."""
        self.last_type = 0
        """Type of the last server message whose header was seen."""
        self.pushed_syncs = 0
        """Sync points (Sync, Query, FunctionCall) written so far."""
        self.idle_through = 0
        """The number of the last sync point answered with status I (no transaction):
        portals of the batches before it are gone."""
        self._answered_syncs = 0
        self.client_encoding = "UTF8"
        """The session's client_encoding, as the server last reported it."""
        self._parameter: bytearray | None = None
        """The start of a ParameterStatus forwarded as it came."""
        self._held: list[Expected] = []
        """The entries still ``held``, so that a sync point releases them without walking
        every entry owed (a client may pipeline many thousands)."""

    # --- what has been sent ------------------------------------------------------------

    def expect(self, entry: Expected) -> None:
        """Record a request just written upstream (in the order written)."""
        if entry.request in _SYNC_POINTS:
            self.pushed_syncs += 1
            self._unhold()
        if self._ignoring:
            if entry.request != Frontend.SYNC:
                if entry.sink is not None:
                    entry.sink.skip(self._own_failure)
                return
            self._ignoring = False
            self._own_failure = None
        self._entries.append(entry)
        if not entry.passthrough:
            self._routed += 1

    def local(self, data: bytes, sink: Sink | None = None, *, held: bool = False) -> bytes:
        """An answer for the client from the proxy, due after everything queued before it.

        Returns what may be written now (``data`` itself when nothing is owed and it is
        not ``held``); otherwise it comes out of :meth:`feed` or :meth:`release` in its
        turn.  Skipped when the server is ignoring the batch the answered message belongs
        to, unless a request of the proxy's own made it ignore the batch (then this is the
        answer to the message that failed).
        """
        if self._ignoring and self._own_failure is None:
            if sink is not None:
                sink.skip(None)
            return b""
        if not self._entries and not held:
            if sink is not None:
                sink.complete(None)
            return data
        entry = Expected(LOCAL, sink=sink, local=data, held=held)
        self._entries.append(entry)
        if held:
            self._held.append(entry)
        self._routed += 1
        return b""

    def release(self) -> bytes:
        """A Sync or Flush has gone to the server: held answers before it are due; what
        may be written now."""
        self._unhold()
        out: list[bytes] = []
        self._drain_local(out)
        return b"".join(out)

    def _unhold(self) -> None:
        for entry in self._held:
            entry.held = False
        self._held.clear()

    @property
    def busy(self) -> bool:
        """Whether any reply (or local answer) is still owed."""
        return bool(self._entries)

    @property
    def routed(self) -> bool:
        """Whether the next server bytes must go through :meth:`feed` (some owed reply is
        not simply the client's, or a message is held back half-read)."""
        return self._routed > 0 or bool(self._partial)

    @property
    def ignoring(self) -> bool:
        return self._ignoring

    # --- what the server sends -----------------------------------------------------------

    def account(self, data: bytes) -> None:
        """Advance over server bytes already written to the client as they came."""
        n = len(data)
        pos = self._continue(data, None)
        unpack = UINT32.unpack_from
        while n - pos >= 5:
            mtype = data[pos]
            length = unpack(data, pos + 1)[0]
            if mtype == Backend.READY_FOR_QUERY and pos + 5 < n:
                self.status = data[pos + 5 : pos + 6]
            elif mtype == Backend.PARAMETER_STATUS:
                self._parameter_begins(data[pos + 5 : pos + 1 + length], length - 4)
            pos = self._header(mtype, length, pos, n)
        if pos < n:
            self._stub += data[pos:]
        self.at_boundary = not self._skip and not self._stub

    def feed(self, data: bytes) -> bytes:
        """Route the server's next bytes: the client's are returned, the proxy's go to
        their sinks."""
        out: list[bytes] = []
        if data:
            self._drain_local(out, force=True)
        pos = self._continue(data, out)
        buffer = data
        n = len(data)
        if self._partial:
            self._partial += data[pos:]
            buffer = bytes(self._partial)
            self._partial.clear()
            pos, n = 0, len(buffer)
        unpack = UINT32.unpack_from
        while n - pos >= 5:
            mtype = buffer[pos]
            length = unpack(buffer, pos + 1)[0]
            if length < 4 or length > MAX_MESSAGE_LENGTH:
                raise ProtocolViolation(f"invalid message length {length}")
            end = pos + 1 + length
            entry = self._entries[0] if self._entries else None
            forward = entry is None or mtype in _ASYNC or mtype in entry.forward
            if end > n and (not forward or mtype in (Backend.ERROR, Backend.READY_FOR_QUERY)):
                break  # held until whole: a sink's message, an error, a ReadyForQuery
            self.last_type = mtype
            if end > n:  # forwarded as it comes
                if mtype == Backend.PARAMETER_STATUS:
                    self._parameter = bytearray(buffer[pos + 5 : n])
                out.append(buffer[pos:n])
                self._skip = end - n
                self._advance(mtype, None)
                pos = n
                break
            raw = buffer[pos:end]
            if forward:
                if mtype == Backend.ERROR and entry is not None and entry.position != 0:
                    raw = moved_position(raw, entry.position)
                out.append(raw)
            elif mtype == Backend.ERROR and ends_session(raw):
                out.append(moved_position(raw, None))  # the server's last word is the client's
            self._advance(mtype, Message(mtype, raw), routed_to_sink=not forward)
            pos = end
            self._drain_local(out, force=True)
        if pos < n:
            self._partial += buffer[pos:]
        self._drain_local(out)
        self.at_boundary = not self._skip and not self._partial
        return b"".join(out)

    def parameter_status(self, body: bytes) -> None:
        """A ParameterStatus body: the client_encoding it reports is kept."""
        name, _, value = body.partition(b"\x00")
        if name == b"client_encoding":
            self.client_encoding = value.rstrip(b"\x00").decode("ascii", "replace")

    def _parameter_begins(self, body: bytes, size: int) -> None:
        """A ParameterStatus written as it came: read now when whole, else collected."""
        if len(body) == size:
            self.parameter_status(body)
        else:
            self._parameter = bytearray(body)

    def _continue(self, data: bytes, out: list[bytes] | None) -> int:
        """Finish a message already being forwarded; where ``data``'s own messages start."""
        pos = 0
        n = len(data)
        if self._status_next and n:
            self.status = data[:1]
            self._status_next = False
        if self._stub:
            take = 5 - len(self._stub)
            self._stub += data[:take]
            if out is not None:
                out.append(data[:take])
            if len(self._stub) < 5:
                return n
            header = bytes(self._stub)
            self._stub.clear()
            length = UINT32.unpack_from(header, 1)[0]
            self._header(header[0], length, take - 5, take)
            if header[0] == Backend.READY_FOR_QUERY and take < n:
                self.status = data[take : take + 1]
                self._status_next = False
            elif header[0] == Backend.PARAMETER_STATUS:
                self._parameter = bytearray()
            self._skip = length - 4
            pos = take
        if self._skip:
            count = min(self._skip, n - pos)
            if out is not None and count:
                out.append(data[pos : pos + count])
            if self._parameter is not None:
                self._parameter += data[pos : pos + count]
            self._skip -= count
            if self._parameter is not None and not self._skip:
                self.parameter_status(bytes(self._parameter))
                self._parameter = None
            pos += count
        return pos

    def _header(self, mtype: int, length: int, pos: int, n: int) -> int:
        """A header of a message written as it came; returns where the message ends."""
        if length < 4 or length > MAX_MESSAGE_LENGTH:
            raise ProtocolViolation(f"invalid message length {length}")
        self.last_type = mtype
        end = pos + 1 + length
        if mtype == Backend.READY_FOR_QUERY and pos + 5 >= n:
            self._status_next = True
        self._advance(mtype, None)
        if end > n:
            self._skip = end - n
            return n
        return end

    def _drain_local(self, out: list[bytes], force: bool = False) -> None:
        """Answers of the proxy's at the head, due now (``force``: the server has sent
        something, so it would have sent what it owed before too)."""
        if self._skip or self._stub:  # never inside a message being forwarded
            return
        entries = self._entries
        while entries and entries[0].request == LOCAL and (force or not entries[0].held):
            entry = entries.popleft()
            self._routed -= 1
            out.append(entry.local)
            if entry.sink is not None:
                entry.sink.complete(None)

    def _advance(self, mtype: int, message: Message | None, routed_to_sink: bool = False) -> None:
        """The queue after server message ``mtype``; ``message`` is the whole message
        where it was read whole."""
        entries = self._entries
        if mtype == Backend.READY_FOR_QUERY and message is not None:
            self.status = message.raw[5:6]
        if mtype == Backend.PARAMETER_STATUS and message is not None:
            self.parameter_status(message.raw[5:])
        if not entries or mtype in _ASYNC:
            return
        head = entries[0]
        if mtype == Backend.ERROR:
            if head.request in _ENDED_BY_ERROR:
                told = head.passthrough or Backend.ERROR in head.forward or not head.explains
                self._own_failure = None if told else message
                self._pop(message)
                self._skip_to_sync()
            elif head.sink is not None and message is not None:
                head.sink.deliver(message)
            return
        if routed_to_sink and message is not None and head.sink is not None:
            head.sink.deliver(message)
        if mtype in _COMPLETES[head.request]:
            self._pop(None)

    def _pop(self, error: Message | None) -> None:
        entry = self._entries.popleft()
        if entry.request in _SYNC_POINTS:
            self._answered_syncs += 1
            if self.status == b"I":
                self.idle_through = self._answered_syncs
        if not entry.passthrough:
            self._routed -= 1
        if entry.sink is not None:
            entry.sink.complete(error)

    def _skip_to_sync(self) -> None:
        """After an extended-protocol error the server skips everything up to Sync.  When
        the error was of a request of the proxy's own (the client was not told), the
        proxy's answers queued meanwhile stay, in their turn, as :meth:`local` keeps
        them: one of them is what the client is told."""
        entries = self._entries
        kept: list[Expected] = []
        while entries and entries[0].request != Frontend.SYNC:
            entry = entries.popleft()
            if entry.request == LOCAL and self._own_failure is not None:
                kept.append(entry)
                continue
            if not entry.passthrough:
                self._routed -= 1
            if entry.sink is not None:
                entry.sink.skip(self._own_failure)
        if not entries:
            self._ignoring = True
        entries.extendleft(reversed(kept))
