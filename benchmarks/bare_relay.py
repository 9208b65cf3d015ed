"""Reference point for the pass-through benchmark: a relay of bytes with no framing.

It forwards every byte both ways on uvloop protocols and understands nothing (no cancel,
no TLS, no pgml): the floor that any Python relay on this event loop can reach.

    python benchmarks/bare_relay.py LISTEN_PORT UPSTREAM_SOCKET_PATH
"""

from __future__ import annotations

import asyncio
import sys

import uvloop


class Upstream(asyncio.Protocol):
    def __init__(self, client: asyncio.Transport) -> None:
        self.client = client

    def data_received(self, data: bytes) -> None:
        self.client.write(data)

    def connection_lost(self, exc: Exception | None) -> None:
        self.client.close()


class Client(asyncio.Protocol):
    def __init__(self, socket_path: str) -> None:
        self.socket_path = socket_path
        self.upstream: asyncio.BaseTransport | None = None
        self.pending: list[bytes] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        asyncio.get_running_loop().create_task(self.connect())

    async def connect(self) -> None:
        loop = asyncio.get_running_loop()
        self.upstream, _ = await loop.create_unix_connection(
            lambda: Upstream(self.transport),
            self.socket_path,  # type: ignore[arg-type]
        )
        for data in self.pending:
            self.upstream.write(data)  # type: ignore[attr-defined]

    def data_received(self, data: bytes) -> None:
        if self.upstream is None:
            self.pending.append(data)
        else:
            self.upstream.write(data)  # type: ignore[attr-defined]

    def connection_lost(self, exc: Exception | None) -> None:
        if self.upstream is not None:
            self.upstream.close()


async def main(port: int, socket_path: str) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: Client(socket_path), "127.0.0.1", port)
    await server.serve_forever()


if __name__ == "__main__":
    uvloop.run(main(int(sys.argv[1]), sys.argv[2]))
