"""A minimal PostgreSQL wire-protocol client over a plain socket, for byte-level tests.

Encoders build frontend messages as bytes; :class:`RawClient` sends arbitrary bytes and
reads backend messages with their type/length framing, so a test can compare exactly
what a server (or the proxy in front of it) sends back.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import select
import socket
import struct
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

SSL_REQUEST_CODE = 80877103
GSSENC_REQUEST_CODE = 80877104
CANCEL_REQUEST_CODE = 80877102

AUTH_OK = 0
AUTH_CLEARTEXT = 3
AUTH_MD5 = 5
AUTH_SASL = 10
AUTH_SASL_CONTINUE = 11
AUTH_SASL_FINAL = 12


# --- frontend message encoders -------------------------------------------------------


def cstr(text: str | bytes) -> bytes:
    data = text.encode() if isinstance(text, str) else text
    return data + b"\x00"


def msg(mtype: bytes, body: bytes = b"") -> bytes:
    """One typed message: type byte, int32 length (self-inclusive), body."""
    return mtype + struct.pack("!I", len(body) + 4) + body


def startup_message(params: Mapping[str, str], version: tuple[int, int] = (3, 0)) -> bytes:
    body = struct.pack("!I", (version[0] << 16) | version[1])
    body += b"".join(cstr(k) + cstr(v) for k, v in params.items()) + b"\x00"
    return struct.pack("!I", len(body) + 4) + body


def ssl_request() -> bytes:
    return struct.pack("!II", 8, SSL_REQUEST_CODE)


def gssenc_request() -> bytes:
    return struct.pack("!II", 8, GSSENC_REQUEST_CODE)


def cancel_request(pid: int, secret: bytes) -> bytes:
    return struct.pack("!III", 12 + len(secret), CANCEL_REQUEST_CODE, pid) + secret


def query(sql: str) -> bytes:
    return msg(b"Q", cstr(sql))


def parse(name: str, sql: str, param_types: Sequence[int] = ()) -> bytes:
    types = struct.pack(f"!H{len(param_types)}I", len(param_types), *param_types)
    return msg(b"P", cstr(name) + cstr(sql) + types)


def bind(
    portal: str,
    statement: str,
    params: Sequence[bytes | None] = (),
    param_formats: Sequence[int] = (),
    result_formats: Sequence[int] = (),
) -> bytes:
    body = cstr(portal) + cstr(statement)
    body += struct.pack(f"!H{len(param_formats)}H", len(param_formats), *param_formats)
    body += struct.pack("!H", len(params))
    for value in params:
        body += struct.pack("!i", -1) if value is None else struct.pack("!I", len(value)) + value
    body += struct.pack(f"!H{len(result_formats)}H", len(result_formats), *result_formats)
    return msg(b"B", body)


def describe(kind: bytes, name: str = "") -> bytes:
    return msg(b"D", kind + cstr(name))


def execute(portal: str = "", max_rows: int = 0) -> bytes:
    return msg(b"E", cstr(portal) + struct.pack("!I", max_rows))


def close(kind: bytes, name: str = "") -> bytes:
    return msg(b"C", kind + cstr(name))


def sync() -> bytes:
    return msg(b"S")


def flush() -> bytes:
    return msg(b"H")


def terminate() -> bytes:
    return msg(b"X")


def copy_data(data: bytes) -> bytes:
    return msg(b"d", data)


def copy_done() -> bytes:
    return msg(b"c")


def copy_fail(reason: str) -> bytes:
    return msg(b"f", cstr(reason))


def function_call(
    oid: int, args: Sequence[bytes | None], arg_formats: Sequence[int] = (), result_format: int = 0
) -> bytes:
    body = struct.pack(f"!IH{len(arg_formats)}H", oid, len(arg_formats), *arg_formats)
    body += struct.pack("!H", len(args))
    for value in args:
        body += struct.pack("!i", -1) if value is None else struct.pack("!I", len(value)) + value
    return msg(b"F", body + struct.pack("!H", result_format))


def password_message(data: bytes) -> bytes:
    return msg(b"p", data)


# --- backend message decoding ----------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Message:
    """One backend message: its type byte and body (the length word is implied)."""

    type: bytes
    body: bytes

    @property
    def raw(self) -> bytes:
        return msg(self.type, self.body)

    @property
    def auth_code(self) -> int:
        """The request code of an Authentication ('R') message."""
        return int(struct.unpack_from("!I", self.body)[0])


def error_fields(body: bytes) -> dict[str, str]:
    """The fields of an ErrorResponse or NoticeResponse body, keyed by field letter."""
    return {chr(p[0]): p[1:].decode() for p in body.split(b"\x00") if p}


def backend_key(body: bytes) -> tuple[int, bytes]:
    """(pid, secret) from a BackendKeyData body."""
    return int(struct.unpack_from("!I", body)[0]), body[4:]


# --- the client ------------------------------------------------------------------------


class ServerClosed(ConnectionError):
    """The server closed the connection while a whole message was expected."""


class RawClient:
    """A socket with a receive buffer and PostgreSQL message framing."""

    def __init__(self, sock: socket.socket, timeout: float = 5.0) -> None:
        self.sock = sock
        self.timeout = timeout
        self.buffer = bytearray()

    @classmethod
    def connect(cls, host: str, port: int, timeout: float = 5.0) -> RawClient:
        sock = socket.create_connection((host, port), timeout=timeout)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return cls(sock, timeout)

    def __enter__(self) -> RawClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.sock.close()

    def send(self, *chunks: bytes) -> None:
        self.sock.sendall(b"".join(chunks))

    # --- reading -----------------------------------------------------------------------

    def _fill(self, deadline: float) -> None:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError("no reply from the server in time")
        self.sock.settimeout(remaining)
        try:
            data = self.sock.recv(65536)
        except TimeoutError:
            raise TimeoutError("no reply from the server in time") from None
        if not data:
            raise ServerClosed(f"server closed the connection; {len(self.buffer)} bytes pending")
        self.buffer += data

    def read_exact(self, n: int, timeout: float | None = None) -> bytes:
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        while len(self.buffer) < n:
            self._fill(deadline)
        data = bytes(self.buffer[:n])
        del self.buffer[:n]
        return data

    def read_message(self, timeout: float | None = None) -> Message:
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        while len(self.buffer) < 5:
            self._fill(deadline)
        length = struct.unpack_from("!I", self.buffer, 1)[0]
        while len(self.buffer) < 1 + length:
            self._fill(deadline)
        message = Message(bytes(self.buffer[:1]), bytes(self.buffer[5 : 1 + length]))
        del self.buffer[: 1 + length]
        return message

    def read_until(
        self, types: Iterable[bytes], count: int = 1, timeout: float | None = None
    ) -> list[Message]:
        """Read messages until ``count`` of the given types have arrived; return them all."""
        wanted = set(types)
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        out: list[Message] = []
        while count > 0:
            out.append(self.read_message(max(deadline - time.monotonic(), 0.001)))
            if out[-1].type in wanted:
                count -= 1
        return out

    def read_until_ready(self, count: int = 1, timeout: float | None = None) -> list[Message]:
        """Read through ``count`` ReadyForQuery messages."""
        return self.read_until([b"Z"], count, timeout)

    def read_to_eof(self, timeout: float | None = None) -> bytes:
        """Everything the server sends until it closes the connection."""
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        try:
            while True:
                self._fill(deadline)
        except (ServerClosed, ConnectionResetError):
            pass
        data = bytes(self.buffer)
        self.buffer.clear()
        return data

    def has_data(self, timeout: float) -> bool:
        """Whether anything (buffered or new) is readable within ``timeout`` seconds."""
        if self.buffer:
            return True
        readable, _, _ = select.select([self.sock], [], [], timeout)
        return bool(readable)

    # --- startup -----------------------------------------------------------------------

    def startup(
        self,
        user: str,
        database: str = "postgres",
        password: str | None = None,
        version: tuple[int, int] = (3, 0),
        **params: str,
    ) -> list[Message]:
        """Send a startup packet and answer password requests.

        Returns every message the server sent up to and including the first
        ReadyForQuery, or the ErrorResponse that ended the attempt.
        """
        self.send(startup_message({"user": user, "database": database, **params}, version))
        scram: _Scram | None = None
        out: list[Message] = []
        while True:
            message = self.read_message()
            out.append(message)
            if message.type in (b"Z", b"E"):
                return out
            if message.type != b"R" or message.auth_code == AUTH_OK:
                continue
            code = message.auth_code
            if password is None:
                raise AssertionError(f"server asked for a password (auth request {code})")
            if code == AUTH_CLEARTEXT:
                self.send(password_message(cstr(password)))
            elif code == AUTH_MD5:
                inner = hashlib.md5((password + user).encode()).hexdigest()
                outer = hashlib.md5(inner.encode() + message.body[4:8]).hexdigest()
                self.send(password_message(cstr("md5" + outer)))
            elif code == AUTH_SASL:
                scram = _Scram(password)
                self.send(scram.initial_response())
            elif code == AUTH_SASL_CONTINUE and scram is not None:
                self.send(scram.final_response(message.body[4:]))
            elif code != AUTH_SASL_FINAL:
                raise AssertionError(f"unsupported authentication request {code}")


class _Scram:
    """Client side of SCRAM-SHA-256 without channel binding (RFC 5802/7677)."""

    def __init__(self, password: str) -> None:
        self.password = password.encode()
        self.nonce = base64.b64encode(os.urandom(18)).decode()
        self.first_bare = f"n=,r={self.nonce}"

    def initial_response(self) -> bytes:
        first = ("n,," + self.first_bare).encode()
        return password_message(cstr("SCRAM-SHA-256") + struct.pack("!I", len(first)) + first)

    def final_response(self, server_first: bytes) -> bytes:
        attrs = dict(item.split("=", 1) for item in server_first.decode().split(","))
        salted = hashlib.pbkdf2_hmac(
            "sha256", self.password, base64.b64decode(attrs["s"]), int(attrs["i"])
        )
        client_key = hmac.digest(salted, b"Client Key", "sha256")
        stored_key = hashlib.sha256(client_key).digest()
        without_proof = f"c=biws,r={attrs['r']}"
        auth_message = f"{self.first_bare},{server_first.decode()},{without_proof}".encode()
        signature = hmac.digest(stored_key, auth_message, "sha256")
        proof = bytes(a ^ b for a, b in zip(client_key, signature, strict=True))
        final = f"{without_proof},p={base64.b64encode(proof).decode()}"
        return password_message(final.encode())
