"""Where the real PostgreSQL is: parsing the ``--upstream`` connection string."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import parse_qs, unquote, urlsplit


@dataclass(frozen=True, slots=True)
class UpstreamAddress:
    """The socket the proxy relays each client to, plus the service credentials.

    Client sessions use only the socket: each client authenticates upstream with its
    own user, password and database.  ``user``, ``password`` and ``database`` are the
    proxy's own service connection (catalog writes, dashboard).
    """

    host: str
    port: int
    user: str | None = None
    password: str | None = None
    database: str | None = None

    @property
    def is_unix(self) -> bool:
        return self.host.startswith("/")

    @property
    def socket_path(self) -> str:
        return os.path.join(self.host, f".s.PGSQL.{self.port}")

    def describe(self) -> str:
        return self.socket_path if self.is_unix else f"{self.host}:{self.port}"

    async def open(
        self, protocol_factory: Callable[[], asyncio.Protocol]
    ) -> tuple[asyncio.Transport, asyncio.Protocol]:
        """Open a connection to the server with the given protocol."""
        loop = asyncio.get_running_loop()
        if self.is_unix:
            transport, protocol = await loop.create_unix_connection(
                protocol_factory, self.socket_path
            )
        else:
            transport, protocol = await loop.create_connection(
                protocol_factory, self.host, self.port
            )
        return transport, protocol


def parse_upstream(dsn: str) -> UpstreamAddress:
    """Parse a ``postgresql://`` URI or a ``key=value`` conninfo string.

    Follows libpq: a host that starts with ``/`` is a Unix-socket directory, and
    ``host``/``port`` may also come as query parameters.
    """
    if "://" in dsn:
        return _parse_uri(dsn)
    return _parse_keywords(dsn)


def _parse_uri(dsn: str) -> UpstreamAddress:
    parts = urlsplit(dsn)
    if parts.scheme not in ("postgresql", "postgres"):
        raise ValueError(f"unsupported upstream scheme {parts.scheme!r}: use postgresql://")
    query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
    host_text = parts.netloc.rpartition("@")[2]
    encoded_path = host_text.lower().startswith("%2f")
    host = unquote(host_text.partition(":")[0]) if encoded_path else parts.hostname
    return UpstreamAddress(
        host=query.get("host") or host or "localhost",
        port=int(query.get("port") or (None if encoded_path else parts.port) or 5432),
        user=unquote(parts.username) if parts.username else query.get("user"),
        password=unquote(parts.password) if parts.password else query.get("password"),
        database=unquote(parts.path.lstrip("/")) or query.get("dbname"),
    )


def _parse_keywords(dsn: str) -> UpstreamAddress:
    fields: dict[str, str] = {}
    for word in dsn.split():
        key, sep, value = word.partition("=")
        if not sep:
            raise ValueError(f"invalid upstream connection string near {word!r}")
        fields[key] = value.strip("'")
    return UpstreamAddress(
        host=fields.get("host", "localhost"),
        port=int(fields.get("port", 5432)),
        user=fields.get("user"),
        password=fields.get("password"),
        database=fields.get("dbname"),
    )
