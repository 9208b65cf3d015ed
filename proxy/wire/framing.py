"""Cutting a client's byte stream into messages, sans-IO.

:class:`ClientFramer` walks the message headers of everything after the startup
packet: the messages the
session wants to look at come out whole; everything else comes out as byte runs to relay
exactly as they came, without being copied message by message.
"""

from __future__ import annotations

from collections.abc import Callable, Collection

from proxy.wire.codec import (
    MAX_MESSAGE_LENGTH,
    SMALL_MESSAGE_LENGTH,
    SMALL_MESSAGE_TYPES,
    UINT32,
    Message,
)

Chunk = bytes | Message
"""What a framer hands back: a byte run to relay as it is, or a message to look at."""

Selector = Callable[[int, bytes, int, int], bool]
"""``want(type, buffer, start, end)``: does the caller want this whole message?"""


def valid_length(mtype: int, length: int) -> bool:
    """Whether PostgreSQL reads a message of this type and declared length (Sync, Flush,
    Execute, Describe, Close, Terminate, CopyDone and CopyFail are small)."""
    limit = SMALL_MESSAGE_LENGTH if mtype in SMALL_MESSAGE_TYPES else MAX_MESSAGE_LENGTH
    return 4 <= length <= limit


class ClientFramer:
    """Splits the client's stream into relayable runs and the messages the session wants.

    ``watched`` types are held until whole and offered to ``want``; the others stream
    through unbuffered.  ``on_relay(type)`` is told, in stream order, of every relayed
    message whose type is in ``counted`` (the requests that the server will answer).
    """

    __slots__ = (
        "_need",
        "_pending",
        "_skip",
        "at_boundary",
        "broken",
        "counted",
        "on_relay",
        "rest",
        "watched",
    )

    def __init__(
        self,
        watched: Collection[int],
        counted: Collection[int],
        on_relay: Callable[[int], None],
    ) -> None:
        self.watched = frozenset(watched)
        self.counted = frozenset(counted)
        self.on_relay = on_relay
        self.at_boundary = True
        """Whether everything fed so far ends on a message boundary."""
        self.rest = b""
        """Input after the last message taken, not framed yet."""
        self.broken = b""
        """Input from a message whose declared length PostgreSQL refuses on: the stream
        cannot be framed past it."""
        self._skip = 0
        self._pending = bytearray()
        self._need = 0

    def feed(self, data: bytes, want: Selector) -> list[Chunk] | None:
        """Frame the next read; ``None`` means: relay ``data`` exactly as it came.

        Framing stops after the first message ``want`` takes: what came after it is left
        in :attr:`rest`, unframed, for the caller to feed again once it is ready for it.
        """
        out: list[Chunk] = []
        whole = not self._pending
        if not whole:
            data = self._complete_pending(data, want, out)
            if self.broken:
                return out
            if out and isinstance(out[-1], Message):
                self.rest = data
                self.at_boundary = True
                return out
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
        watched, counted, on_relay = self.watched, self.counted, self.on_relay
        unpack = UINT32.unpack_from
        while n - pos >= 5:
            mtype = data[pos]
            length = unpack(data, pos + 1)[0]
            if not valid_length(mtype, length):
                return self._break(out, data, start, pos)
            end = pos + 1 + length
            if mtype in watched:
                if end > n:
                    break
                if want(mtype, data, pos, end):
                    if start < pos:
                        out.append(data[start:pos])
                    out.append(Message(mtype, data[pos:end]))
                    self.rest = data[end:]
                    self.at_boundary = True
                    return out
            if mtype in counted:
                on_relay(mtype)
            if end > n:
                self._skip = end - n
                pos = n
                break
            pos = end
        if pos < n:
            self._begin_pending(data[pos:])
        self.at_boundary = not self._skip and not self._pending
        if whole and start == 0 and pos == n:
            return None
        if start < pos:
            out.append(data[start:pos])
        return out

    def _break(self, out: list[Chunk], data: bytes, start: int, pos: int) -> list[Chunk]:
        """A length PostgreSQL would not read: frame no further.  What came before it is
        returned; from it on, :attr:`broken` holds the stream for the server to judge."""
        if start < pos:
            out.append(data[start:pos])
        self.broken = data[pos:]
        self.at_boundary = True
        return out

    def _begin_pending(self, head: bytes) -> None:
        """Buffer a watched message, or a bare header, that the read cut short."""
        self._pending = bytearray(head)
        self._need = 1 + UINT32.unpack_from(head, 1)[0] if len(head) >= 5 else 0

    def _complete_pending(self, data: bytes, want: Selector, out: list[Chunk]) -> bytes:
        """Finish the buffered message with the front of ``data``; return the rest."""
        pending = self._pending
        if not self._need:
            take = 5 - len(pending)
            pending += data[:take]
            data = data[take:]
            if len(pending) < 5:
                return data
            length = UINT32.unpack_from(pending, 1)[0]
            if not valid_length(pending[0], length):
                self.broken = bytes(pending) + data
                self._pending = bytearray()
                return b""
            self._need = 1 + length
            if pending[0] not in self.watched:
                # A header split across reads of a message relayed unseen.
                if pending[0] in self.counted:
                    self.on_relay(pending[0])
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
            out.append(Message(raw[0], raw))
        else:
            if raw[0] in self.counted:
                self.on_relay(raw[0])
            out.append(raw)
        return data
