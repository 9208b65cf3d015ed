"""Runs planned pgml statements in-band on the client's own upstream session.

For each call the executor asks PostgreSQL for the argument values (in the client's
session, so its privileges, transaction and temp tables apply), runs the handler in
batches, and puts the results where the call stood (see :mod:`proxy.planner`).  The
rewritten statement is then executed by PostgreSQL and its replies go to the client.
When the client is not inside a transaction block, the whole statement runs in one
transaction of the proxy's, so a failure leaves the database as it was.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlglot import exp

from handlers.errors import PgmlError
from handlers.functions import ACCEPTED_OIDS, Args, CallContext, Overload, no_such_function
from proxy import protocol as pg
from proxy.inband import (
    SYNC,
    Inband,
    Result,
    ServerError,
    encode_bind,
    encode_close,
    encode_describe,
    encode_execute,
    encode_parse,
)
from proxy.planner import DIALECT, CallSite, StatementPlan, contains

log = logging.getLogger("pgml_proxy.executor")

_FORWARDED_RESULTS = frozenset(b"TDCI")
"""RowDescription, DataRow, CommandComplete, EmptyQueryResponse."""

TEXT_OID = 25
"""Every value the proxy binds is sent as text and cast in the SQL to its type."""

CANCELLED = PgmlError("57014", "canceling statement due to user request")


class StatementFailed(Exception):
    """The statement's error has been sent to the client; stop the Query here."""


@dataclass
class Execution:
    """One client Query being run by the proxy."""

    inband: Inband
    context: CallContext
    batch_size: int = 256
    cancelled: Callable[[], bool] = lambda: False
    _temp_counter: int = 0
    _params: list[bytes | None] = field(default_factory=list)
    _temp_tables: list[str] = field(default_factory=list)

    async def report(self, error: PgmlError) -> None:
        """A Query that could not be planned: nothing of it runs, as with a syntax error."""
        await self._fail_own(error, owns_transaction=self.inband.status == b"I")

    async def run_planned(self, statements: list[str], plans: list[StatementPlan | None]) -> None:
        """Answer a simple Query; the caller sends the final ReadyForQuery."""
        plain: list[str] = []
        try:
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
        except StatementFailed:
            return

    async def _relay_plain(self, statements: list[str]) -> None:
        """Statements without pgml calls go to PostgreSQL as they were written."""
        self.inband.send(pg.message(b"Q", pg.cstring("".join(statements))))
        try:
            await self.inband.collect(forward=lambda m: m.type != pg.READY_FOR_QUERY)
        except ServerError as error:
            raise StatementFailed from error

    # --- one statement -------------------------------------------------------------

    async def _run_statement(self, plan: StatementPlan) -> None:
        owns_transaction = self.inband.status == b"I"
        self._params = []
        self._temp_tables = []
        try:
            if owns_transaction:
                await self.inband.query("BEGIN")
            pending = list(plan.calls)
            while pending:
                call = self._next_ready(pending)
                if call.scope is None:
                    await self._evaluate_constant(call)
                else:
                    await self._evaluate_per_row(call)
                pending.remove(call)
            await self._execute_final(plan.tree.sql(dialect=DIALECT))
            if owns_transaction:
                await self.inband.query("COMMIT")
            elif self._temp_tables:
                await self.inband.query("DROP TABLE " + ", ".join(self._temp_tables))
        except ServerError as error:
            self.inband.send_client(_without_position(error))
            if owns_transaction and self.inband.status != b"I":
                await self._quietly("ROLLBACK")
            raise StatementFailed from error
        except PgmlError as error:
            await self._fail_own(error, owns_transaction)
            raise StatementFailed from error

    def _next_ready(self, pending: list[CallSite]) -> CallSite:
        """A call none of whose inputs still holds another unevaluated call."""
        nodes = {id(c.node) for c in pending}
        for call in pending:
            inputs = list(call.args)
            if call.scope is not None:
                inputs.append(call.scope)
            inside = {id(n) for arg in inputs for n in arg.walk() if n is not call.node}
            if call.scope is not None:
                inside -= {id(n) for n in call.node.walk()}
            if not (inside & (nodes - {id(call.node)})):
                return call
        raise PgmlError(
            "0A000", "pgml calls depend on each other in a way that cannot be evaluated"
        )

    # --- constant calls ------------------------------------------------------------------

    async def _evaluate_constant(self, call: CallSite) -> None:
        types, values = await self._constant_arguments(call.args)
        overload, args = bind_arguments(call, types, values)
        result = None
        if not any(v is None for v in args):
            result = (await overload.handler(self.context, [args]))[0]
            self._check_cancel()
        _replace(call, self._substitute_constant(call, overload, result))

    async def _constant_arguments(
        self, args: Sequence[exp.Expr]
    ) -> tuple[list[tuple[int, str]], list[Any]]:
        if not args:
            return [], []
        inner = exp.select(*[exp.alias_(a.copy(), f"a{i}") for i, a in enumerate(args)])
        outer = ", ".join(
            f"pg_typeof(s.a{i})::oid, pg_typeof(s.a{i})::text, to_json(s.a{i})::text"
            for i in range(len(args))
        )
        result = await self._select(f"SELECT {outer} FROM ({inner.sql(dialect=DIALECT)}) AS s")
        row = result.rows[0]
        types = [(int(_text(row[3 * i])), _text(row[3 * i + 1])) for i in range(len(args))]
        values = [_json(row[3 * i + 2]) for i in range(len(args))]
        return types, values

    def _substitute_constant(self, call: CallSite, overload: Overload, result: Any) -> exp.Expr:
        if overload.set_returning:
            rows = [] if result is None else result
            param = self._param(
                text_array_literal([encode_value(overload.returns, r) for r in rows])
            )
            values = exp.cast(
                exp.Anonymous(this="unnest", expressions=[exp.cast(param, "text[]")]),
                overload.returns,
            )
            column = call.alias or call.function.name
            if call.in_from:
                derived = exp.select(exp.alias_(values, column, quoted=True)).subquery(
                    call.alias or call.function.name
                )
                return derived
            return _aliased(values, call.alias)
        value = exp.cast(self._param(encode_value(overload.returns, result)), overload.returns)
        if call.in_from:
            name = call.alias or call.function.name
            return exp.select(exp.alias_(value, name, quoted=True)).subquery(name)
        return _aliased(value, call.alias)

    # --- calls that read columns -----------------------------------------------------------

    async def _evaluate_per_row(self, call: CallSite) -> None:
        row_positions = [i for i, a in enumerate(call.args) if _reads_columns(a)]
        constant_positions = [i for i in range(len(call.args)) if i not in row_positions]
        const_types, const_values = await self._constant_arguments(
            [call.args[i] for i in constant_positions]
        )
        table, cursor = self._temp_name()
        collect = _collection_query(call, [call.args[i] for i in row_positions])
        await self._select(
            f"CREATE TEMP TABLE {table}_a ON COMMIT DROP AS "
            f"SELECT row_number() OVER () AS k, d.* FROM ({collect}) AS d"
        )
        described = await self._select(f"SELECT * FROM {table}_a LIMIT 0")
        row_types = [(c.type_oid, str(c.type_oid)) for c in described.columns[1:]]
        types: list[tuple[int, str]] = [(0, "")] * len(call.args)
        for position, found in zip(constant_positions, const_types, strict=True):
            types[position] = found
        for position, found in zip(row_positions, row_types, strict=True):
            types[position] = found
        overload = pick_overload(call, types)
        if not overload.row_dependent_ok:
            raise PgmlError(
                "0A000",
                f"set-returning {call.sql_name}({overload.params[1].type}) cannot read columns",
                hint="Call it with an array literal, or with one row's value per call.",
            )
        await self._select(
            f"CREATE TEMP TABLE {table}_v (k bigint, v {overload.returns}) ON COMMIT DROP"
        )
        fetch = ", ".join(f"to_json(a{i})::text" for i in range(len(row_positions)))
        await self.inband.query(
            f"DECLARE {cursor} NO SCROLL CURSOR FOR SELECT k, {fetch} FROM {table}_a"
        )
        while True:
            batch = await self._select(f"FETCH {self.batch_size} FROM {cursor}")
            if not batch.rows:
                break
            keys: list[str] = []
            tuples: list[Args] = []
            for row in batch.rows:
                values: list[Any] = [None] * len(call.args)
                for position, value in zip(constant_positions, const_values, strict=True):
                    values[position] = value
                for position, raw in zip(row_positions, row[1:], strict=True):
                    values[position] = _json(raw)
                _, args = bind_arguments(call, types, values, overload)
                if any(v is None for v in args):
                    continue
                keys.append(_text(row[0]))
                tuples.append(args)
            if tuples:
                results = await overload.handler(self.context, tuples)
                self._check_cancel()
                await self._insert_results(f"{table}_v", overload.returns, keys, results)
            self._check_cancel()
        await self.inband.query(f"CLOSE {cursor}")
        columns = ", ".join(f"a.a{i}" for i in range(len(row_positions)))
        await self._select(
            f"CREATE TEMP TABLE {table} ON COMMIT DROP AS SELECT {columns}, v.v "
            f"FROM {table}_a AS a JOIN {table}_v AS v USING (k)"
        )
        await self.inband.query(f"CREATE INDEX ON {table} USING hash (a0); ANALYZE {table}")
        self._temp_tables += [table, f"{table}_a", f"{table}_v"]
        lookup = exp.select("l.v").from_(exp.to_table(table).as_("l"))
        for index, position in enumerate(row_positions):
            lookup = lookup.where(
                exp.EQ(this=exp.column(f"a{index}", "l"), expression=call.args[position].copy())
            )
        _replace(call, _aliased(lookup.subquery(), call.alias))

    async def _insert_results(
        self, table: str, returns: str, keys: list[str], results: list[Any]
    ) -> None:
        encoded = [encode_value(returns, r) for r in results]
        await self._select(
            f"INSERT INTO {table} SELECT u.k, CAST(u.v AS {returns}) "
            "FROM unnest($1::bigint[], $2::text[]) AS u(k, v)",
            [text_array_literal(keys).encode(), text_array_literal(encoded).encode()],
        )

    # --- running SQL -------------------------------------------------------------------

    async def _select(self, sql: str, params: Sequence[bytes | None] | None = None) -> Result:
        """Run one helper statement with the extended protocol; nothing reaches the client."""
        bound = self._params if params is None else list(params)
        self.inband.send(
            encode_parse("__pgml_helper", sql, [TEXT_OID] * len(bound))
            + encode_bind("__pgml_helper", "__pgml_helper", bound)
            + encode_describe(b"P", "__pgml_helper")
            + encode_execute("__pgml_helper")
            + encode_close(b"P", "__pgml_helper")
            + encode_close(b"S", "__pgml_helper")
            + SYNC
        )
        results = await self.inband.collect()
        return results[0] if results else Result()

    async def _execute_final(self, sql: str) -> None:
        log.debug("final statement: %s", sql)
        self.inband.send(
            encode_parse("__pgml_final", sql, [TEXT_OID] * len(self._params))
            + encode_bind("__pgml_final", "__pgml_final", self._params)
            + encode_describe(b"P", "__pgml_final")
            + encode_execute("__pgml_final")
            + encode_close(b"P", "__pgml_final")
            + encode_close(b"S", "__pgml_final")
            + SYNC
        )
        await self.inband.collect(forward=lambda m: m.type in _FORWARDED_RESULTS)

    async def _quietly(self, sql: str) -> None:
        with contextlib.suppress(ServerError):
            await self.inband.query(sql)

    async def _fail_own(self, error: PgmlError, owns_transaction: bool) -> None:
        """Report an error of the proxy's; leave the transaction as PostgreSQL would."""
        self.inband.send_client(
            pg.PgError("ERROR", error.sqlstate, error.message, error.detail, error.hint).encode()
        )
        if owns_transaction:
            if self.inband.status != b"I":
                await self._quietly("ROLLBACK")
        elif self.inband.status == b"T":
            await self._quietly(
                "DO $$BEGIN RAISE EXCEPTION 'pgml call failed' "
                f"USING ERRCODE = '{error.sqlstate}'; END$$"
            )

    def _param(self, value: str | None) -> exp.Expr:
        self._params.append(None if value is None else value.encode("utf-8"))
        return exp.Parameter(this=exp.Literal.number(len(self._params)))

    def _temp_name(self) -> tuple[str, str]:
        """Names for a call's temporary tables and cursor, unique in this session."""
        self._temp_counter += 1
        return f"pg_temp.__pgml_{self._temp_counter}", f"__pgml_cursor_{self._temp_counter}"

    def _check_cancel(self) -> None:
        if self.cancelled():
            raise CANCELLED


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
    if kind == "jsonb":
        return json.dumps(value, ensure_ascii=False)
    if kind == "boolean":
        return "t" if value else "f"
    return str(value)


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


def _aliased(value: exp.Expr, alias: str | None) -> exp.Expr:
    return exp.alias_(value, alias, quoted=True) if alias else value


def _replace(call: CallSite, replacement: exp.Expr) -> None:
    """Put the call's value where the call stood, keeping casts or subscripts around it."""
    node = call.node
    wrapper: exp.Expr = node
    while isinstance(wrapper.parent, exp.Cast | exp.Bracket | exp.Paren) and (
        wrapper.parent.this is wrapper
    ):
        wrapper = wrapper.parent
    if isinstance(replacement, exp.Alias) and wrapper is not node:
        node.replace(replacement.this)
        wrapper.replace(exp.alias_(wrapper.copy(), replacement.alias, quoted=True))
        return
    node.replace(replacement)


def _without_position(error: ServerError) -> bytes:
    """The server's error for rewritten SQL: its cursor position means nothing to the user."""
    fields = {k: v for k, v in error.fields.items() if k not in ("P", "q", "p")}
    body = b"".join(k.encode() + pg.cstring(v) for k, v in fields.items()) + b"\x00"
    return pg.message(b"E", body)


def _collection_query(call: CallSite, args: Sequence[exp.Expr]) -> str:
    """SELECT DISTINCT of the arguments over the rows of the call's scope."""
    scope = call.scope
    assert scope is not None
    inner = exp.Select(expressions=[exp.alias_(a.copy(), f"a{i}") for i, a in enumerate(args)])
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
        if isinstance(scope, exp.Update) and scope.args.get("from_"):
            sources += [
                e.copy() for e in scope.args["from_"].expressions or [scope.args["from_"].this]
            ]
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
    columns = ", ".join(f"a{i}" for i in range(len(args)))
    return f"SELECT DISTINCT {columns} FROM ({inner.sql(dialect=DIALECT)}) AS s"


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
