"""Where the real PostgreSQL is: parsing the ``--upstream`` connection string."""

from __future__ import annotations

import asyncio
import os
import ssl
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
    sslmode: str = "disable"
    """libpq's ``sslmode``: disable, allow and prefer (TLS when the server offers it),
    require, verify-ca and verify-full (TLS or no connection)."""
    sslrootcert: str | None = None

    @property
    def is_unix(self) -> bool:
        return self.host.startswith("/")

    @property
    def socket_path(self) -> str:
        return os.path.join(self.host, f".s.PGSQL.{self.port}")

    def describe(self) -> str:
        return self.socket_path if self.is_unix else f"{self.host}:{self.port}"

    @property
    def uses_tls(self) -> bool:
        return not self.is_unix and self.sslmode not in ("disable", "allow")

    async def open(
        self, protocol_factory: Callable[[], asyncio.Protocol], *, tls: bool = True
    ) -> tuple[asyncio.Transport, asyncio.Protocol]:
        """Open a connection to the server with the given protocol, with TLS first when
        ``sslmode`` asks for it (``tls=False``: plain, as cancel requests may go)."""
        loop = asyncio.get_running_loop()
        if self.is_unix:
            transport, protocol = await loop.create_unix_connection(
                protocol_factory, self.socket_path
            )
            return transport, protocol
        if not (tls and self.uses_tls):
            transport, protocol = await loop.create_connection(
                protocol_factory, self.host, self.port
            )
            return transport, protocol
        transport, probe = await loop.create_connection(_FirstByte, self.host, self.port)
        transport.write(SSL_REQUEST)
        answer = await probe.answer
        if answer == b"S":
            secured = await loop.start_tls(
                transport, probe, self.tls_context(), server_hostname=self.host
            )
            assert secured is not None
            transport = secured
        elif self.sslmode != "prefer":
            transport.close()
            raise ConnectionRefusedError(0, "the server does not support SSL (sslmode=require)")
        protocol = protocol_factory()
        transport.set_protocol(protocol)
        protocol.connection_made(transport)
        return transport, protocol

    def tls_context(self) -> ssl.SSLContext:
        """Certificates are checked only for verify-ca and verify-full, as libpq does."""
        context = ssl.create_default_context(cafile=self.sslrootcert)
        if self.sslmode != "verify-full":
            context.check_hostname = False
        if self.sslmode not in ("verify-ca", "verify-full"):
            context.verify_mode = ssl.CERT_NONE
        return context


SSL_REQUEST = (8).to_bytes(4, "big") + (80877103).to_bytes(4, "big")


class _FirstByte(asyncio.Protocol):
    """Reads the server's one-byte answer to an SSLRequest."""

    def __init__(self) -> None:
        self.answer: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()

    def data_received(self, data: bytes) -> None:
        if not self.answer.done():
            self.answer.set_result(data[:1])

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.answer.done():
            self.answer.set_exception(exc or ConnectionResetError("the server closed"))


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
        sslmode=_sslmode(query.get("sslmode")),
        sslrootcert=query.get("sslrootcert"),
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
        sslmode=_sslmode(fields.get("sslmode")),
        sslrootcert=fields.get("sslrootcert"),
    )


_SSLMODES = ("disable", "allow", "prefer", "require", "verify-ca", "verify-full")


def _sslmode(value: str | None) -> str:
    """The upstream's sslmode; without one, the proxy does not ask for TLS."""
    if value is None:
        return "disable"
    if value not in _SSLMODES:
        raise ValueError(f"invalid sslmode {value!r}: use one of {', '.join(_SSLMODES)}")
    return value
