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
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from sqlglot import exp

from handlers.errors import PgmlError
from handlers.functions import TEXT_OIDS, Args, CallContext, Overload
from handlers.inference import result_type as project_result_type
from handlers.serving import Services
from proxy import logs, metrics
from proxy.engine import binding, values
from proxy.engine.calls import CallSite, reads_columns
from proxy.engine.planner import (
    Parsed,
    derived_table,
    in_select_list,
    named_scalar,
    nesting,
    parse_statement,
    table_rows,
)
from proxy.engine.scopes import MARK, ROW_KEY, M, ScopeStep, Slot, plan_scope
from proxy.engine.sourcetext import SourceText
from proxy.engine.upstream import CopyIn, CopyOut, Reply, Result, ServerError, Skipped, Upstream
from proxy.wire import codec
from proxy.wire.codec import Column

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


@dataclass(frozen=True, slots=True)
class Known:
    """An argument's type and value, known before the call runs."""

    oid: int
    value: Any


@dataclass(eq=False)
class _RowCall:
    """A per-row call of a step, resolved: where its arguments are, what it returns."""

    call: CallSite
    overload: Overload
    kinds: list[str]
    """Each argument's parameter type: the type its column is cast to."""
    columns: list[str]
    """Each argument's ``M`` column."""
    returns: str
    varies: bool


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
        params: BoundParams | None = None,
        label_types: dict[str, str] | None = None,
        helper: str = "",
        drop_at_commit: bool = False,
    ) -> None:
        self.upstream = upstream
        self.services = services
        self.database = database
        self.cancelled = cancelled
        self.user = params or BoundParams()
        self.label_types = label_types
        """Result types of project-typed calls fixed when the statement was described
        (extended protocol); ``None``: looked up when the call runs."""
        self.helper = helper
        """The prepared statement name helper SQL uses ("" where the unnamed one is free)."""
        self.drop_at_commit = drop_at_commit
        """Temporary tables go at the end of the transaction, not after the statement."""
        self.temp_tables: list[str] = []
        self._params: list[bytes | None] = []
        self._values: dict[int, Known] = {}
        """Results of constant calls evaluated so far, by call node: arguments of others."""

    @property
    def context(self) -> CallContext:
        return CallContext(self.services, self, self.database, self.cancelled)

    def check_cancel(self) -> None:
        if self.cancelled():
            raise CANCELLED

    # --- the statement's parameters --------------------------------------------------

    def param_oids(self) -> list[int]:
        return self.user.oids + [values.TEXT_OID] * len(self._params)

    def param_values(self) -> list[bytes | None]:
        return self.user.values + self._params

    def param_formats(self) -> list[int]:
        return self.user.formats + [0] * len(self._params)

    def _param(self, value: str | None) -> str:
        """A parameter of the proxy's own, numbered after the client's."""
        self._params.append(None if value is None else value.encode("utf-8"))
        return f"${len(self.user.values) + len(self._params)}"

    # --- SQL of the proxy's own, in the client's session --------------------------------

    def request(self, sql: str, own: Sequence[bytes | None] | None = None) -> Reply:
        """Buffer one helper statement (sent with the next flush).  Its ``$n`` are the
        statement's parameters, or ``own`` (text values) when given."""
        if own is None:
            params, oids, formats = self.param_values(), self.param_oids(), self.param_formats()
        else:
            params, oids, formats = list(own), [values.TEXT_OID] * len(own), []
        return self.upstream.statement(sql, params, oids, formats, name=self.helper)

    async def select(self, sql: str, own: Sequence[bytes | None] | None = None) -> Result:
        reply = self.request(sql, own)
        self.upstream.flush()
        return await reply

    async def run_sql(self, sql: str, params: Sequence[str | None] = ()) -> list[list[Any]]:
        result = await self.select(sql, [None if p is None else p.encode() for p in params])
        return [[None if v is None else v.decode("utf-8") for v in row] for row in result.rows]

    async def notice(self, message: str) -> None:
        self.upstream.notice(codec.PgError("NOTICE", "00000", message).encode(b"N"))

    async def copy_in(self, sql: str, chunks: AsyncIterator[bytes]) -> int:
        """``COPY ... FROM STDIN`` fed with ``chunks`` as fast as the server takes them.
        An error stops the copy (CopyFail) and is raised."""
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
        """``COPY ... TO STDOUT``: each CopyData payload as it arrives.  Stopping early
        leaves the rest to the reply queue, which drops it."""
        upstream = self.upstream
        reply = CopyOut()
        upstream.parse(self.helper, sql)
        upstream.bind(self.helper, self.helper)
        upstream.execute(self.helper, reply=reply)
        if self.helper:
            upstream.close(b"S", self.helper)
        upstream.flush()
        while (chunk := await reply.chunks.get()) is not None:
            yield chunk
        await reply

    # --- evaluating ------------------------------------------------------------------------

    async def evaluate(self, parsed: Parsed) -> str:
        """Evaluate every call; return the statement PostgreSQL runs instead."""
        if self.services.service is not None:  # the catalog exists from the first call on
            await self.services.ensure_catalog(self.database)
        self.drop_at_commit = self.drop_at_commit or parsed.declares_cursor
        text = SourceText(parsed.text)
        constants = [c for c in parsed.calls if not c.per_row]
        for call in sorted(constants, key=lambda c: -nesting(c)):
            await self._timed(call, self._evaluate_constant(text, call))
        statement = text.render()
        current: Parsed | None = parsed if not constants else parse_statement(statement)
        while current is not None and current.calls:
            step = _next_step(current)
            outer = await self._timed(step.calls[0], self._run_step(current, step))
            statement = statement[: step.span[0]] + outer + statement[step.span[1] :]
            current = parse_statement(statement)
        return parsed.prefix + statement

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

    # --- constant calls -----------------------------------------------------------------------

    async def _evaluate_constant(self, text: SourceText, call: CallSite) -> None:
        known = [
            self._known(arg, text.render(span))
            for arg, span in zip(call.args, call.text.arguments, strict=True)
        ]
        missing = [i for i, k in enumerate(known) if k is None]
        if missing:
            found = await self._typed_values([text.render(call.text.arguments[i]) for i in missing])
            for i, k in zip(missing, found, strict=True):
                known[i] = k
        given = [k for k in known if k is not None]
        overload = binding.pick_overload(call, [k.oid for k in given])
        args = binding.bind(call, overload, [k.value for k in given])
        returns = await self._result_type(call, overload, args)
        result = None
        if not overload.strict or not any(v is None for v in args):
            result = (await overload.handler(self.context, [args]))[0]
            self.check_cancel()
        if not overload.set_returning and not overload.columns:
            self._values[id(call.node)] = Known(_oid_of(returns), result)
        text.replace(call.text.span, self._constant_sql(call, overload, result, returns))

    def _known(self, arg: exp.Expr, source: str) -> Known | None:
        """An argument's type and value when the statement alone says them: a string,
        number or boolean literal, a typed string literal, a text parameter, or a call
        evaluated already; else None (PostgreSQL is asked)."""
        inner = self._values.get(id(arg))
        if inner is not None:
            return inner
        if isinstance(arg, exp.Null):
            return Known(values.UNKNOWN_OID, None)
        if isinstance(arg, exp.Boolean):
            return Known(16, bool(arg.this))
        if isinstance(arg, exp.Literal):
            return _literal(arg, source)
        if isinstance(arg, exp.Cast) and isinstance(arg.this, exp.Literal) and arg.this.is_string:
            oid = _TYPED_LITERALS.get(arg.to.sql(dialect="postgres").lower())
            plain = _literal(arg.this, source[source.find("'") : source.rfind("'") + 1])
            return None if oid is None or plain is None else Known(oid, plain.value)
        if isinstance(arg, exp.Parameter) and arg.this.name.isdigit():
            return self._parameter(int(arg.this.name) - 1)
        return None

    def _parameter(self, index: int) -> Known | None:
        user = self.user
        if not 0 <= index < len(user.values) or user.oids[index] not in TEXT_OIDS:
            return None
        if user.formats and user.formats[index]:
            return None
        value = user.values[index]
        return Known(values.TEXT_OID, None if value is None else value.decode("utf-8"))

    async def _typed_values(self, texts: Sequence[str]) -> list[Known]:
        """The types and values of constant expressions, asked of PostgreSQL."""
        inner = ", ".join(f"({t}) AS __pgml_a{i}" for i, t in enumerate(texts))
        outer = ", ".join(
            f"pg_typeof(s.__pgml_a{i})::oid, to_json(s.__pgml_a{i})::text"
            for i in range(len(texts))
        )
        result = await self.select(f"SELECT {outer} FROM (SELECT {inner}) AS s")
        row = result.rows[0]
        return [
            Known(int(_text(row[2 * i])), values.decode("jsonb", row[2 * i + 1]))
            for i in range(len(texts))
        ]

    async def _result_type(self, call: CallSite, overload: Overload, args: Args) -> str:
        """The call's SQL result type; a project-typed call's is its project's."""
        if not binding.typed_by_project(call):
            return overload.returns
        project = args[0]
        if self.label_types is not None or project is None:
            label = (self.label_types or {}).get(str(project), "text")
        else:
            label = await project_result_type(self.services, self.database, str(project))
        return binding.result_type(overload, label)

    def _constant_sql(self, call: CallSite, overload: Overload, result: Any, returns: str) -> str:
        if overload.columns:
            rows = [] if result is None else result
            kinds = [kind for _, kind in overload.columns]
            params = [
                self._param(values.text_array_literal([values.encode(kind, r[i]) for r in rows]))
                for i, kind in enumerate(kinds)
            ]
            if call.in_from:
                typed = [f"{p}::{k}[]" for p, k in zip(params, kinds, strict=True)]
                return table_rows(call, overload, typed)
            if len(rows) != 1:
                raise PgmlError(
                    "0A000",
                    f"{call.sql_name} returned {len(rows)} rows where one value is needed",
                    hint=f"Call it in FROM: SELECT * FROM {call.sql_name}(...).",
                )
            fields = ", ".join(
                f"(CAST({p} AS {k}[]))[1]" for p, k in zip(params, kinds, strict=True)
            )
            return named_scalar(f"ROW({fields})", call.function.name)
        if overload.set_returning:
            rows = [] if result is None else result
            param = self._param(
                values.text_array_literal([values.encode(returns, r) for r in rows])
            )
            value = f"CAST(unnest(CAST({param} AS text[])) AS {returns})"
            if call.in_from:
                return derived_table(value, call)
            return f'{value} AS "{call.function.name}"' if in_select_list(call) else value
        value = f"CAST({self._param(values.encode(returns, result))} AS {returns})"
        if call.in_from:
            return derived_table(value, call)
        return named_scalar(value, call.function.name)

    # --- per-row calls ----------------------------------------------------------------------

    async def _run_step(self, parsed: Parsed, step: ScopeStep) -> str:
        """Materialise the scope's rows, evaluate the calls over them, and return the
        query (or statement) that takes the scope's place."""
        described = await self._describe(step)
        groups = _group_columns(step.slots, described.columns)
        names = [f"c{i + 1}" for i in range(len(described.columns))]
        by_slot: list[list[tuple[str, str]]] = []
        position = 0
        for group in groups:
            by_slot.append([(names[position + j], c.name) for j, c in enumerate(group)])
            position += len(group)
        rows = [
            await self._resolve(parsed, step, i, call, groups, by_slot)
            for i, call in enumerate(step.calls)
        ]
        number = next(_NAMES)
        table = f"pg_temp.__pgml_{number}"
        on_commit = " ON COMMIT DROP" if self.drop_at_commit else ""
        created = [
            self.request(
                f"CREATE TEMP TABLE {table}_m{on_commit} AS SELECT row_number() OVER () AS "
                f"{ROW_KEY}, s.* FROM ({step.inner}) AS s({', '.join(names)})"
            )
        ]
        self.temp_tables.append(f"{table}_m")
        if step.kind in ("update", "delete"):  # the outer statement finds rows by ctid
            created.append(self.request(f"ANALYZE {table}_m"))
        prepared = [
            self._prepare(f"{table}_{i}", f"{table}_m", i, row, on_commit, created)
            for i, row in enumerate(rows)
        ]
        self.upstream.flush()
        await _all(created)
        for i, (row, (_, arguments)) in enumerate(zip(rows, prepared, strict=True)):
            await self._fill(f"{table}_{i}_v", f"__pgml_p{number}_{i}", arguments, row)
        source = f"{table}_m AS {M}" + "".join(join for join, _ in prepared)
        return step.outer(by_slot, [f"__pgml_v{i}.__pgml_v" for i in range(len(rows))], source)

    async def _describe(self, step: ScopeStep) -> Result:
        name = self.helper
        self.upstream.parse(name, step.inner, self.param_oids())
        reply = self.upstream.describe(b"S", name)
        if name:
            self.upstream.close(b"S", name)
        self.upstream.flush()
        try:
            return await reply
        except ServerError as error:
            if error.sqlstate in ("42703", "42P01") and step.nested:
                raise PgmlError(
                    "0A000",
                    "pgml functions cannot be evaluated in a subquery that reads columns of "
                    "an outer query",
                    detail=error.fields.get("M"),
                    hint="Qualify the columns with their table, or move the call to the "
                    "outer query.",
                ) from error
            raise

    async def _resolve(
        self,
        parsed: Parsed,
        step: ScopeStep,
        index: int,
        call: CallSite,
        groups: list[list[Column]],
        by_slot: list[list[tuple[str, str]]],
    ) -> _RowCall:
        oids = [0] * len(call.args)
        columns = [""] * len(call.args)
        for s, slot in enumerate(step.slots):
            if slot.kind == "arg" and slot.index == index:
                oids[slot.argument] = groups[s][0].type_oid
                columns[slot.argument] = by_slot[s][0][0]
        overload = binding.pick_overload(call, oids)
        if not overload.row_dependent_ok:
            raise PgmlError(
                "0A000",
                f"{call.sql_name}({', '.join(p.type for p in overload.params[:2])}) returns a "
                "set and cannot read columns",
                hint="Call it with an array literal, or with one row's value per call.",
            )
        kinds = [binding.parameter_type(call, overload, a) for a in range(len(call.args))]
        constants: list[Any] = []
        for arg, span in zip(call.args, call.text.arguments, strict=True):
            found = None if reads_columns(arg) else self._known(arg, parsed.text[slice(*span)])
            constants.append(None if found is None else found.value)
        if binding.typed_by_project(call) and reads_columns(
            call.args[_project_argument(call, overload)]
        ):
            raise PgmlError(
                "0A000",
                f"{call.sql_name} needs the same project_name for every row",
                hint="Call it once per project, with the project's name as a literal.",
            )
        bound = binding.bind(call, overload, constants)
        returns = await self._result_type(call, overload, bound)
        varies = overload.varies is not None and overload.varies(bound)
        return _RowCall(call, overload, kinds, columns, returns, varies)

    def _prepare(
        self,
        name: str,
        materialised: str,
        index: int,
        row: _RowCall,
        on_commit: str,
        replies: list[Reply],
    ) -> tuple[str, str]:
        """Tables for one call's arguments and results: the join that reads them in the
        outer query, and the query that reads the arguments to evaluate."""
        casts = [_cast(f"{M}.{c}", k) for c, k in zip(row.columns, row.kinds, strict=True)]
        strict = " AND ".join(f"{c} IS NOT NULL" for c in casts) if row.overload.strict else ""
        where = f" WHERE {strict}" if strict else ""
        replies.append(
            self.request(
                f"CREATE TEMP TABLE {name}_v (__pgml_id bigint, __pgml_v {row.returns}){on_commit}"
            )
        )
        self.temp_tables.append(f"{name}_v")
        results = f"__pgml_v{index}"
        if row.varies:  # every row gets a value of its own
            fetch = ", ".join(
                values.fetch_expression(k, c) for k, c in zip(row.kinds, casts, strict=True)
            )
            return (
                f" LEFT JOIN {name}_v AS {results} ON {results}.__pgml_id = {M}.{ROW_KEY}",
                f"SELECT {M}.{ROW_KEY}, {fetch} FROM {materialised} AS {M}{where}",
            )
        distinct = f"__pgml_a{index}"
        labels = [f"a{j}" for j in range(len(casts))]
        replies.append(
            self.request(
                f"CREATE TEMP TABLE {name}_a{on_commit} AS SELECT row_number() OVER () AS "
                f"__pgml_id, d.* FROM (SELECT DISTINCT {', '.join(casts)} FROM {materialised} "
                f"AS {M}{where}) AS d({', '.join(labels)})"
            )
        )
        self.temp_tables.append(f"{name}_a")
        fetch = ", ".join(
            values.fetch_expression(k, a) for k, a in zip(row.kinds, labels, strict=True)
        )
        match = " AND ".join(f"{distinct}.{a} = {c}" for a, c in zip(labels, casts, strict=True))
        return (
            f" LEFT JOIN {name}_a AS {distinct} ON {match}"
            f" LEFT JOIN {name}_v AS {results} ON {results}.__pgml_id = {distinct}.__pgml_id",
            f"SELECT __pgml_id, {fetch} FROM {name}_a",
        )

    async def _fill(self, results: str, portal: str, arguments: str, row: _RowCall) -> None:
        """Run the call over its arguments a batch at a time, the next batch read while
        the model works on this one, each batch's results written with that read."""
        upstream = self.upstream
        size = int(self.services.batch_size)
        upstream.parse(portal, arguments)
        upstream.bind(portal, portal)
        upstream.close(b"S", portal)
        fetched = upstream.execute(portal, size)
        upstream.flush()
        written: list[Reply] = []
        batch = await fetched
        while True:
            ids, tuples = self._arguments(row, batch)
            computing = (
                asyncio.ensure_future(row.overload.handler(self.context, tuples))
                if tuples
                else None
            )
            upcoming = upstream.execute(portal, size) if batch.suspended else None
            upstream.flush()
            try:
                results_now = [] if computing is None else await computing
            finally:
                if computing is not None and not computing.done():
                    computing.cancel()
            self.check_cancel()
            metrics.record_rows(row.call.sql_name, len(tuples), len(results_now))
            if results_now:
                encoded = [values.encode(row.returns, r) for r in results_now]
                written.append(
                    self.request(
                        f"INSERT INTO {results} SELECT u.i, CAST(u.v AS {row.returns}) FROM "
                        "unnest(CAST($1 AS bigint[]), CAST($2 AS text[])) AS u(i, v)",
                        [
                            values.text_array_literal(ids).encode(),
                            values.text_array_literal(encoded).encode(),
                        ],
                    )
                )
            if upcoming is None:
                break
            try:
                batch = await upcoming
            except Skipped:
                await _all(written)
                raise
        upstream.close(b"P", portal)
        upstream.flush()
        await _all(written)

    def _arguments(self, row: _RowCall, batch: Result) -> tuple[list[str], list[Args]]:
        ids: list[str] = []
        tuples: list[Args] = []
        kinds = row.kinds
        for raw in batch.rows:
            decoded = [values.decode(k, v) for k, v in zip(kinds, raw[1:], strict=True)]
            ids.append(_text(raw[0]))
            tuples.append(binding.bind(row.call, row.overload, decoded))
        return ids, tuples

    async def drop_temp_tables(self) -> Reply | None:
        """Drop the statement's temporary tables unless they go at commit; the reply
        (sent with the next flush), or None."""
        if not self.temp_tables or self.drop_at_commit:
            return None
        reply = self.request("DROP TABLE " + ", ".join(self.temp_tables), [])
        self.temp_tables = []
        return reply


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


def _group_columns(slots: list[Slot], columns: list[Column]) -> list[list[Column]]:
    """The inner query's described columns, slot by slot.  A late step's one star takes
    what the other slots leave; an early step's stars run up to the mark after each."""
    groups: list[list[Column]] = []
    position = 0
    for i, slot in enumerate(slots):
        if slot.kind == "star":
            width = len(columns) - (len(slots) - 1)
        elif slot.kind == "export" and i + 1 < len(slots) and slots[i + 1].kind == "mark":
            width = 0
            while columns[position + width].name != MARK:
                width += 1
        else:
            width = 1
        groups.append(columns[position : position + width])
        position += width
    return groups


def _cast(column: str, kind: str) -> str:
    collate = ' COLLATE "C"' if kind in ("text", "text[]") else ""
    return f"CAST({column} AS {kind}){collate}"


def _project_argument(call: CallSite, overload: Overload) -> int:
    found = binding.positions(call, overload)
    assert found is not None
    return found.index(0)


def _literal(node: exp.Literal, source: str) -> Known | None:
    if not node.is_string:
        text = node.name
        if not text.isdigit():
            return Known(1700, float(text))
        number = int(text)
        return Known(23 if number < 2**31 else 20 if number < 2**63 else 1700, number)
    if not (source.startswith("'") and source.endswith("'")) or "\\" in source:
        return None  # E'...', U&'...', $$...$$ or backslashes: PostgreSQL reads them
    return Known(values.UNKNOWN_OID, source[1:-1].replace("''", "'"))


def _oid_of(kind: str) -> int:
    for oid, name in values.TYPE_NAMES.items():
        if name == kind:
            return oid
    return 0


def _text(raw: bytes | None) -> str:
    return "" if raw is None else raw.decode("utf-8")


async def _all(replies: list[Reply]) -> None:
    """Wait for every reply; the first failure is raised (a skipped request's cause is
    the earlier failure, raised first)."""
    for reply in replies:
        await reply
