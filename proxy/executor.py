"""Runs planned pgml statements in-band on the client's own upstream session.

For each call the executor asks PostgreSQL for the argument values (in the client's
session, so its privileges, transaction and temp tables apply), runs the handler in
batches, and puts the results where the call stood (see :mod:`proxy.planner`).  The
rewritten statement is then executed by PostgreSQL and its replies go to the client.
When the client is not inside a transaction block, the whole statement runs in one
transaction of the proxy's, so a failure leaves the database as it was.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import math
import re
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlglot import exp

from dashboard import metrics
from handlers.errors import PgmlError
from handlers.functions import (
    ACCEPTED_OIDS,
    TEXT_OIDS,
    Args,
    CallContext,
    Overload,
    no_such_function,
)
from handlers.inference import LABEL
from handlers.inference import result_type as project_result_type
from handlers.serving import Services
from proxy import logs
from proxy import protocol as pg
from proxy.inband import (
    FLUSH,
    Inband,
    Result,
    ServerError,
    encode_bind,
    encode_close,
    encode_describe,
    encode_execute,
    encode_parse,
)
from proxy.planner import (
    DIALECT,
    CallSite,
    StatementPlan,
    contains,
    controls_transaction,
    derived_table,
    find_calls,
    named_scalar,
    result_type,
    table_rows,
)

log = logging.getLogger("pgml_proxy.executor")

_FORWARDED_RESULTS = frozenset(b"TDCI")
"""RowDescription, DataRow, CommandComplete, EmptyQueryResponse."""

_NAMES = itertools.count(1)
_STRING_LITERAL = re.compile(r"'(?:[^']|'')*'")
_PARAMETER = re.compile(r"\$(\d+)")

TEXT_OID = 25
"""Every value the proxy binds is sent as text and cast in the SQL to its type."""

CANCELLED = PgmlError("57014", "canceling statement due to user request")
INTERNAL_ERROR = PgmlError(
    "XX000", "internal error in pgml-proxy", hint="The proxy's log has the details."
)
PROXY_STATEMENTS = (
    "__pgml_helper",
    "__pgml_final",
    "__pgml_describe",
    "__pgml_abort",
    "__pgml_copy",
)
"""Prepared statements the proxy names; closed again after a failure left them open."""


@dataclass(frozen=True, slots=True)
class _RowCall:
    """A call evaluated per row: where its arguments come from and what it returns."""

    call: CallSite
    overload: Overload
    types: list[tuple[int, str]]
    row_positions: list[int]
    constant_positions: list[int]
    const_values: list[Any]
    returns: str

    def arguments(self, batch: Result) -> tuple[list[str], list[Args]]:
        """The batch's row keys and argument tuples, rows with a NULL argument left out
        (strict functions give NULL for them)."""
        keys: list[str] = []
        tuples: list[Args] = []
        for row in batch.rows:
            values: list[Any] = [None] * len(self.call.args)
            for position, value in zip(self.constant_positions, self.const_values, strict=True):
                values[position] = value
            for position, raw in zip(self.row_positions, row[1:], strict=True):
                values[position] = _json(raw)
            _, args = bind_arguments(self.call, self.types, values, self.overload)
            if any(v is None for v in args):
                continue
            keys.append(_text(row[0]))
            tuples.append(args)
        return keys, tuples


class StatementFailed(Exception):
    """The statement's error has been sent to the client; stop the Query here."""


@dataclass
class BoundParams:
    """The client's own parameters of an extended-protocol statement."""

    values: list[bytes | None] = field(default_factory=list)
    formats: list[int] = field(default_factory=list)
    oids: list[int] = field(default_factory=list)


@dataclass
class Execution:
    """Evaluates the pgml calls of statements for one client request."""

    inband: Inband
    services: Services
    cancelled: Callable[[], bool] = lambda: False
    user: BoundParams = field(default_factory=BoundParams)
    database: str = ""
    temp_tables: list[str] = field(default_factory=list)
    _params: list[bytes | None] = field(default_factory=list)
    drop_on_commit: bool = False
    """Helper tables go at the end of the transaction at the latest (portals may stop
    half-way and never come back)."""
    _on_commit: str = ""
    _cursor: bool = False
    label_types: dict[str, str] | None = None
    """Result types of project-typed calls fixed when the statement was described
    (extended protocol); ``None``: looked up when the call runs."""

    @property
    def context(self) -> CallContext:
        return CallContext(self.services, self, self.database, self.cancelled)

    @property
    def batch_size(self) -> int:
        return int(self.services.batch_size)

    # --- SQL in the caller's session, for handlers -----------------------------------------

    async def run_sql(self, sql: str, params: Sequence[str | None] = ()) -> list[list[Any]]:
        encoded = [None if p is None else p.encode("utf-8") for p in params]
        result = await self._select(sql, encoded, own=True)
        return [[None if v is None else v.decode("utf-8") for v in row] for row in result.rows]

    async def notice(self, message: str) -> None:
        self.inband.send_client(pg.PgError("NOTICE", "00000", message).encode(b"N"))

    async def copy_in(self, sql: str, chunks: AsyncIterator[bytes]) -> int:
        tag = await self.inband.copy_in("__pgml_copy", sql, [], [], chunks)
        return int(tag.rsplit(" ", 1)[-1])

    def copy_out(self, sql: str) -> AsyncIterator[bytes]:
        return self.inband.copy_out("__pgml_copy", sql)

    # --- a simple Query ------------------------------------------------------------------

    async def run_planned(self, statements: list[str], plans: list[StatementPlan | None]) -> None:
        """Answer a simple Query; the caller sends the final ReadyForQuery.

        Several statements in one Query run in one transaction, as PostgreSQL runs them,
        unless they manage transactions themselves.
        """
        wrap = (
            len(statements) > 1
            and self.inband.status == b"I"
            and not any(controls_transaction(text) for text in statements)
        )
        plain: list[str] = []
        try:
            if wrap:
                await self.inband.query("BEGIN")
            for text, plan in zip(statements, plans, strict=True):
                if plan is None:
                    plain.append(text)
                    continue
                if plain:
                    await self._relay_plain(plain)
                    plain = []
                await self._run_statement(plan)
            if plain:
                await self._relay_plain(plain)
            if wrap:
                await self.inband.query("COMMIT")
        except ServerError as error:  # the COMMIT failed
            self.inband.send_client(without_position(error))
        except StatementFailed:
            if wrap and self.inband.status != b"I":
                await self._quietly("ROLLBACK")

    async def _relay_plain(self, statements: list[str]) -> None:
        """Statements without pgml calls go to PostgreSQL as they were written."""
        self.inband.send(pg.message(b"Q", pg.cstring("".join(statements))))
        try:
            await self.inband.collect(forward=lambda m: m.type != pg.READY_FOR_QUERY)
        except ServerError as error:
            raise StatementFailed from error

    async def _run_statement(self, plan: StatementPlan) -> None:
        # A cursor outside a transaction block is PostgreSQL's error to give, not hidden.
        owns_transaction = self.inband.status == b"I" and not plan.declares_cursor
        try:
            if owns_transaction:
                await self.inband.query("BEGIN")
            final = await self.evaluate(plan)
            self.inband.send(
                encode_parse("__pgml_final", final, self.param_oids())
                + encode_bind(
                    "__pgml_final", "__pgml_final", self.param_values(), self.param_formats()
                )
                + encode_describe(b"P", "__pgml_final")
                + encode_execute("__pgml_final")
                + encode_close(b"P", "__pgml_final")
                + encode_close(b"S", "__pgml_final")
                + FLUSH
            )
            await self.inband.steps(6, forward=lambda m: m.type in _FORWARDED_RESULTS)
            await self.drop_temp_tables()
        except ServerError as error:
            self.inband.send_client(without_position(error))
            await self._recover(owns_transaction, abort=False)
            raise StatementFailed from error
        except PgmlError as error:
            self.inband.send_client(error_response(error))
            await self._recover(owns_transaction, abort=True)
            raise StatementFailed from error
        except (ConnectionError, asyncio.CancelledError):
            raise
        except Exception as error:
            log.exception("internal error running a pgml statement")
            self.inband.send_client(error_response(INTERNAL_ERROR))
            await self._recover(owns_transaction, abort=True)
            raise StatementFailed from error
        if owns_transaction:
            try:
                await self.inband.query("COMMIT")
            except ServerError as error:
                self.inband.send_client(without_position(error))
                raise StatementFailed from error

    async def _recover(self, owns_transaction: bool, abort: bool) -> None:
        """After a failure: end PostgreSQL's error state, forget the proxy's statements,
        and leave the transaction as a failed PostgreSQL statement would."""
        await self.inband.sync()
        await self.inband.close_statements(PROXY_STATEMENTS)
        if owns_transaction:
            if self.inband.status != b"I":
                await self._quietly("ROLLBACK")
        elif abort and self.inband.status == b"T":
            await self._quietly(abort_transaction_sql())

    async def report(self, error: PgmlError) -> None:
        """A Query that could not be planned: nothing of it runs, as with a syntax error."""
        self.inband.send_client(error_response(error))
        if self.inband.status == b"T":
            await self._quietly(abort_transaction_sql())

    async def _quietly(self, sql: str) -> None:
        with contextlib.suppress(ServerError):
            await self.inband.query(sql)

    # --- evaluating calls (both protocols) ------------------------------------------------

    async def evaluate(self, plan: StatementPlan) -> str:
        """Evaluate every call of ``plan`` in-band; return the SQL PostgreSQL runs instead.

        Helpers are sent with Flush, never Sync, so the client's implicit transaction
        and error state are PostgreSQL's as if it ran the statement itself.
        """
        if self.services.service is not None:  # the catalog exists from the first call on
            await self.services.ensure_catalog(self.database)
        self._params = []
        self._cursor = plan.declares_cursor
        self._on_commit = " ON COMMIT DROP" if self._cursor or self.drop_on_commit else ""
        pending = list(plan.calls)
        while pending:
            call = self._next_ready(pending)
            started = time.perf_counter()
            ok = False
            try:
                with logs.context(function=call.sql_name):
                    if call.scope is None:
                        await self._evaluate_constant(plan, call)
                    else:
                        await self._evaluate_per_row(plan, call)
                    log.debug("evaluated in %.1f ms", (time.perf_counter() - started) * 1000)
                ok = True
            finally:
                metrics.record_call(call.sql_name, ok, time.perf_counter() - started)
            pending.remove(call)
        return plan.render()

    async def drop_temp_tables(self) -> None:
        """Drop the statement's temporary tables, unless a cursor still reads them (then
        they go at the end of its transaction)."""
        if self.temp_tables and not self._cursor:
            await self._select("DROP TABLE " + ", ".join(self.temp_tables))
            self.temp_tables = []

    def param_oids(self) -> list[int]:
        return self.user.oids + [TEXT_OID] * len(self._params)

    def param_values(self) -> list[bytes | None]:
        return self.user.values + self._params

    def param_formats(self) -> list[int]:
        return self.user.formats + [0] * len(self._params)

    def _next_ready(self, pending: list[CallSite]) -> CallSite:
        """A call whose arguments and rows hold no call that is still to be evaluated."""
        for call in pending:
            inputs = [a.copy() for a in call.args]
            if call.scope is not None:
                inputs.append(_collection_select(call))
            if not any(find_calls(i) for i in inputs):
                return call
        raise PgmlError("0A000", "these pgml calls depend on each other in a way it cannot run")

    async def _evaluate_constant(self, plan: StatementPlan, call: CallSite) -> None:
        texts = [plan.argument_text(call, i) for i in range(len(call.args))]
        known = [self._text_argument(text) for text in texts]
        if all(k is not None for k in known):  # string literals and text parameters
            types: list[tuple[int, str]] = [(TEXT_OID, "text")] * len(texts)
            values: list[Any] = [k[0] for k in known if k is not None]
        else:
            types, values = await self._constant_arguments(texts)
        overload, args = bind_arguments(call, types, values)
        if overload.authorize is not None:
            await overload.authorize(self.context, args)
        returns = await self._result_type(overload, args[0] if args else None)
        result = None
        if not overload.strict or not any(v is None for v in args):
            result = (await overload.handler(self.context, [args]))[0]
            self._check_cancel()
        plan.substitute(call, self._substitute_constant(call, overload, result, returns))

    def _text_argument(self, text: str) -> tuple[str | None] | None:
        """The value of an argument PostgreSQL would read as text without asking it: a
        string literal, or a text parameter sent in text format; else None."""
        if _STRING_LITERAL.fullmatch(text):
            return (text[1:-1].replace("''", "'"),)
        found = _PARAMETER.fullmatch(text)
        if found is None:
            return None
        index = int(found.group(1)) - 1
        user = self.user
        if not 0 <= index < len(user.values) or user.oids[index] not in TEXT_OIDS:
            return None
        formats = user.formats
        binary = formats[index] if len(formats) > 1 else (formats[0] if formats else 0)
        value = user.values[index]
        if binary:
            return None
        return (None if value is None else value.decode("utf-8"),)

    async def _result_type(self, overload: Overload, project: Any) -> str:
        """The call's SQL result type; a project-typed call's is its project's."""
        if LABEL not in overload.returns:
            return overload.returns
        if self.label_types is not None or project is None:
            return result_type(overload, (self.label_types or {}).get(str(project), "text"))
        return result_type(
            overload, await project_result_type(self.services, self.database, str(project))
        )

    async def _constant_arguments(
        self, texts: Sequence[str]
    ) -> tuple[list[tuple[int, str]], list[Any]]:
        if not texts:
            return [], []
        inner = ", ".join(f"({text}) AS __pgml_a{i}" for i, text in enumerate(texts))
        outer = ", ".join(
            f"pg_typeof(s.__pgml_a{i})::oid, pg_typeof(s.__pgml_a{i})::text, "
            f"to_json(s.__pgml_a{i})::text"
            for i in range(len(texts))
        )
        result = await self._select(f"SELECT {outer} FROM (SELECT {inner}) AS s")
        row = result.rows[0]
        types = [(int(_text(row[3 * i])), _text(row[3 * i + 1])) for i in range(len(texts))]
        values = [_json(row[3 * i + 2]) for i in range(len(texts))]
        return types, values

    def _substitute_constant(
        self, call: CallSite, overload: Overload, result: Any, returns: str
    ) -> str:
        if overload.columns:
            rows = [] if result is None else result
            values = [
                self._param(text_array_literal([encode_value(kind, row[i]) for row in rows]))
                for i, (_, kind) in enumerate(overload.columns)
            ]
            if call.in_from:
                return table_rows(
                    call,
                    overload,
                    [f"{v}::{k}[]" for v, (_, k) in zip(values, overload.columns, strict=True)],
                )
            if len(rows) != 1:
                raise PgmlError(
                    "0A000",
                    f"{call.sql_name} returned {len(rows)} rows where one value is needed",
                    hint=f"Call it in FROM: SELECT * FROM {call.sql_name}(...).",
                )
            fields = ", ".join(
                f"(CAST({v} AS {k}[]))[1]"
                for v, (_, k) in zip(values, overload.columns, strict=True)
            )
            return named_scalar(f"ROW({fields})", call.function.name)
        if overload.set_returning:
            rows = [] if result is None else result
            param = self._param(text_array_literal([encode_value(returns, r) for r in rows]))
            value = f"CAST(unnest(CAST({param} AS text[])) AS {returns})"
            if call.in_from:
                return derived_table(value, call)
            direct_item = isinstance(call.node.parent, exp.Select)
            return f'{value} AS "{call.alias}"' if call.alias and direct_item else value
        value = f"CAST({self._param(encode_value(returns, result))} AS {returns})"
        if call.in_from:
            return derived_table(value, call)
        return named_scalar(value, call.function.name)

    async def _evaluate_per_row(self, plan: StatementPlan, call: CallSite) -> None:
        row_positions = [i for i, a in enumerate(call.args) if _reads_columns(a)]
        constant_positions = [i for i in range(len(call.args)) if i not in row_positions]
        const_types, const_values = await self._constant_arguments(
            [plan.argument_text(call, i) for i in constant_positions]
        )
        row_texts = [plan.argument_text(call, i) for i in row_positions]
        table, portal = self._temp_name()
        arguments = ", ".join(f"({text}) AS __pgml_a{i}" for i, text in enumerate(row_texts))
        rows = _collection_select(call).sql(dialect=DIALECT).replace(_ARGUMENTS, arguments, 1)
        columns = ", ".join(f"__pgml_a{i}" for i in range(len(row_positions)))
        try:
            await self._select(
                f"CREATE TEMP TABLE {table}_a{self._on_commit} AS "
                f"SELECT row_number() OVER () AS __pgml_k, d.* "
                f"FROM (SELECT DISTINCT {columns} FROM ({rows}) AS s) AS d"
            )
        except ServerError as error:
            if error.sqlstate == "42703" and call.scope is not None and call.scope.parent:
                raise PgmlError(
                    "0A000",
                    f"{call.sql_name} cannot read columns of an outer query",
                    detail=error.fields.get("M"),
                    hint="Move the call to the outer query, or join the tables in one query.",
                ) from error
            raise
        self.temp_tables += [f"{table}_a"]
        described = await self._select(f"SELECT * FROM {table}_a LIMIT 0")
        types: list[tuple[int, str]] = [(0, "")] * len(call.args)
        for position, found in zip(constant_positions, const_types, strict=True):
            types[position] = found
        for position, column in zip(row_positions, described.columns[1:], strict=True):
            types[position] = (column.type_oid, type_name(column.type_oid))
        overload = pick_overload(call, types)
        if not overload.row_dependent_ok:
            raise PgmlError(
                "0A000",
                f"{call.sql_name}({overload.params[1].type}) returns a set and cannot read columns",
                hint="Call it with an array literal, or with one row's value per call.",
            )
        if overload.authorize is not None:
            await self._authorize(call, overload, types, row_positions, const_values, table)
        returns = await self._result_type(
            overload, _project_value(call, overload, const_values, constant_positions)
        )
        await self._select(
            f"CREATE TEMP TABLE {table}_v (__pgml_k bigint, __pgml_v {returns}){self._on_commit}"
        )
        self.temp_tables += [f"{table}_v"]
        fetch = ", ".join(f"to_json(__pgml_a{i})::text" for i in range(len(row_positions)))
        self.inband.send(
            encode_parse(portal, f"SELECT __pgml_k, {fetch} FROM {table}_a", self.param_oids())
            + encode_bind(portal, portal, self.param_values(), self.param_formats())
            + encode_close(b"S", portal)
            + FLUSH
        )
        await self.inband.steps(3)
        per_row = _RowCall(
            call, overload, types, row_positions, constant_positions, const_values, returns
        )
        await self._evaluate_batches(per_row, portal, f"{table}_v")
        self.inband.send(encode_close(b"P", portal) + FLUSH)
        await self.inband.steps(1)
        await self._select(
            f"CREATE TEMP TABLE {table}{self._on_commit} AS SELECT a.*, v.__pgml_v "
            f"FROM {table}_a AS a JOIN {table}_v AS v USING (__pgml_k)"
        )
        self.temp_tables.insert(0, table)
        await self._select(f"CREATE INDEX ON {table} USING hash (__pgml_a0)")
        await self._select(f"ANALYZE {table}")
        match = " AND ".join(f"__pgml_l.__pgml_a{i} = ({text})" for i, text in enumerate(row_texts))
        plan.substitute(
            call,
            f'(SELECT __pgml_l.__pgml_v AS "{call.function.name}" '
            f"FROM {table} AS __pgml_l WHERE {match})",
        )

    async def _authorize(
        self,
        call: CallSite,
        overload: Overload,
        types: list[tuple[int, str]],
        row_positions: list[int],
        const_values: list[Any],
        table: str,
    ) -> None:
        """Await the overload's ``authorize`` before its batches: once, or once for each
        distinct value of its first parameter when that reads columns."""
        assert overload.authorize is not None
        values: list[Any] = [None] * len(call.args)
        constant_positions = [i for i in range(len(call.args)) if i not in row_positions]
        for position, value in zip(constant_positions, const_values, strict=True):
            values[position] = value
        positions = _positions(call, overload)
        first = positions.index(0) if 0 in positions else None
        firsts: list[Any] = [values[first] if first is not None else None]
        if first is not None and first in row_positions:
            column = f"__pgml_a{row_positions.index(first)}"
            found = await self._select(f"SELECT DISTINCT to_json({column})::text FROM {table}_a")
            firsts = [_json(row[0]) for row in found.rows]
        for value in firsts:
            if first is not None:
                values[first] = value
            _, args = bind_arguments(call, types, values, overload)
            await overload.authorize(self.context, args)

    async def _evaluate_batches(self, rows: _RowCall, portal: str, results_table: str) -> None:
        """Run the call over the portal's rows a batch at a time; the next batch is fetched
        while the model works on this one (handlers of per-row calls never use the
        session, so the two do not meet on the connection)."""
        self.inband.send(encode_execute(portal, self.batch_size) + FLUSH)
        (batch,) = await self.inband.steps(1)
        while True:
            keys, tuples = rows.arguments(batch)
            computing = (
                asyncio.ensure_future(rows.overload.handler(self.context, tuples))
                if tuples
                else None
            )
            upcoming: Result | None = None
            try:
                if batch.suspended:
                    self.inband.send(encode_execute(portal, self.batch_size) + FLUSH)
                    (upcoming,) = await self.inband.steps(1)
                results = [] if computing is None else await computing
            finally:
                if computing is not None and not computing.done():
                    computing.cancel()
            self._check_cancel()
            metrics.record_rows(rows.call.sql_name, len(tuples), len(results))
            if results:
                await self._store_results(results_table, rows.returns, keys, results)
            if upcoming is None:
                return
            batch = upcoming

    async def _store_results(
        self, results_table: str, returns: str, keys: list[str], results: list[Any]
    ) -> None:
        encoded = [encode_value(returns, r) for r in results]
        await self._select(
            f"INSERT INTO {results_table} SELECT u.k, CAST(u.v AS {returns}) "
            f"FROM unnest(CAST(${len(self.param_values()) + 1} AS bigint[]), "
            f"CAST(${len(self.param_values()) + 2} AS text[])) AS u(k, v)",
            [text_array_literal(keys).encode(), text_array_literal(encoded).encode()],
        )

    async def _select(
        self, sql: str, extra: Sequence[bytes | None] = (), *, own: bool = False
    ) -> Result:
        """Run one helper statement (Flush, not Sync); nothing of it reaches the client.

        Its ``$n`` are the client's parameters, then the proxy's, then ``extra``; with
        ``own`` (a handler's SQL) they are ``extra`` alone.
        """
        values, oids, formats = list(extra), [TEXT_OID] * len(extra), [0] * len(extra)
        if not own:
            values = self.param_values() + values
            oids = self.param_oids() + oids
            formats = self.param_formats() + formats
        self.inband.send(
            encode_parse("__pgml_helper", sql, oids)
            + encode_bind("__pgml_helper", "__pgml_helper", values, formats)
            + encode_describe(b"P", "__pgml_helper")
            + encode_execute("__pgml_helper")
            + encode_close(b"P", "__pgml_helper")
            + encode_close(b"S", "__pgml_helper")
            + FLUSH
        )
        results = await self.inband.steps(6)
        return results[0] if results else Result()

    def _param(self, value: str | None) -> str:
        """A parameter of the proxy's own, numbered after the client's."""
        self._params.append(None if value is None else value.encode("utf-8"))
        return f"${len(self.user.values) + len(self._params)}"

    def _temp_name(self) -> tuple[str, str]:
        """Names for a call's temporary tables and portal, unique in the process (several
        of a session's statements may hold theirs at once: open cursors and portals)."""
        number = next(_NAMES)
        return f"pg_temp.__pgml_{number}", f"__pgml_portal_{number}"

    def _check_cancel(self) -> None:
        if self.cancelled():
            raise CANCELLED


def error_response(error: PgmlError) -> bytes:
    return pg.PgError("ERROR", error.sqlstate, error.message, error.detail, error.hint).encode()


def abort_transaction_sql() -> str:
    """SQL that fails, so PostgreSQL's transaction state follows a failed pgml call."""
    return "DO $$BEGIN RAISE EXCEPTION 'a pgml call failed'; END$$"


# --- arguments -------------------------------------------------------------------------


def pick_overload(call: CallSite, types: Sequence[tuple[int, str]]) -> Overload:
    for overload in call.function.overloads:
        try:
            _map_arguments(call, overload, [None] * len(call.args))
        except PgmlError:
            continue
        positions = _positions(call, overload)
        if all(
            types[i][0] == 0 or types[i][0] in ACCEPTED_OIDS[overload.params[p].type]
            for i, p in enumerate(positions)
        ):
            return overload
    names = [
        (f"{name} => " if name else "") + type_name
        for name, (_, type_name) in zip(call.names, types, strict=True)
    ]
    raise no_such_function(call.function.name, names, call.function)


def bind_arguments(
    call: CallSite,
    types: Sequence[tuple[int, str]],
    values: Sequence[Any],
    overload: Overload | None = None,
) -> tuple[Overload, Args]:
    chosen = overload or pick_overload(call, types)
    mapped = _map_arguments(call, chosen, values)
    return chosen, tuple(
        None if v is None else _convert(chosen.params[i].type, v, types, call, i)
        for i, v in enumerate(mapped)
    )


def _project_value(
    call: CallSite, overload: Overload, values: Sequence[Any], constant_positions: list[int]
) -> Any:
    """The constant ``project_name`` of a per-row call (project-typed calls need one)."""
    if LABEL not in overload.returns:
        return None
    position = _positions(call, overload).index(0)
    if position not in constant_positions:
        raise PgmlError(
            "0A000",
            f"{call.sql_name} needs the same project_name for every row",
            hint="Call it once per project, with the project's name as a literal.",
        )
    return values[constant_positions.index(position)]


def _positions(call: CallSite, overload: Overload) -> list[int]:
    names = [p.name for p in overload.params]
    return [i if name is None else names.index(name) for i, name in enumerate(call.names)]


def _map_arguments(call: CallSite, overload: Overload, values: Sequence[Any]) -> list[Any]:
    params = overload.params
    if len(call.args) > len(params):
        raise PgmlError("42883", f"{call.sql_name} takes at most {len(params)} arguments")
    slots: list[Any] = [p.default for p in params]
    given = [False] * len(params)
    names = [p.name for p in params]
    for index, name in enumerate(call.names):
        if name is None:
            position = index
        elif name in names:
            position = names.index(name)
        else:
            raise PgmlError(
                "42883",
                f'{call.sql_name} has no parameter named "{name}"',
                hint="Parameters: " + ", ".join(names) + ".",
            )
        if given[position]:
            raise PgmlError(
                "42601", f'argument "{names[position]}" of {call.sql_name} is given twice'
            )
        given[position] = True
        slots[position] = values[index]
    missing = [p.name for p, g in zip(params, given, strict=True) if p.required and not g]
    if missing:
        raise PgmlError("42883", f"{call.sql_name} needs the argument {missing[0]}")
    return slots


def _convert(
    kind: str, value: Any, types: Sequence[tuple[int, str]], call: CallSite, index: int
) -> Any:
    if kind == "jsonb" and isinstance(value, str):
        try:
            return json.loads(value)
        except json.JSONDecodeError as exc:
            raise PgmlError(
                "22P02",
                "invalid input syntax for type json",
                detail=f"{exc.msg} at character {exc.pos + 1}.",
            ) from exc
    if kind == "boolean" and isinstance(value, str):
        return value.strip().lower() in ("t", "true", "yes", "on", "1")
    return value


# --- encoding values for PostgreSQL's text input ---------------------------------------


def encode_value(kind: str, value: Any) -> str | None:
    if value is None:
        return None
    if kind == "text":
        return str(value)
    if kind in ("real", "double precision"):
        return _float_text(value)
    if kind == "real[]":
        return "{" + ",".join("NULL" if v is None else _float_text(v) for v in value) + "}"
    if kind == "text[]":
        return text_array_literal([None if v is None else str(v) for v in value])
    if kind == "jsonb":
        return json.dumps(value, ensure_ascii=False)
    if kind == "boolean":
        return "t" if value else "f"
    return str(value)


_TYPE_NAMES = {
    25: "text",
    1043: "character varying",
    1042: "character",
    19: "name",
    705: "unknown",
    1009: "text[]",
    20: "bigint",
    23: "integer",
    21: "smallint",
    700: "real",
    701: "double precision",
    1700: "numeric",
    16: "boolean",
    114: "json",
    3802: "jsonb",
    1021: "real[]",
}


def type_name(oid: int) -> str:
    return _TYPE_NAMES.get(oid, f"type {oid}")


def _float_text(value: float) -> str:
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "Infinity" if value > 0 else "-Infinity"
    return repr(float(value))


def text_array_literal(values: Sequence[str | None]) -> str:
    """A ``text[]`` literal: every element quoted, so no value can break out of it."""
    quoted = (
        "NULL" if v is None else '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
        for v in values
    )
    return "{" + ",".join(quoted) + "}"


# --- helpers ----------------------------------------------------------------------------


def _text(raw: bytes | None) -> str:
    return "" if raw is None else raw.decode("utf-8")


def _json(raw: bytes | None) -> Any:
    return None if raw is None else json.loads(raw)


def _reads_columns(arg: exp.Expr) -> bool:
    return any(isinstance(n, exp.Column) for n in arg.walk())


def without_position(error: ServerError) -> bytes:
    """The server's error for rewritten SQL: its cursor position means nothing to the user."""
    fields = {k: v for k, v in error.fields.items() if k not in ("P", "q", "p")}
    body = b"".join(k.encode() + pg.cstring(v) for k, v in fields.items()) + b"\x00"
    return pg.message(b"E", body)


_ARGUMENTS = "__pgml_arguments__"
"""Stands for the argument list while the rest of a collection query is rendered."""


def _collection_select(call: CallSite) -> exp.Select:
    """The rows of the call's scope, selecting a placeholder for its arguments."""
    scope = call.scope
    assert scope is not None
    inner = exp.Select(expressions=[exp.column(_ARGUMENTS)])
    if isinstance(scope, exp.Select):
        for key in ("from_", "joins", "laterals"):
            value = scope.args.get(key)
            if value:
                inner.set(
                    key, [v.copy() for v in value] if isinstance(value, list) else value.copy()
                )
        if call.in_select_list_only and _limit_applies(scope):
            for key in ("order", "limit", "offset"):
                if scope.args.get(key):
                    inner.set(key, scope.args[key].copy())
    else:
        sources = [scope.this.copy()]
        extra = scope.args.get("from_")
        if isinstance(scope, exp.Update) and extra is not None:
            sources += [e.copy() for e in extra.expressions or [extra.this]]
        sources += [e.copy() for e in scope.args.get("using") or []]
        inner = inner.from_(sources[0])
        for source in sources[1:]:
            inner = inner.join(source, join_type="cross")
    where = _kept_conditions(scope.args.get("where"), call)
    if where is not None:
        inner.set("where", exp.Where(this=where))
    ctes = _visible_ctes(scope)
    if ctes:
        inner.set("with_", exp.With(expressions=ctes))
    return inner


def _kept_conditions(where: exp.Where | None, call: CallSite) -> exp.Expr | None:
    """The scope's WHERE without the conjuncts that hold the call being evaluated."""
    if where is None:
        return None
    conjuncts = list(where.this.flatten()) if isinstance(where.this, exp.And) else [where.this]
    kept = [c.copy() for c in conjuncts if not contains(c, call.node)]
    return exp.and_(*kept) if kept else None


def _limit_applies(scope: exp.Select) -> bool:
    """ORDER BY/LIMIT may be copied when they only cut rows, never group them."""
    if scope.args.get("distinct") or scope.args.get("group") or scope.args.get("having"):
        return False
    if any(isinstance(n, exp.AggFunc | exp.Window) for e in scope.expressions for n in e.walk()):
        return False
    aliases = {e.alias for e in scope.expressions if isinstance(e, exp.Alias)}
    order = scope.args.get("order")
    if order is not None:
        for ordered in order.expressions:
            key = ordered.this
            if isinstance(key, exp.Literal) or (
                isinstance(key, exp.Column) and not key.table and key.name in aliases
            ):
                return False
    return True


def _visible_ctes(scope: exp.Expr) -> list[exp.Expr]:
    ctes: list[exp.Expr] = []
    node: exp.Expr | None = scope
    while node is not None:
        with_ = node.args.get("with_") or node.args.get("with")
        if isinstance(with_, exp.With):
            ctes = [c.copy() for c in with_.expressions if not contains(c, scope)] + ctes
        node = node.parent
    return ctes
