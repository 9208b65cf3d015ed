"""Evaluates the pgml calls of one statement in the client's own upstream session
(:mod:`proxy.engine.sessionsql`): PostgreSQL checks the user's privileges and sees the
transaction's own rows and temp tables.  :meth:`Execution.evaluate` returns the statement
PostgreSQL runs in the place of the client's; :meth:`Execution.invoke` is the one way a
handler runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Hashable, Sequence
from typing import Any, TypeVar

from sqlglot import exp

from handlers.functions import (
    Args,
    CallContext,
    Overload,
    PgmlError,
    Services,
    from_server,
    unsupported,
)
from proxy import logs, metrics
from proxy.engine import analysis, inline, lateral, values
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
from proxy.engine.sessionsql import BoundParams, SessionSQL
from proxy.engine.sourcetext import SourceText, Span
from proxy.engine.split import plan_scope
from proxy.engine.streams import LiveRows
from proxy.engine.upstream import (
    Reply,
    ServerError,
    Skipped,
    Upstream,
)
from proxy.engine.withqueries import carry_with_queries
from proxy.wire.replies import ends_session

log = logging.getLogger("pgml_proxy.executor")

T = TypeVar("T")

CANCELLED = PgmlError("57014", "canceling statement due to user request")

_SLICE = 32
"""Constant calls evaluated between two turns of the event loop."""

HOLD_AFTER = 0.05
"""Seconds of a handler's work after which the client's backend is held in a statement."""
_GRACE = 10.0
"""Seconds a handler has to stop by itself (recording why) once its statement is stopped."""
_TICK = 0.05
"""Seconds between two looks at the statement's deadline while a handler works."""
STATEMENT_TIMEOUT = PgmlError("57014", "canceling statement due to statement timeout")


class Execution(SessionSQL):
    """The evaluation of one statement's pgml calls: a Query's statement, or an
    extended-protocol portal, in the client's session (:class:`SessionSQL`, which is
    also the handlers')."""

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
        super().__init__(
            upstream,
            services,
            database=database,
            params=params,
            helper=helper,
            confirmed=confirmed,
        )
        self.cancelled = cancelled
        self.caller = caller
        self.label_types = label_types
        """Result types of project-typed calls fixed when the statement was described
        (extended protocol); ``None``: looked up when the call runs."""
        self.drop_at_commit = drop_at_commit
        """Temporary tables go at the end of the transaction, not after the statement."""
        self.temp_tables: list[str] = []
        self.values: dict[int, Known] = {}
        """Results of constant calls evaluated so far, by call node: arguments of others."""
        self.with_queries = ""
        """The WITH clause of the statement's WITH queries that constant calls' arguments
        read, as their carried rows (see :mod:`proxy.engine.withqueries`)."""
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
        self.stopped: Exception | None = None
        """Why the statement was stopped while a handler worked (its handler sees it as a
        cancel)."""
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
