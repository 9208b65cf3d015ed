"""Dashboard users are PostgreSQL roles: a login is a connection to the upstream server as
that role (so ``pg_hba.conf``, SCRAM, md5 and trust decide, as for SQL clients), and the
pages read the catalog through connections as that role.

Sessions live in this process only: an unguessable id in an HttpOnly, SameSite=Strict
cookie, a CSRF token for the session's forms, the role's password (kept to reopen a
connection that was closed for idleness or another database; never written anywhere),
and the open connections, closed when idle, on logout and on expiry.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import logging
import secrets
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from proxy.relay.address import UpstreamAddress

log = logging.getLogger("pgml_proxy.dashboard")

SESSION_COOKIE = "pgml_session"
IDLE_SECONDS = 30 * 60
"""A session unused this long is ended."""
LIFETIME_SECONDS = 12 * 60 * 60
"""A session ends this long after its login, used or not."""
CONNECTION_IDLE_SECONDS = 5 * 60
"""A role connection unused this long is closed (reopened when a page needs it)."""
CONNECT_TIMEOUT = 10.0
CHECKED_LOGINS_SECONDS = 60.0
"""How long a role and password checked for ``/metrics`` (HTTP Basic) stay checked."""


class LoginFailed(Exception):
    """The server refused the role and password (its message is logged, not shown)."""


async def connect_as(upstream: UpstreamAddress, role: str, password: str, database: str) -> Any:
    """An asyncpg connection to the upstream server as ``role``; LoginFailed if refused."""
    import asyncpg

    ssl: Any = False
    if upstream.is_unix or upstream.sslmode == "disable":
        pass
    elif upstream.sslmode in ("verify-ca", "verify-full"):
        ssl = upstream.tls_context()
    else:
        ssl = {"allow": "allow", "prefer": "prefer"}.get(upstream.sslmode, "require")
    try:
        return await asyncpg.connect(
            host=upstream.host,
            port=upstream.port,
            user=role,
            password=password or None,
            database=database,
            ssl=ssl,
            timeout=CONNECT_TIMEOUT,
            server_settings={"application_name": "pgml-proxy dashboard"},
        )
    except (asyncpg.InvalidAuthorizationSpecificationError, asyncpg.InvalidPasswordError) as exc:
        log.info("dashboard login as %r refused: %s", role, exc)
        raise LoginFailed(str(exc)) from exc


class RoleConnection:
    """One connection as the logged-in role; one query at a time (requests of a session
    may run at once). Rows as asyncpg gives them; ``run_sql`` as text, for
    :mod:`handlers.access`."""

    def __init__(self, connection: Any) -> None:
        self.connection = connection
        self.lock = asyncio.Lock()
        self.used = time.monotonic()

    async def fetch(self, sql: str, *args: Any) -> list[Any]:
        import asyncpg

        async with self.lock:
            self.used = time.monotonic()
            try:
                return list(await self.connection.fetch(sql, *args))
            except asyncpg.PostgresError:
                raise  # the server's error: the connection is still good
            except BaseException:  # cut off (a page's timeout) or broken: open a new one next
                self.connection.terminate()
                raise

    async def fetchrow(self, sql: str, *args: Any) -> Any:
        rows = await self.fetch(sql, *args)
        return rows[0] if rows else None

    async def run_sql(self, sql: str, params: Sequence[str | None] = ()) -> list[list[Any]]:
        rows = await self.fetch(sql, *params)
        return [[None if v is None else str(v) for v in row] for row in rows]

    @property
    def closed(self) -> bool:
        return bool(self.connection.is_closed())

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.connection.close(), 5)


@dataclass
class Session:
    role: str
    password: str = field(repr=False)
    csrf: str = field(default_factory=lambda: secrets.token_urlsafe(32), repr=False)
    started: float = field(default_factory=time.monotonic)
    seen: float = field(default_factory=time.monotonic)
    connections: dict[str, RoleConnection] = field(default_factory=dict)

    def expired(self, now: float) -> bool:
        return now - self.seen > IDLE_SECONDS or now - self.started > LIFETIME_SECONDS

    def csrf_ok(self, token: str) -> bool:
        return hmac.compare_digest(self.csrf.encode(), token.encode())

    async def close(self) -> None:
        connections, self.connections = list(self.connections.values()), {}
        for connection in connections:
            await connection.close()


class Logins:
    """The dashboard's sessions, by id."""

    def __init__(self, upstream: UpstreamAddress) -> None:
        self.upstream = upstream
        self.sessions: dict[str, Session] = {}
        self._checked: dict[bytes, float] = {}
        self._salt = secrets.token_bytes(16)
        self._reaper: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._reaper = asyncio.get_running_loop().create_task(self._reap())

    async def log_in(self, role: str, password: str, database: str) -> tuple[str, Session]:
        """A new session (and its id) for a role the server accepts; LoginFailed if not."""
        connection = await connect_as(self.upstream, role, password, database)
        session = Session(role, password)
        session.connections[database] = RoleConnection(connection)
        session_id = secrets.token_urlsafe(32)
        self.sessions[session_id] = session
        log.info("dashboard login as %r", role)
        return session_id, session

    def session(self, session_id: str | None) -> Session | None:
        """The live session of a cookie's id, marked used; None when there is none."""
        session = self.sessions.get(session_id or "")
        now = time.monotonic()
        if session is None or session.expired(now):
            return None
        session.seen = now
        return session

    async def connection(self, session: Session, database: str) -> RoleConnection:
        """The session's connection to ``database``, opened (again) when needed. A login
        the server now refuses (password changed, role dropped) ends the session."""
        found = session.connections.get(database)
        if found is not None and not found.closed:
            return found
        try:
            opened = RoleConnection(
                await connect_as(self.upstream, session.role, session.password, database)
            )
        except LoginFailed:
            await self.log_out(session)
            raise
        if session not in self.sessions.values():  # logged out meanwhile
            await opened.close()
            raise LoginFailed("the session ended")
        session.connections[database] = opened
        return opened

    async def log_out(self, session: Session) -> None:
        for key, value in list(self.sessions.items()):
            if value is session:
                del self.sessions[key]
        await session.close()

    async def check(self, role: str, password: str, database: str) -> bool:
        """Whether the server accepts the role and password (HTTP Basic on ``/metrics``);
        a success is remembered for a minute, so scrapes do not each log in."""
        key = hashlib.sha256(self._salt + f"{role}\0{password}\0{database}".encode()).digest()
        now = time.monotonic()
        if self._checked.get(key, 0.0) > now:
            return True
        try:
            connection = await connect_as(self.upstream, role, password, database)
        except LoginFailed:
            return False
        await RoleConnection(connection).close()
        self._checked = {k: v for k, v in self._checked.items() if v > now}
        self._checked[key] = now + CHECKED_LOGINS_SECONDS
        return True

    async def _reap(self) -> None:
        """End expired sessions and close idle connections, every half minute."""
        while True:
            await asyncio.sleep(30)
            now = time.monotonic()
            for session in list(self.sessions.values()):
                if session.expired(now):
                    await self.log_out(session)
                    continue
                for database, connection in list(session.connections.items()):
                    idle = now - connection.used > CONNECTION_IDLE_SECONDS
                    if (idle and not connection.lock.locked()) or connection.closed:
                        del session.connections[database]
                        await connection.close()

    async def close(self) -> None:
        if self._reaper is not None:
            self._reaper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reaper
            self._reaper = None
        for session in list(self.sessions.values()):
            await self.log_out(session)
