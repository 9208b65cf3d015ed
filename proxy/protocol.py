"""Sans-IO codec for the PostgreSQL frontend/backend protocol (version 3).

Nothing here touches a socket: callers feed bytes in and get messages, byte runs
to relay, and encoded replies out.  The relay in :mod:`proxy.session` does the IO.
"""

from __future__ import annotations

import re
import struct
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

SSL_REQUEST_CODE = 80877103
GSSENC_REQUEST_CODE = 80877104
CANCEL_REQUEST_CODE = 80877102

MAX_STARTUP_LENGTH = 10_000
"""PostgreSQL's MAX_STARTUP_PACKET_LENGTH."""
MAX_MESSAGE_LENGTH = 0x3FFF_FFFF
"""PostgreSQL's PQ_LARGE_MESSAGE_LIMIT: no single message may be longer."""
MAX_CANCEL_KEY_LENGTH = 256
"""Protocol 3.2 allows cancel keys of up to 256 bytes."""

PGML_PATTERN = re.compile(rb"[pP][gG][mM][lL]")
"""The only test a statement on the pass-through path ever gets."""

QUERY = ord("Q")
PARSE = ord("P")
READY_FOR_QUERY = ord("Z")
ERROR_RESPONSE = ord("E")
BACKEND_KEY_DATA = ord("K")
AUTHENTICATION = ord("R")
PARAMETER_STATUS = ord("S")
SYNC = ord("S")
TERMINATE = ord("X")

_HEADER = struct.Struct("!cI")
_INT32 = struct.Struct("!I")
_INT32_PAIR = struct.Struct("!II")


class ProtocolViolation(Exception):
    """The peer sent bytes that are not the PostgreSQL protocol."""


# --- startup phase -----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SSLRequest:
    """The client asks for TLS before its startup message."""


@dataclass(frozen=True, slots=True)
class GSSENCRequest:
    """The client asks for GSSAPI encryption before its startup message."""


@dataclass(frozen=True, slots=True)
class CancelRequest:
    """A request, on a fresh connection, to cancel another session's query."""

    pid: int
    secret: bytes

    def encode(self) -> bytes:
        return _INT32_PAIR.pack(12 + len(self.secret), CANCEL_REQUEST_CODE) + (
            _INT32.pack(self.pid) + self.secret
        )


@dataclass(frozen=True, slots=True)
class StartupMessage:
    """The client's startup packet, kept byte for byte so it can be relayed unchanged."""

    major: int
    minor: int
    params: Mapping[str, str]
    raw: bytes


StartupRequest = SSLRequest | GSSENCRequest | CancelRequest | StartupMessage


def parse_startup_packet(packet: bytes) -> StartupRequest:
    """Decode one whole startup-phase packet (length word included)."""
    if len(packet) < 8:
        raise ProtocolViolation("invalid length of startup packet")
    code = _INT32.unpack_from(packet, 4)[0]
    if code == SSL_REQUEST_CODE and len(packet) == 8:
        return SSLRequest()
    if code == GSSENC_REQUEST_CODE and len(packet) == 8:
        return GSSENCRequest()
    if code == CANCEL_REQUEST_CODE:
        secret = packet[12:]
        if len(packet) < 16 or len(secret) > MAX_CANCEL_KEY_LENGTH:
            raise ProtocolViolation("invalid length of cancel request packet")
        return CancelRequest(_INT32.unpack_from(packet, 8)[0], bytes(secret))
    major, minor = code >> 16, code & 0xFFFF
    params: dict[str, str] = {}
    if major == 3:
        params = _parse_startup_params(packet[8:])
    return StartupMessage(major, minor, params, bytes(packet))


def _parse_startup_params(body: bytes) -> dict[str, str]:
    parts = body.split(b"\x00")
    if len(parts) < 2 or parts[-1] or parts[-2]:
        raise ProtocolViolation("invalid startup packet layout: expected terminator as last byte")
    words = parts[:-2]
    if len(words) % 2:
        raise ProtocolViolation("invalid startup packet layout: a parameter has no value")
    try:
        decoded = [w.decode("utf-8") for w in words]
    except UnicodeDecodeError as exc:
        raise ProtocolViolation("invalid byte sequence in startup packet") from exc
    return dict(zip(decoded[::2], decoded[1::2], strict=True))


class StartupReader:
    """Collects one length-prefixed startup packet from a byte stream."""

    def __init__(self) -> None:
        self._buffer = bytearray()

    @property
    def has_partial_packet(self) -> bool:
        return bool(self._buffer)

    def feed(self, data: bytes) -> tuple[bytes, bytes] | None:
        """Return ``(packet, leftover)`` once a whole packet is in, else ``None``."""
        self._buffer += data
        if len(self._buffer) < 4:
            return None
        length = _INT32.unpack_from(self._buffer)[0]
        if length < 8 or length > MAX_STARTUP_LENGTH:
            raise ProtocolViolation("invalid length of startup packet")
        if len(self._buffer) < length:
            return None
        packet = bytes(self._buffer[:length])
        leftover = bytes(self._buffer[length:])
        self._buffer.clear()
        return packet, leftover


# --- message framing ---------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Message:
    """One whole protocol message; ``raw`` is its exact bytes, header included."""

    type: int
    raw: bytes
    syncs: int = 0
    """Sync points (messages answered by ReadyForQuery) the stream had before this one."""
    steps: int = 0
    """Extended-protocol steps since the last sync point, before this message."""

    @property
    def body(self) -> bytes:
        return self.raw[5:]


Chunk = bytes | Message
"""What a framer hands back: a byte run to relay as it is, or a message to look at."""

Selector = Callable[[int, bytes, int, int], bool]
"""``want(type, buffer, start, end)``: does the caller want this whole message?"""


class MessageFramer:
    """Splits a post-startup byte stream into relayable runs and messages of interest.

    ``want`` decides which whole messages of the types in ``watched`` the caller
    wants to see; everything else comes back as byte runs in
    stream order, so the relay forwards it without copying it message by message.
    Messages not watched are never buffered: a partial one is relayed as it comes.
    """

    __slots__ = (
        "_error_type",
        "_need",
        "_pending",
        "_skip",
        "_step_types",
        "_sync_types",
        "at_boundary",
        "failed",
        "last_type",
        "steps",
        "syncs",
        "watched",
    )

    def __init__(
        self,
        watched: Iterable[int] = (),
        sync_types: Iterable[int] = (),
        step_types: Iterable[int] = (),
        error_type: int = -1,
    ) -> None:
        self.watched = frozenset(watched)
        self._sync_types = frozenset(sync_types)
        self._step_types = frozenset(step_types)
        self._error_type = error_type
        self.syncs = 0
        """Messages of the sync types seen so far (Query/Sync, or ReadyForQuery)."""
        self.steps = 0
        """Messages of the step types since the last sync-type message."""
        self.failed = False
        """Whether one of those steps was an error."""
        self.last_type = 0
        """The type of the last message whose header was seen."""
        self.at_boundary = True
        """Whether everything fed so far ends on a message boundary."""
        self._skip = 0
        self._pending = bytearray()
        self._need = 0

    def reposition(self) -> bytes:
        """Hand over the stream position: return the buffered partial message, if any,
        and forget any message being relayed, so that another framer can take over."""
        pending = bytes(self._pending)
        self._pending = bytearray()
        self._need = 0
        self._skip = 0
        self.at_boundary = True
        return pending

    def _count(self, mtype: int) -> None:
        if mtype in self._sync_types:
            self.syncs += 1
            self.steps = 0
            self.failed = False
        elif mtype in self._step_types:
            self.steps += 1
            if mtype == self._error_type:
                self.failed = True

    def feed(self, data: bytes, want: Selector) -> list[Chunk] | None:
        """Frame the next read; ``None`` means: relay ``data`` exactly as it came."""
        out: list[Chunk] = []
        whole = not self._pending
        if not whole:
            data = self._complete_pending(data, want, out)
        n = len(data)
        pos = self._skip
        if pos >= n:
            self._skip = pos - n
            self.at_boundary = not self._skip and not self._pending
            if whole:
                return None
            if n:
                out.append(data)
            return out
        self._skip = 0
        start = 0
        watched = self.watched
        sync_types = self._sync_types
        step_types = self._step_types
        syncs, steps, failed = self.syncs, self.steps, self.failed
        mtype = self.last_type
        unpack = _INT32.unpack_from
        while n - pos >= 5:
            mtype = data[pos]
            length = unpack(data, pos + 1)[0]
            if length < 4 or length > MAX_MESSAGE_LENGTH:
                self.last_type, self.syncs, self.steps, self.failed = mtype, syncs, steps, failed
                raise ProtocolViolation(f"invalid message length {length}")
            end = pos + 1 + length
            if mtype in watched:
                if end > n:
                    break
                if want(mtype, data, pos, end):
                    if start < pos:
                        out.append(data[start:pos])
                    out.append(Message(mtype, data[pos:end], syncs, steps))
                    start = end
            elif end > n:
                self._skip = end - n
            if mtype in sync_types:
                syncs += 1
                steps = 0
                failed = False
            elif mtype in step_types:
                steps += 1
                if mtype == self._error_type:
                    failed = True
            if end > n:
                pos = n
                break
            pos = end
        self.last_type, self.syncs, self.steps, self.failed = mtype, syncs, steps, failed
        if pos < n:
            self._begin_pending(data[pos:])
        self.at_boundary = not self._skip and not self._pending
        if whole and start == 0 and pos == n:
            return None
        if start < pos:
            out.append(data[start:pos])
        return out

    def _begin_pending(self, head: bytes) -> None:
        """Buffer a watched message, or a bare header, that the read cut short."""
        self._pending = bytearray(head)
        self._need = 1 + _INT32.unpack_from(head, 1)[0] if len(head) >= 5 else 0

    def _complete_pending(self, data: bytes, want: Selector, out: list[Chunk]) -> bytes:
        """Finish the buffered message with the front of ``data``; return the rest."""
        pending = self._pending
        if not self._need:
            take = 5 - len(pending)
            pending += data[:take]
            data = data[take:]
            if len(pending) < 5:
                return data
            length = _INT32.unpack_from(pending, 1)[0]
            if length < 4 or length > MAX_MESSAGE_LENGTH:
                raise ProtocolViolation(f"invalid message length {length}")
            self._need = 1 + length
            self.last_type = pending[0]
            if pending[0] not in self.watched:
                self._count(pending[0])
                # A header split across reads of a message we relay unseen.
                self._skip = self._need - 5
                self._pending = bytearray()
                self._need = 0
                out.append(bytes(pending))
                return data
        take = self._need - len(pending)
        pending += data[:take]
        data = data[take:]
        if len(pending) < self._need:
            return data
        raw = bytes(pending)
        self._pending = bytearray()
        self._need = 0
        if want(raw[0], raw, 0, len(raw)):
            out.append(Message(raw[0], raw, self.syncs, self.steps))
        else:
            out.append(raw)
        self._count(raw[0])
        return data


def mentions_pgml(mtype: int, data: bytes, start: int, end: int) -> bool:
    """The hot-path test: does a Query or Parse message's text contain ``pgml``?"""
    return PGML_PATTERN.search(data, start + 5, end) is not None


def want_all(mtype: int, data: bytes, start: int, end: int) -> bool:
    return True


EVERY_TYPE = frozenset(range(256))
"""Watch every message: for when the proxy itself reads the server's replies."""


# --- encoding replies ----------------------------------------------------------------


def message(mtype: bytes, body: bytes = b"") -> bytes:
    return _HEADER.pack(mtype, len(body) + 4) + body


def cstring(text: str) -> bytes:
    return text.encode("utf-8") + b"\x00"


@dataclass(frozen=True, slots=True)
class PgError:
    """The fields of an ErrorResponse or NoticeResponse."""

    severity: str
    code: str
    message: str
    detail: str | None = None
    hint: str | None = None
    extra: Mapping[str, str] = field(default_factory=dict)

    def encode(self, mtype: bytes = b"E") -> bytes:
        fields = [b"S" + cstring(self.severity), b"V" + cstring(self.severity)]
        fields += [b"C" + cstring(self.code), b"M" + cstring(self.message)]
        if self.detail:
            fields.append(b"D" + cstring(self.detail))
        if self.hint:
            fields.append(b"H" + cstring(self.hint))
        fields += [k.encode("ascii") + cstring(v) for k, v in self.extra.items()]
        return message(mtype, b"".join(fields) + b"\x00")


def parse_error_fields(body: bytes) -> dict[str, str]:
    """Decode the fields of an ErrorResponse or NoticeResponse body."""
    fields: dict[str, str] = {}
    for part in body.split(b"\x00"):
        if part:
            fields[chr(part[0])] = part[1:].decode("utf-8", "replace")
    return fields


def backend_key_data(pid: int, secret: bytes) -> bytes:
    return message(b"K", _INT32.pack(pid) + secret)


def parse_backend_key_data(body: bytes) -> tuple[int, bytes]:
    if len(body) < 8:
        raise ProtocolViolation("invalid BackendKeyData message")
    return _INT32.unpack_from(body)[0], bytes(body[4:])


AUTH_SASL = 10
_PLUS_SUFFIX = b"-PLUS"


def without_channel_binding(reply: Message) -> bytes:
    """An AuthenticationSASL without the ``-PLUS`` mechanisms (any other message as is).

    Channel binding ties SCRAM to the TLS connection the server sees, which is the proxy's,
    not the client's: offered to a client over TLS, it could never succeed.
    """
    body = reply.body
    if len(body) < 4 or _INT32.unpack_from(body)[0] != AUTH_SASL:
        return reply.raw
    names = [n for n in body[4:].split(b"\x00") if n]
    kept = [n for n in names if not n.endswith(_PLUS_SUFFIX)]
    if len(kept) == len(names):
        return reply.raw
    return message(b"R", body[:4] + b"".join(n + b"\x00" for n in kept) + b"\x00")


def ready_for_query(status: bytes) -> bytes:
    return message(b"Z", status)


SSL_REFUSED = b"N"
SSL_ACCEPTED = b"S"
