"""A client's packets before its startup message, answered as PostgreSQL's
ProcessStartupPacket answers them.  Sans-IO: bytes in, decisions out.

What PostgreSQL only logs (a packet of invalid length, a malformed cancel request) ends
the connection without a word.  Encryption requests are the proxy's to answer: TLS when
it has a certificate, never GSSAPI.  Everything else goes to the server as the client
sent it, after the client's encryption requests are replayed to it, so that the server
answers the rest (unsupported versions, malformed layouts, repeated requests) itself.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from proxy.wire.codec import (
    CANCEL_REQUEST_CODE,
    GSSENC_REQUEST_CODE,
    MAX_CANCEL_KEY_LENGTH,
    MAX_STARTUP_LENGTH,
    SSL_ACCEPTED,
    SSL_REFUSED,
    SSL_REQUEST_CODE,
    UINT32,
    UINT32_PAIR,
    CancelRequest,
    PgError,
)

_MITM = (
    "This could be either a client-software bug or evidence of an attempted "
    "man-in-the-middle attack."
)


@dataclass(frozen=True, slots=True)
class Answer:
    """Bytes for the client; then a TLS handshake when ``tls``."""

    data: bytes
    tls: bool = False


@dataclass(frozen=True, slots=True)
class Cancel:
    request: CancelRequest


@dataclass(frozen=True, slots=True)
class Connect:
    """Open the upstream connection, replay ``replay`` (each an encryption request the
    server answers with one byte), then relay ``data`` (the startup packet and what came
    after it)."""

    data: bytes
    params: dict[str, str]
    major: int
    replay: tuple[bytes, ...]


@dataclass(frozen=True, slots=True)
class Drop:
    """Close without a word (PostgreSQL logs ``reason``)."""

    reason: str


@dataclass(frozen=True, slots=True)
class Fail:
    """A FATAL error, then close."""

    error: PgError


Decision = Answer | Cancel | Connect | Drop | Fail


@dataclass
class StartupPhase:
    tls: bool
    """Whether the proxy can accept TLS from clients."""
    ssl_done: bool = False
    gss_done: bool = False
    _buffer: bytearray = field(default_factory=bytearray)
    _requests: list[bytes] = field(default_factory=list)
    _last: str = ""
    """The encryption request answered last, for the error about data after it."""

    @property
    def has_partial_packet(self) -> bool:
        return bool(self._buffer)

    def feed(self, data: bytes) -> list[Decision]:
        """What to do about the client's next bytes (nothing yet when a packet is short)."""
        self._buffer += data
        decisions: list[Decision] = []
        while len(self._buffer) >= 4:
            length = UINT32.unpack_from(self._buffer)[0]
            if length - 4 < 4 or length - 4 > MAX_STARTUP_LENGTH:
                return [*decisions, Drop("invalid length of startup packet")]
            if len(self._buffer) < length:
                break
            packet = bytes(self._buffer[:length])
            del self._buffer[:length]
            decision = self._packet(packet)
            decisions.append(decision)
            if not isinstance(decision, Answer):
                break
            if self._buffer:  # data the client sent before the request was answered
                decisions.append(Fail(self._unencrypted_data()))
                break
            if decision.tls:
                break
        return decisions

    def _packet(self, packet: bytes) -> Decision:
        code = UINT32.unpack_from(packet, 4)[0]
        if code == CANCEL_REQUEST_CODE:
            secret = packet[12:]
            if len(packet) < 12 or len(secret) > MAX_CANCEL_KEY_LENGTH:
                return Drop("invalid length of cancel request packet")
            return Cancel(CancelRequest(UINT32.unpack_from(packet, 8)[0], bytes(secret)))
        if code == SSL_REQUEST_CODE and not self.ssl_done:
            self.ssl_done = True
            self._requests.append(UINT32_PAIR.pack(8, code))
            self._last = "SSL request"
            return Answer(SSL_ACCEPTED, tls=True) if self.tls else Answer(SSL_REFUSED)
        if code == GSSENC_REQUEST_CODE and not self.gss_done:
            self.gss_done = True
            self._requests.append(UINT32_PAIR.pack(8, code))
            self._last = "GSSAPI encryption request"
            return Answer(SSL_REFUSED)
        data = packet + bytes(self._buffer)
        self._buffer.clear()
        # A repeated encryption request is the server's to refuse, once it has seen the
        # first: only then does what it saw before matter.
        repeated = code in (SSL_REQUEST_CODE, GSSENC_REQUEST_CODE)
        replay = tuple(self._requests) if repeated else ()
        return Connect(data, _params(packet[8:]), code >> 16, replay)

    def _unencrypted_data(self) -> PgError:
        return PgError(
            "FATAL", "08P01", f"received unencrypted data after {self._last}", detail=_MITM
        )


def _params(body: bytes) -> dict[str, str]:
    """The startup packet's parameters as far as they read, for the proxy's own use
    (the server judges the packet itself)."""
    words = body.split(b"\x00")
    params: dict[str, str] = {}
    for key, value in zip(words[::2], words[1::2], strict=False):
        if not key:
            break
        params[key.decode("utf-8", "replace")] = value.decode("utf-8", "replace")
    return params
