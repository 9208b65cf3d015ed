"""Evaluates the pgml calls of one statement in the client's own upstream session.

Everything runs in-band, as the client's role, inside its transaction: PostgreSQL
checks the user's privileges and sees the transaction's own rows and temp tables.  All
requests go with Flush, never Sync, so the client's implicit transaction and error state
stay PostgreSQL's own.  :meth:`Execution.evaluate` returns the statement PostgreSQL runs
in the place of the client's.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import math
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Hashable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from sqlglot import exp

from handlers.functions import (
    HOLD_CLASS,
    Args,
    CallContext,
    Overload,
    PgmlError,
    Services,
    from_server,
    project_result_type,
    unsupported,
)
from proxy import logs, metrics
from proxy.engine import analysis, binding, inline, lateral, values
from proxy.engine.calls import CallSite
from proxy.engine.carried import may_create_temp_tables, run_carried
from proxy.engine.constants import Known, evaluate_constant
from proxy.engine.inline import Inline
from proxy.engine.labels import label_types
from proxy.engine.planner import (
    Parsed,
    by_size,
    nesting,
    off_loop,
    parse,
    skeleton,
)
from proxy.engine.rows import run_step
from proxy.engine.scopes import ScopeStep
from proxy.engine.sourcetext import SourceText, Span
from proxy.engine.split import plan_scope
from proxy.engine.streams import LiveRows
from proxy.engine.upstream import (
    ERRORS,
    CopyIn,
    CopyOut,
    Reply,
    Result,
    ServerError,
    Skipped,
    Upstream,
)
from proxy.engine.withqueries import carry_with_queries
from proxy.wire import codec, encoding
from proxy.wire.replies import ends_session

log = logging.getLogger("pgml_proxy.executor")

T = TypeVar("T")

CANCELLED = PgmlError("57014", "canceling statement due to user request")

_NAMES = itertools.count(1)
"""Temporary tables and portals are numbered process-wide: a session may hold several
statements' at once (open cursors and portals)."""

_TYPED_LITERALS = {"jsonb": 3802, "json": 114, "text": 25}


@dataclass
class BoundParams:
    """The client's own parameters of an extended-protocol statement."""

    values: list[bytes | None] = field(default_factory=list)
    formats: list[int] = field(default_factory=list)
    oids: list[int] = field(default_factory=list)


_SLICE = 32
"""Constant calls evaluated between two turns of the event loop."""

HOLD_AFTER = 0.05
"""Seconds of a handler's work after which the client's backend is held in a statement."""
_HOLD_SQL = (
    "SELECT set_config('lock_timeout', '0', true), "
    f"pg_advisory_lock({HOLD_CLASS}, $1::int), pg_advisory_unlock({HOLD_CLASS}, $1::int), "
    "set_config('lock_timeout', $2, true)"
)
"""The client's backend waits for a lock the proxy holds (see :mod:`handlers.holds`),
whatever its ``lock_timeout``, which it has again afterwards."""
HOLD_SECONDS = (0.005, 0.1)
"""Where the proxy cannot hold a lock: the shortest and longest ``pg_sleep`` the backend
waits in instead, one after another, each a fiftieth of the time the handler has worked
so far (a cancel that reaches the backend between two of them is dropped)."""
_GRACE = 10.0
"""Seconds a handler has to stop by itself (recording why) once its statement is stopped."""
_TICK = 0.05
"""Seconds between two looks at the statement's deadline while a handler works."""
_SETTINGS_SQL = (
    "SELECT setting, current_setting('lock_timeout') FROM pg_settings "
    "WHERE name = 'statement_timeout'"
)
STATEMENT_TIMEOUT = PgmlError("57014", "canceling statement due to statement timeout")


@dataclass
class _Hold:
    """A statement the client's backend waits in while a handler works."""

    reply: Reply
    ended: asyncio.Future[None]
    key: int | None = None
    """The proxy's lock it waits for, until let go of; ``None``: a sleep."""


class Execution:
    """The evaluation of one statement's pgml calls: a Query's statement, or an
    extended-protocol portal.  It is also the handlers' :class:`SessionSQL`."""

    def __init__(
        self,
        upstream: Upstream,
        services: Services,
        *,
        database: str,
        cancelled: Callable[[], bool],
        caller: str = "",
        params: BoundParams | None = None,
        label_types: dict[str, str] | None = None,
        helper: str = "",
        drop_at_commit: bool = False,
        confirmed: set[Hashable] | None = None,
    ) -> None:
        self.upstream = upstream
        self.services = services
        self.database = database
        self.cancelled = cancelled
        self.caller = caller
        self.user = params or BoundParams()
        self.label_types = label_types
        """Result types of project-typed calls fixed when the statement was described
        (extended protocol); ``None``: looked up when the call runs."""
        self.helper = helper
        """The prepared statement name helper SQL uses ("" where the unnamed one is free)."""
        self.drop_at_commit = drop_at_commit
        """Temporary tables go at the end of the transaction, not after the statement."""
        self.temp_tables: list[str] = []
        self.params_own: list[bytes | None] = []
        self.values: dict[int, Known] = {}
        """Results of constant calls evaluated so far, by call node: arguments of others."""
        self.with_queries = ""
        """The WITH clause of the statement's WITH queries that constant calls' arguments
        read, as their carried rows (see :mod:`proxy.engine.withqueries`)."""
        self.confirmed = set() if confirmed is None else confirmed
        """The session's checks that have passed once (see :meth:`check`)."""
        self.may_stream = False
        """Whether a streaming set-returning call may send its rows as they come (the
        statement's result is its rows: see :mod:`proxy.engine.streams`)."""
        self.live: LiveRows | None = None
        """That call's rows, while they are produced; the statement has none of them."""
        self.may_inline = False
        """Whether select-list calls may be evaluated on the statement's rows as they
        stream (the client reads the whole result now: see :mod:`proxy.engine.inline`)."""
        self.inline: Inline | None = None
        """That statement, when it is one: :meth:`evaluate` returned its text."""
        self._copying = False
        """A COPY of a handler's is under way: no other request may go meanwhile."""
        self.stopped: Exception | None = None
        """Why the statement was stopped while a handler worked (its handler sees it as a
        cancel)."""
        self.started = time.monotonic()
        self.deadline: float | None = None
        """When ``statement_timeout`` ends the statement; read when first needed."""
        self._lock_timeout: bytes | None = b"0"
        """The session's ``lock_timeout``, read with the deadline."""
        self._hold: _Hold | None = None
        """The statement the backend waits in while a handler works."""
        self.may_write: bool | None = None
        """Whether the session may create temporary tables (read when first needed): else
        a materialised scope's rows are carried through the proxy (:mod:`.carried`)."""

    @property
    def context(self) -> CallContext:
        return CallContext(self.services, self, self.database, self._stopping, self.caller)

    def _stopping(self) -> bool:
        return self.stopped is not None or self.cancelled()

    def check_cancel(self) -> None:
        if self.cancelled():
            raise CANCELLED

    async def invoke(self, overload: Overload, batch: Sequence[Args]) -> list[Any]:
        """The handler over ``batch``: the one way a call runs.

        Past :data:`HOLD_AFTER` the client's backend waits in a statement until the
        handler is done, so ``pg_cancel_backend`` and a client's cancel stop the work
        with PostgreSQL's own error, and ``pg_stat_activity`` shows the statement active.
        PostgreSQL times each such statement afresh, so the session's
        ``statement_timeout`` is read then and kept by the proxy, with PostgreSQL's error.
        """
        work = asyncio.ensure_future(overload.handler(self.context, batch))
        began = time.monotonic()
        holding = True
        failure: Exception | None = None
        try:
            await asyncio.wait([work], timeout=HOLD_AFTER)
            while not work.done() and failure is None:
                if self.deadline is None and not self._copying:
                    self.deadline = await self._settings()
                if self.deadline is not None and time.monotonic() > self.deadline:
                    failure = STATEMENT_TIMEOUT
                    break
                if holding and self._hold is None and not self._copying and not work.done():
                    await self._hold_backend(time.monotonic() - began)
                hold = self._hold
                waiting: list[asyncio.Future[Any]] = [work] if hold is None else [work, hold.ended]
                await asyncio.wait(waiting, timeout=_TICK, return_when="FIRST_COMPLETED")
                if hold is not None and hold.reply.done:
                    self._end_hold()
                    try:
                        await hold.reply
                    except ServerError as error:  # a cancel, or the backend's own end
                        failure = error
                    except Skipped:  # a request of the handler's failed: it will say so
                        holding = False
            if failure is None:
                hold = self._end_hold()
                if hold is not None:
                    with contextlib.suppress(Skipped):
                        await hold.reply
                return _result(work)
            self.stopped = failure  # the handler stops by itself, as for a client's cancel
            if not (isinstance(failure, ServerError) and ends_session(failure.message.raw)):
                await asyncio.wait([work], timeout=_GRACE)
            raise failure
        finally:
            self._end_hold()
            if not work.done():
                work.cancel()
                with contextlib.suppress(BaseException):
                    await work
            elif not work.cancelled():
                work.exception()  # retrieved: it failed as the statement was given up

    async def _settings(self) -> float:
        """When the statement times out (``inf``: never), by its ``statement_timeout``;
        the session's ``lock_timeout`` is kept for the hold statements."""
        result = await self.select(_SETTINGS_SQL, [])
        milliseconds = int(values.text(result.rows[0][0]))
        self._lock_timeout = result.rows[0][1]
        return self.started + milliseconds / 1000 if milliseconds > 0 else math.inf

    async def _hold_backend(self, worked: float) -> None:
        """Send the statement the backend waits in: for a lock of the proxy's while it
        can take one, else a sleep of a fiftieth of ``worked``."""
        holds = self.services.holds
        key = None if holds is None else await holds.take(self.database)
        if self._copying:  # began meanwhile: nothing else may go until it ends
            if holds is not None and key is not None:
                holds.release(self.database, key)
            return
        if key is None:
            shortest, longest = HOLD_SECONDS
            seconds = min(max(worked / 50, shortest), longest)
            reply = self._send(f"SELECT pg_sleep({seconds:.3f})", [])
        else:
            reply = self._send(_HOLD_SQL, [str(key).encode(), self._lock_timeout])
        self.upstream.flush()
        self._hold = _Hold(reply, reply.ended(), key)

    def _end_hold(self) -> _Hold | None:
        """The backend's hold ends (it goes on to what follows it); the hold, if any."""
        hold, self._hold = self._hold, None
        if hold is not None:
            self._let_go(hold)
        return hold

    def _let_go(self, hold: _Hold) -> None:
        if hold.key is not None and self.services.holds is not None:
            self.services.holds.release(self.database, hold.key)
            hold.key = None

    # --- the statement's parameters --------------------------------------------------

    def param_oids(self) -> list[int]:
        return self.user.oids + [values.TEXT_OID] * len(self.params_own)

    def param_values(self) -> list[bytes | None]:
        return self.user.values + self.params_own

    def param_formats(self) -> list[int]:
        return self.user.formats + [0] * len(self.params_own)

    def add_param(self, value: str | None) -> str:
        """A parameter of the proxy's own, numbered after the client's."""
        self.params_own.append(None if value is None else values.client_bytes(value))
        return f"${len(self.user.values) + len(self.params_own)}"

    # --- SQL of the proxy's own, in the client's session --------------------------------

    def request(self, sql: str, own: Sequence[bytes | None] | None = None) -> Reply:
        """Buffer one helper statement (sent with the next flush).  Its ``$n`` are the
        statement's parameters, or ``own`` (text values) when given.  A hold the backend
        waits in ends, so that the statement runs next."""
        if self._hold is not None:
            self._let_go(self._hold)
        return self._send(sql, own)

    def _send(self, sql: str, own: Sequence[bytes | None] | None) -> Reply:
        if own is None:
            params, oids, formats = self.param_values(), self.param_oids(), self.param_formats()
        else:
            params, oids, formats = list(own), [values.TEXT_OID] * len(own), []
        return self.upstream.statement(sql, params, oids, formats, name=self.helper)

    async def select(self, sql: str, own: Sequence[bytes | None] | None = None) -> Result:
        reply = self.request(sql, own)
        self.upstream.flush()
        return await reply

    async def check(self, sql: str, params: Sequence[str | None], key: Hashable) -> None:
        """A statement that raises when the caller may not go on.  The first time ``key``
        is checked in the session it runs now; after that it goes with the next statement
        sent, so it costs no round trip of its own, and an error of it is the client's
        statement's before any result of it reaches the client."""
        own = [None if p is None else p.encode(encoding.current()) for p in params]
        if key not in self.confirmed:
            await self.select(sql, own)
            self.confirmed.add(key)
            return
        reply = self.upstream.statement(
            sql, own, [values.TEXT_OID] * len(own), name=self.helper, forward=ERRORS
        )
        reply.on_failure(lambda: self.confirmed.discard(key))

    async def streams_rows(self) -> bool:
        """Whether the call may stream: the statement allows it and the client reads
        UTF-8, the text the proxy writes."""
        if not self.may_stream:
            return False
        self.may_stream = False  # one call
        result = await self.select(
            "SELECT current_setting('client_encoding'), current_setting('server_encoding')", []
        )
        client, server = (values.text(v) for v in result.rows[0])
        return client == "UTF8" and server in ("UTF8", "SQL_ASCII")

    def abandon(self) -> None:
        """The statement will not run: a streaming call stops."""
        if self.live is not None:
            self.live.stop()

    async def run_sql(self, sql: str, params: Sequence[str | None] = ()) -> list[list[Any]]:
        text = encoding.current()
        result = await self.select(sql, [None if p is None else p.encode(text) for p in params])
        return [[None if v is None else v.decode(text) for v in row] for row in result.rows]

    async def notice(self, message: str) -> None:
        self.upstream.notice(codec.PgError("NOTICE", "00000", message).encode(b"N"))

    async def copy_in(self, sql: str, chunks: AsyncIterator[bytes]) -> int:
        """``COPY ... FROM STDIN`` fed with ``chunks`` as fast as the server takes them.
        An error stops the copy (CopyFail) and is raised."""
        with self._copy():
            return await self._copy_in(sql, chunks)

    @contextlib.contextmanager
    def _copy(self) -> Iterator[None]:
        if self._hold is not None:
            self._let_go(self._hold)
        self._copying = True
        try:
            yield
        finally:
            self._copying = False

    async def _copy_in(self, sql: str, chunks: AsyncIterator[bytes]) -> int:
        upstream = self.upstream
        upstream.parse(self.helper, sql)
        upstream.bind(self.helper, self.helper)
        reply = upstream.execute(self.helper, reply=CopyIn())
        upstream.flush()
        assert isinstance(reply, CopyIn)
        await reply.started.wait()
        if reply.done:
            await reply
        try:
            async for chunk in chunks:
                if reply.done:
                    break
                upstream.write_raw(codec.copy_data(chunk))
                await upstream.writable()
        except BaseException as error:
            upstream.write_raw(codec.copy_fail(f"load stopped: {type(error).__name__}"))
            upstream.flush()
            with contextlib.suppress(ServerError, Skipped):
                await reply
            raise
        upstream.write_raw(codec.COPY_DONE)
        if self.helper:
            upstream.close(b"S", self.helper)
        upstream.flush()
        result = await reply
        return int(result.tag.rsplit(" ", 1)[-1])

    async def copy_out(self, sql: str) -> AsyncIterator[bytes]:
        """``COPY ... TO STDOUT``: each CopyData payload as it arrives, read from the
        server as fast as the caller takes them.  Stopping early leaves the rest to the
        reply queue, which drops it."""
        upstream = self.upstream
        reply = CopyOut(upstream.pause_reading)
        with self._copy():
            upstream.parse(self.helper, sql)
            upstream.bind(self.helper, self.helper)
            upstream.execute(self.helper, reply=reply)
            if self.helper:
                upstream.close(b"S", self.helper)
            upstream.flush()
            try:
                while (chunk := await reply.next()) is not None:
                    yield chunk
            finally:
                reply.abandon()
            await reply

    # --- evaluating ------------------------------------------------------------------------

    async def evaluate(self, parsed: Parsed) -> str:
        """Evaluate every call; return the statement PostgreSQL runs instead."""
        if self.services.service is not None:  # the catalog exists from the first call on
            await self.services.ensure_catalog(self.database)
        self.drop_at_commit = self.drop_at_commit or parsed.declares_cursor
        if parsed.explain:  # the plan of the statement PostgreSQL runs in the client's
            self.may_inline = self.may_stream = False
        if not parsed.runs:  # planned, not run (EXPLAIN, WITH NO DATA): no model runs
            user_oids = self.user.oids
            return await off_loop(skeleton, parsed, user_oids, self.label_types or {})
        over_items = next((c for c in parsed.calls if c.lateral), None)
        if over_items is not None:  # read in a select list first, then evaluated so
            statement = await lateral.rewrite(self, parsed, over_items)
            rewritten = await parse(parsed.explain + parsed.prefix + statement)
            assert rewritten is not None
            return await self.evaluate(rewritten)
        text = SourceText(parsed.text)
        constants = [c for c in parsed.calls if not c.per_row]
        read = {name for call in constants for name in call.reads_with}
        if read:
            if len(constants) < len(parsed.calls):
                raise unsupported(
                    "pgml functions in FROM cannot read the statement's WITH queries in an "
                    "argument beside calls that read columns",
                    hint="Read the table in the argument itself, or call it in the select list.",
                )
            self.with_queries = await carry_with_queries(self, parsed, text, read)
        for count, call in enumerate(sorted(constants, key=lambda c: -nesting(c))):
            if count % _SLICE == _SLICE - 1:
                await asyncio.sleep(0)  # many calls: let the other sessions in between
            await self._timed(call, evaluate_constant(self, text, call))
        statement = await by_size(len(text.text), text.render)
        current: Parsed | None = parsed
        if constants:  # nothing is left to evaluate unless some call reads columns
            current = await parse(statement) if len(constants) < len(parsed.calls) else None
        analysed = False
        while current is not None and current.calls:
            step = await off_loop(_next_step, current)
            if self.may_inline and inline.fits(current, step):
                self.inline = await inline.plan(self, current, step)
                if self.inline is not None:
                    return self.inline.statement
            if not analysed and _evaluable_per_row(parsed):
                # before any scope is materialised: PostgreSQL's refusals, in its words
                labels = self.label_types
                if labels is None:
                    labels = await label_types(self, parsed, self.helper)
                await analysis.describe(self.upstream, parsed, self.user.oids, labels)
            analysed = True
            if self.may_write is None:
                self.may_write = await may_create_temp_tables(self, parsed)
            run = run_step if self.may_write else run_carried
            outer = await self._timed(step.calls[0], run(self, current, step))
            statement = await by_size(len(statement), _replaced, statement, step.span, outer)
            current = await parse(statement)
        return await by_size(len(statement), str.__add__, parsed.explain + parsed.prefix, statement)

    async def _timed(self, call: CallSite, work: Awaitable[T]) -> T:
        started = time.perf_counter()
        ok = False
        try:
            with logs.context(function=call.sql_name):
                result = await work
                log.debug("evaluated in %.1f ms", (time.perf_counter() - started) * 1000)
            ok = True
            return result
        finally:
            metrics.record_call(call.sql_name, ok, time.perf_counter() - started)

    async def result_type(self, call: CallSite, overload: Overload, args: Args) -> str:
        """The call's SQL result type; a project-typed call's is its project's."""
        if not binding.typed_by_project(call, overload):
            return overload.returns
        project = args[0]
        if self.label_types is not None or project is None:
            label = (self.label_types or {}).get(str(project), "text")
        else:
            label = await project_result_type(self.services, self.database, str(project))
        return binding.result_type(overload, label)

    async def drop_temp_tables(self) -> Reply | None:
        """Drop the statement's temporary tables unless they go at commit; the reply
        (sent with the next flush), or None."""
        if not self.temp_tables or self.drop_at_commit:
            return None
        reply = self.request("DROP TABLE " + ", ".join(self.temp_tables), [])
        self.temp_tables = []
        return reply


def _evaluable_per_row(parsed: Parsed) -> bool:
    """Whether every call that reads columns has an overload that may and returns one
    value (a set-returning one is refused with the reason, or its rows' record typed,
    when its scope is resolved, not analysed first)."""
    return all(
        any(o.row_dependent_ok and not o.set_returning for o in call.function.overloads)
        for call in parsed.calls
        if call.per_row
    )


def _result(work: asyncio.Future[list[Any]]) -> list[Any]:
    """A handler's results; PostgreSQL's error on the proxy's own connection is raised
    as the statement's."""
    try:
        return work.result()
    except PgmlError:
        raise
    except Exception as error:
        found = from_server(error)
        if found is None:
            raise
        raise found from error


def _replaced(text: str, span: Span, replacement: str) -> str:
    return text[: span[0]] + replacement + text[span[1] :]


def _next_step(parsed: Parsed) -> ScopeStep:
    """The scope to evaluate next: the most deeply nested one with calls whose arguments
    hold no other call; all of its such calls together."""
    calls = list(parsed.calls)
    ready = [c for c in calls if not any(_inside(o, c) for o in calls if o is not c)]
    deepest = max(ready, key=lambda c: len(_ancestry(c.scope)))
    scope = deepest.scope
    assert scope is not None
    chosen = [c for c in ready if c.scope is scope]
    return plan_scope(parsed.sql, scope, chosen)


def _inside(other: CallSite, call: CallSite) -> bool:
    """Whether ``other`` stands inside one of ``call``'s arguments."""
    return any(any(n is other.node for n in arg.walk()) for arg in call.args)


def _ancestry(node: exp.Expr | None) -> list[exp.Expr]:
    found = []
    while node is not None:
        found.append(node)
        node = node.parent
    return found
