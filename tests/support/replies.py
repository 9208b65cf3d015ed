"""Reading whatever a server sends back, framed or not, and normalising it for comparison.

The startup phase mixes single bytes (the answer to SSLRequest), old-style errors and
framed messages; a malformed exchange may end anywhere.  :func:`frames` splits such a byte
string leniently, and :func:`normalize` blanks what differs between two correct servers:
BackendKeyData (another backend, another secret) and the source location of an error
(fields ``F``, ``L``, ``R``: the file, line and routine of the server's own code).
"""

from __future__ import annotations

import socket
import struct
import time
from dataclasses import dataclass

from tests.support import rawclient as rc

BACKEND_TYPES = frozenset(b"RKSZEN12ntTDCIsGHWdcfAVv3")
SERVER_SPECIFIC_FIELDS = frozenset("FLR")
MAX_FRAME = 1 << 30


def frames(data: bytes) -> list[bytes]:
    """Messages where the bytes frame as backend messages; single bytes elsewhere."""
    out: list[bytes] = []
    pos = 0
    while pos < len(data):
        if pos + 5 <= len(data) and data[pos] in BACKEND_TYPES:
            length = struct.unpack_from("!I", data, pos + 1)[0]
            if 4 <= length <= MAX_FRAME and pos + 1 + length <= len(data):
                out.append(data[pos : pos + 1 + length])
                pos += 1 + length
                continue
        out.append(data[pos : pos + 1])
        pos += 1
    return out


def error_fields(body: bytes) -> dict[str, str]:
    return {chr(p[0]): p[1:].decode("utf-8", "replace") for p in body.split(b"\x00") if p}


def errors(data: bytes) -> list[dict[str, str]]:
    """The fields of every ErrorResponse in ``data``."""
    return [error_fields(f[5:]) for f in frames(data) if len(f) > 1 and f[:1] == b"E"]


def _normalize_frame(frame: bytes) -> bytes:
    if len(frame) < 5:
        return frame
    if frame[:1] == b"K":
        return rc.msg(b"K", bytes(len(frame) - 5))
    if frame[:1] in (b"E", b"N"):
        kept = [
            p for p in frame[5:].split(b"\x00") if p and chr(p[0]) not in SERVER_SPECIFIC_FIELDS
        ]
        return rc.msg(frame[:1], b"".join(p + b"\x00" for p in kept) + b"\x00")
    return frame


def normalize(data: bytes) -> list[bytes]:
    return [_normalize_frame(f) for f in frames(data)]


@dataclass(frozen=True)
class Reply:
    """What came back for one exchange, normalised, and whether the server then closed."""

    frames: tuple[bytes, ...]
    closed: bool

    @property
    def codes(self) -> list[str]:
        """The SQLSTATE of each ErrorResponse, in order."""
        return [error_fields(f[5:]).get("C", "") for f in self.frames if f[:1] == b"E"]

    def describe(self) -> str:
        shown = []
        for frame in self.frames:
            if frame[:1] == b"E" and len(frame) > 5:
                fields = error_fields(frame[5:])
                shown.append(f"E[{fields.get('S')} {fields.get('C')} {fields.get('M')!r}]")
            elif len(frame) > 40:
                shown.append(f"{frame[:1]!r}+{len(frame)}B")
            else:
                shown.append(repr(frame))
        return " ".join(shown) + (" <closed>" if self.closed else " <open>")


_READY_END = b"Z\x00\x00\x00\x05"


def read_reply(
    sock: socket.socket, quiet: float, limit: float = 10.0, settle: float | None = None
) -> tuple[bytes, bool]:
    """Bytes until the server closes, or sends nothing for ``quiet`` seconds; and whether
    it closed (a reset counts as a close).  With ``settle``, a reply that ends with
    ReadyForQuery is complete once ``settle`` seconds pass without more."""
    data = bytearray()
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        ready = settle is not None and data[-6:-1] == _READY_END
        sock.settimeout(settle if ready else quiet)
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            return bytes(data), False
        except (ConnectionResetError, BrokenPipeError):
            return bytes(data), True
        if not chunk:
            return bytes(data), True
        data += chunk
    return bytes(data), False
