"""Dashboard users are PostgreSQL roles: a login is a connection to the upstream server as
that role (so ``pg_hba.conf``, SCRAM, md5 and trust decide, as for SQL clients), and the
pages read the catalog through connections as that role.

Sessions live in this process only: an unguessable id in an HttpOnly, SameSite=Strict
cookie, a CSRF token for the session's forms, and the role's password (kept to open a
connection as the role when a page needs one; never written anywhere). The connections
are the dashboard's, not the sessions': a bounded pool per role and in all
(:class:`Connections`), shared by the logins of a role, lent to one page at a time and
closed when idle. Failed logins are slowed down (:mod:`dashboard.throttle`).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import logging
import secrets
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from dashboard.throttle import Throttle
from proxy.relay.address import UpstreamAddress

log = logging.getLogger("pgml_proxy.dashboard")

SESSION_COOKIE = "pgml_session"
IDLE_SECONDS = 30 * 60
"""A session unused this long is ended."""
LIFETIME_SECONDS = 12 * 60 * 60
"""A session ends this long after its login, used or not."""
CONNECT_TIMEOUT = 10.0
CHECKED_LOGINS_SECONDS = 60.0
"""How long a role and password checked for ``/metrics`` (HTTP Basic) stay checked."""

FREE_SLOTS_SQL = (
    "SELECT current_setting('max_connections')::int"
    " - current_setting('superuser_reserved_connections')::int"
    " - coalesce(current_setting('reserved_connections', true)::int, 0)"
    " - (SELECT count(*)::int FROM pg_stat_activity WHERE backend_type = 'client backend'"
    "    OR (backend_type IS NULL AND usesysid IS NOT NULL))"
)
"""The server's connection slots that any role may still take: ``max_connections`` less
the slots reserved for superusers and for ``pg_use_reserved_connections`` (PostgreSQL 16),
less the client connections open now. A role without ``pg_read_all_stats`` sees no
``backend_type`` of other roles' processes: those of a role count too (the server's own
background processes have none)."""


@dataclass(frozen=True, slots=True)
class Limits:
    """The dashboard's caps (``--dashboard-connections`` and the flags after it)."""

    connections: int = 10
    per_role: int = 2
    idle_seconds: float = 60.0
    wait_seconds: float = 5.0
    login_delay: float = 1.0
    login_max_delay: float = 300.0


class LoginFailed(Exception):
    """The server refused the role and password (its message is logged, not shown)."""


class Unavailable(Exception):
    """No connection for a page in time: the dashboard's caps are reached, or the server
    has no connection slot left that any role may take."""


async def connect_as(
    upstream: UpstreamAddress, role: str, password: str, database: str, application_name: str
) -> Any:
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
            server_settings={"application_name": application_name},
        )
    except (asyncpg.InvalidAuthorizationSpecificationError, asyncpg.InvalidPasswordError) as exc:
        log.info("dashboard login as %r refused: %s", role, exc)
        raise LoginFailed(str(exc)) from exc


class RoleConnection:
    """One connection as a role to a database, lent to one page at a time (one query at
    a time within it). Rows as asyncpg gives them; ``run_sql`` as text, for
    :mod:`handlers.access`."""

    def __init__(self, connection: Any, role: str, database: str) -> None:
        self.connection = connection
        self.role = role
        self.database = database
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


class Connections:
    """The dashboard's connections as logged-in roles: at most ``per_role`` of a role (all
    databases together) and ``connections`` in all, each opened only while the server has
    a slot that any role may take (``free_slots``, asked first), lent to one page at a
    time and closed after ``idle_seconds`` unused. Logins of the same role share them."""

    def __init__(
        self,
        upstream: UpstreamAddress,
        limits: Limits,
        free_slots: Callable[[], Awaitable[int]],
        application_name: str,
    ) -> None:
        self.upstream = upstream
        self.limits = limits
        self.application_name = application_name
        self.free_slots = free_slots
        self.total = 0
        """Open, lent and being opened."""
        self._per_role: dict[str, int] = {}
        self._idle: list[RoleConnection] = []
        """Least recently used first."""
        self._changed = asyncio.Condition()
        self._opening = asyncio.Lock()
        self._closed = False

    async def acquire(
        self, role: str, password: str, database: str, *, fresh: bool = False
    ) -> RoleConnection:
        """A connection as ``role`` to ``database`` for one page, to :meth:`release` after:
        an idle one of the role's, else a new one (always a new one when ``fresh``: a
        login's password is checked so). Waits ``wait_seconds`` for room, then raises
        Unavailable; LoginFailed when the server refuses the role."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.limits.wait_seconds
        evicted: list[RoleConnection] = []
        try:
            async with self._changed:
                while True:
                    found = None if fresh else self._take(role, database)
                    if found is not None:
                        return found
                    if self._room(role, evicted):
                        break
                    left = deadline - loop.time()
                    if left <= 0:
                        raise Unavailable("the dashboard's connections are all in use")
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(left):
                            await self._changed.wait()
                self._per_role[role] = self._per_role.get(role, 0) + 1
                self.total += 1
        finally:
            for connection in evicted:
                await connection.close()
        try:
            return await self._open(role, password, database)
        except BaseException:
            async with self._changed:
                self._count_out(role)
            raise

    async def _open(self, role: str, password: str, database: str) -> RoleConnection:
        async with self._opening:  # one at a time: each is counted in the next one's check
            free = await self.free_slots()
            if free < 1:
                log.warning("dashboard: no connection slot left on the server for %r", role)
                raise Unavailable("the server has no connection slot left")
            connection = await connect_as(
                self.upstream, role, password, database, self.application_name
            )
        return RoleConnection(connection, role, database)

    def _take(self, role: str, database: str) -> RoleConnection | None:
        """The role's most recently used idle connection to ``database``, if any."""
        for connection in reversed(self._idle):
            if connection.role == role and connection.database == database:
                self._idle.remove(connection)
                if not connection.closed:
                    return connection
                self._count_out(role)
                return self._take(role, database)
        return None

    def _room(self, role: str, evicted: list[RoleConnection]) -> bool:
        """Whether one more connection of ``role`` fits, once idle connections (the role's
        own first, least recently used first) are moved to ``evicted`` to make room."""
        if self._per_role.get(role, 0) >= self.limits.per_role:
            own = next((c for c in self._idle if c.role == role), None)
            if own is None:
                return False
            self._evict(own, evicted)
        if self.total >= self.limits.connections:
            if not self._idle:
                return False
            self._evict(self._idle[0], evicted)
        return True

    def _evict(self, connection: RoleConnection, evicted: list[RoleConnection]) -> None:
        self._idle.remove(connection)
        self._count_out(connection.role)
        evicted.append(connection)

    def _count_out(self, role: str) -> None:
        """One connection of ``role`` is no longer counted (the lock is held)."""
        self.total -= 1
        self._per_role[role] -= 1
        if not self._per_role[role]:
            del self._per_role[role]
        self._changed.notify_all()

    async def release(self, connection: RoleConnection) -> None:
        """A page is done with ``connection``: it waits for the next page, or is closed."""
        async with self._changed:
            if connection.closed or self._closed:
                self._count_out(connection.role)
            else:
                connection.used = time.monotonic()
                self._idle.append(connection)
                self._changed.notify_all()
                return
        await connection.close()

    async def close_idle(self, role: str | None = None, idle_for: float = 0.0) -> None:
        """Close the idle connections (of ``role``, unused for ``idle_for`` seconds)."""
        now = time.monotonic()
        async with self._changed:
            closing = [
                c
                for c in self._idle
                if (role is None or c.role == role) and (now - c.used >= idle_for or c.closed)
            ]
            evicted: list[RoleConnection] = []
            for connection in closing:
                self._evict(connection, evicted)
        for connection in evicted:
            await connection.close()

    async def close(self) -> None:
        """Close the idle connections now, and lent ones when they come back."""
        self._closed = True
        await self.close_idle()


@dataclass
class Session:
    role: str
    password: str = field(repr=False)
    csrf: str = field(default_factory=lambda: secrets.token_urlsafe(32), repr=False)
    started: float = field(default_factory=time.monotonic)
    seen: float = field(default_factory=time.monotonic)

    def expired(self, now: float) -> bool:
        return now - self.seen > IDLE_SECONDS or now - self.started > LIFETIME_SECONDS

    def csrf_ok(self, token: str) -> bool:
        return hmac.compare_digest(self.csrf.encode(), token.encode())


class Logins:
    """The dashboard's sessions, by id, and its connections."""

    def __init__(
        self,
        upstream: UpstreamAddress,
        limits: Limits,
        free_slots: Callable[[], Awaitable[int]],
        application_name: str,
    ) -> None:
        self.limits = limits
        self.connections = Connections(upstream, limits, free_slots, application_name)
        self.throttle = Throttle(limits.login_delay, limits.login_max_delay)
        self.sessions: dict[str, Session] = {}
        self._checked: dict[bytes, float] = {}
        self._salt = secrets.token_bytes(16)
        self._reaper: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._reaper = asyncio.get_running_loop().create_task(self._reap())

    async def _verify(self, role: str, password: str, database: str, address: str) -> None:
        """Whether the server accepts the role and password, asked with a new connection
        (kept for the role's pages); LoginFailed if not, Throttled after failures."""
        self.throttle.begin(role, address)
        accepted: bool | None = None
        try:
            connection = await self.connections.acquire(role, password, database, fresh=True)
            accepted = True
        except LoginFailed:
            accepted = False
            raise
        finally:
            self.throttle.end(role, address, accepted)
        await self.connections.release(connection)

    async def log_in(
        self, role: str, password: str, database: str, address: str
    ) -> tuple[str, Session]:
        """A new session (and its id) for a role the server accepts; LoginFailed if not,
        Throttled while failed logins of the role from ``address`` must wait."""
        await self._verify(role, password, database, address)
        session = Session(role, password)
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
        """A connection as the session's role to ``database`` for one page (to release
        after). A login the server now refuses (password changed, role dropped) ends the
        session."""
        try:
            return await self.connections.acquire(session.role, session.password, database)
        except LoginFailed:
            await self.log_out(session)
            raise

    async def log_out(self, session: Session) -> None:
        """End the session; the role's idle connections close with its last session."""
        for key, value in list(self.sessions.items()):
            if value is session:
                del self.sessions[key]
        if all(other.role != session.role for other in self.sessions.values()):
            await self.connections.close_idle(session.role)

    async def check(self, role: str, password: str, database: str, address: str) -> bool:
        """Whether the server accepts the role and password (HTTP Basic on ``/metrics``);
        a success is remembered for a minute, so scrapes do not each log in."""
        key = hashlib.sha256(self._salt + f"{role}\0{password}\0{database}".encode()).digest()
        now = time.monotonic()
        if self._checked.get(key, 0.0) > now:
            return True
        try:
            await self._verify(role, password, database, address)
        except LoginFailed:
            return False
        self._checked = {k: v for k, v in self._checked.items() if v > now}
        self._checked[key] = now + CHECKED_LOGINS_SECONDS
        return True

    async def _reap(self) -> None:
        """End expired sessions and close idle connections, a few times per idle time."""
        period = min(30.0, max(0.2, self.limits.idle_seconds / 4))
        while True:
            await asyncio.sleep(period)
            now = time.monotonic()
            for session in list(self.sessions.values()):
                if session.expired(now):
                    await self.log_out(session)
            await self.connections.close_idle(idle_for=self.limits.idle_seconds)

    async def close(self) -> None:
        if self._reaper is not None:
            self._reaper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reaper
            self._reaper = None
        self.sessions.clear()
        await self.connections.close()
