"""Raw-socket tools for the fault tests: a tiny protocol client, a TCP forwarder that can
be cut, and a server that accepts connections but never answers."""

from __future__ import annotations

import asyncio
import socket
import struct
import threading
import time
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

T = TypeVar("T")

PROTOCOL_3_0 = 196608
SSL_REQUEST = struct.pack("!II", 8, 80877103)


def startup_packet(user: str = "postgres", database: str = "postgres") -> bytes:
    """A protocol 3.0 StartupMessage."""
    body = struct.pack("!I", PROTOCOL_3_0)
    for key, value in (("user", user), ("database", database)):
        body += key.encode() + b"\x00" + value.encode() + b"\x00"
    body += b"\x00"
    return struct.pack("!I", len(body) + 4) + body


def query(sql: str) -> bytes:
    """A simple-protocol Query message."""
    body = sql.encode() + b"\x00"
    return b"Q" + struct.pack("!I", len(body) + 4) + body


def error_fields(body: bytes) -> dict[str, str]:
    """The fields of an ErrorResponse or NoticeResponse body, keyed by field code."""
    parts = [part for part in body.split(b"\x00") if part]
    return {chr(part[0]): part[1:].decode("utf-8", "replace") for part in parts}


class RawClient:
    """A blocking socket that speaks just enough of the protocol to drive a session."""

    def __init__(self, port: int, timeout: float = 5.0) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.buffer = bytearray()
        self.backend_pid = 0

    @property
    def local_port(self) -> int:
        return int(self.sock.getsockname()[1])

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def close(self) -> None:
        self.sock.close()

    def _fill(self) -> bool:
        chunk = self.sock.recv(65536)
        self.buffer += chunk
        return bool(chunk)

    def read_message(self) -> tuple[str, bytes]:
        """The next message as ``(type, body)``; raises ``EOFError`` at end of stream."""
        while (
            len(self.buffer) < 5
            or len(self.buffer) < 1 + struct.unpack_from("!I", self.buffer, 1)[0]
        ):
            if not self._fill():
                raise EOFError(f"connection closed with {len(self.buffer)} bytes pending")
        length = struct.unpack_from("!I", self.buffer, 1)[0]
        mtype, body = chr(self.buffer[0]), bytes(self.buffer[5 : 1 + length])
        del self.buffer[: 1 + length]
        return mtype, body

    def read_byte(self) -> bytes:
        """One byte (the answer to an SSLRequest)."""
        while not self.buffer:
            if not self._fill():
                raise EOFError("connection closed")
        byte = bytes(self.buffer[:1])
        del self.buffer[:1]
        return byte

    def read_until_ready(self) -> list[tuple[str, bytes]]:
        """Messages up to and including ReadyForQuery."""
        messages = []
        while True:
            message = self.read_message()
            messages.append(message)
            if message[0] == "Z":
                return messages

    def read_to_eof(self) -> list[tuple[str, bytes]]:
        """Every message until the peer closes; leftover partial bytes raise."""
        messages = []
        while True:
            try:
                messages.append(self.read_message())
            except EOFError:
                if self.buffer:
                    raise
                return messages
            except ConnectionResetError:
                return messages

    def login(self, user: str = "postgres", database: str = "postgres") -> None:
        """Startup with trust authentication; records the backend pid."""
        self.send(startup_packet(user, database))
        for mtype, body in self.read_until_ready():
            if mtype == "E":
                raise AssertionError(f"login failed: {error_fields(body)}")
            if mtype == "K":
                self.backend_pid = struct.unpack_from("!I", body)[0]


def wait_for(condition: Callable[[], bool], timeout: float, interval: float = 0.05) -> bool:
    """Poll ``condition`` until it holds or ``timeout`` seconds pass."""
    deadline = time.monotonic() + timeout
    while True:
        if condition():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)


class TcpForwarder:
    """Relays 127.0.0.1:``port`` to a target; ``cut()`` drops every live connection."""

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.port = 0
        self.connections = 0
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    def start(self) -> TcpForwarder:
        self._thread.start()
        self._server = self._run(asyncio.start_server(self._handle, "127.0.0.1", 0))
        self.port = int(self._server.sockets[0].getsockname()[1])
        return self

    def _run(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(10)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.transport.abort()
            return
        self.connections += 1
        self._writers.update((writer, up_writer))
        await asyncio.gather(
            self._pump(reader, up_writer), self._pump(up_reader, writer), return_exceptions=True
        )
        self._writers.difference_update((writer, up_writer))

    @staticmethod
    async def _pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        finally:
            writer.transport.abort()

    async def _cut(self, reset: bool) -> int:
        writers = list(self._writers)
        for writer in writers:
            sock = writer.get_extra_info("socket")
            if reset and sock is not None:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            writer.transport.abort()
        return len(writers) // 2

    def cut(self, reset: bool = False) -> int:
        """Close both sides of every relayed connection (RST when ``reset``); return count."""
        return self._run(self._cut(reset))

    def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        self.cut(reset=False)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)


class SilentServer:
    """Accepts TCP connections and never sends a byte."""

    def __init__(self) -> None:
        self._listener = socket.socket()
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(16)
        self._listener.settimeout(0.1)
        self.port = int(self._listener.getsockname()[1])
        self.accepted: list[socket.socket] = []
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._accept_loop, daemon=True)

    def start(self) -> SilentServer:
        self._thread.start()
        return self

    def _accept_loop(self) -> None:
        while not self._stopping.is_set():
            try:
                conn, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self.accepted.append(conn)

    def stop(self) -> None:
        self._stopping.set()
        self._thread.join(5)
        self._listener.close()
        for conn in self.accepted:
            conn.close()
