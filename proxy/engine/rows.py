"""Per-row calls: a step's rows materialised once, the calls evaluated over them a batch
at a time, and the query that takes the scope's place (see :mod:`proxy.engine.scopes`)."""

from __future__ import annotations

import asyncio
import functools
import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from sqlglot import exp

from handlers.functions import RECORD_OID, Args, Overload, PgmlError
from proxy.engine import binding, invoker, values
from proxy.engine.calls import CallSite, folded, reads_columns
from proxy.engine.constants import known_value
from proxy.engine.invoker import Invocation
from proxy.engine.names import own
from proxy.engine.planner import Parsed, off_loop
from proxy.engine.scopes import MARK, ROW_KEY, M, ScopeStep, Slot, quote_ident
from proxy.engine.upstream import Reply, Result, ServerError, Skipped
from proxy.wire.codec import Column

if TYPE_CHECKING:
    from proxy.engine.executor import Execution

_SET = "__pgml_r"
"""The alias of a set-returning call's result rows in outer queries (``_r0``, ...)."""
_NAMES = itertools.count(1)
"""Temporary tables and portals are numbered process-wide: a session may hold several
statements' at once (open cursors and portals)."""


@dataclass(eq=False)
class RowCall:
    """A per-row call of a step, resolved: where its arguments are, and the call made
    ready (its rows' batches run through :meth:`Invocation.run`)."""

    call: CallSite
    invocation: Invocation
    kinds: list[str]
    """Each argument's parameter type: the type its column is cast to."""
    columns: list[str]
    """Each argument's ``M`` column."""
    keeps_empty: bool = False
    """A set-returning call whose row stays, once, when it gives no rows (the step is
    :attr:`ScopeStep.numbered`)."""

    @property
    def overload(self) -> Overload:
        return self.invocation.overload

    @property
    def returns(self) -> str:
        return self.invocation.returns

    @property
    def varies(self) -> bool:
        return self.invocation.varies

    @functools.cached_property
    def _decoders(self) -> list[Callable[[bytes | None], Any]]:
        return [values.decoder(kind) for kind in self.kinds]

    def decode(self, raw: Sequence[bytes | None]) -> list[Any]:
        """One row's argument columns, as fetched, read as their types."""
        return [read(value) for read, value in zip(self._decoders, raw, strict=True)]


@dataclass(eq=False)
class Resolved:
    """A step's inner query described, and its calls resolved."""

    columns: list[Column]
    names: list[str]
    """The inner query's columns as ``M`` names them."""
    by_slot: list[list[tuple[str, str]]]
    """Each slot's columns: (``M`` name, the name PostgreSQL gave it)."""
    rows: list[RowCall]


async def resolve_step(execution: Execution, parsed: Parsed, step: ScopeStep) -> Resolved:
    """Describe the step's inner query, and resolve each call by its arguments' types."""
    described = await _describe(execution, step)
    groups = _group_columns(step.slots, described.columns)
    names = [f"c{i + 1}" for i in range(len(described.columns))]
    by_slot: list[list[tuple[str, str]]] = []
    position = 0
    for group in groups:
        by_slot.append([(names[position + j], c.name) for j, c in enumerate(group)])
        position += len(group)
    rows = [
        await _resolve(execution, parsed, step, i, call, groups, by_slot)
        for i, call in enumerate(step.calls)
    ]
    if sum(1 for r in rows if r.overload.set_returning) > 1:
        raise PgmlError(
            "0A000",
            "only one pgml function that returns a set can be called over columns in one "
            "select list",
            hint="Call each in a subquery of its own and join them.",
        )
    if any(r.overload.set_returning for r in rows):
        await _refuse_sets_beside(execution, parsed, step)
    return Resolved(described.columns, names, by_slot, rows)


async def _refuse_sets_beside(execution: Execution, parsed: Parsed, step: ScopeStep) -> None:
    """PostgreSQL runs the set-returning functions of one select list in step, the row
    count the longest one's.  A set-returning call over columns multiplies its row by its
    result rows, and a function beside it would multiply them again (and read its row
    once per result row): refused, as one set-returning call beside another is.  Which
    names return sets is PostgreSQL's to say (the caller's own functions included)."""
    functions = step.item_functions()
    pgml = {id(call.node): call for call in parsed.calls}
    names: set[str] = set()
    for node in functions:
        if isinstance(node, exp.Cast | exp.Case):  # syntax, not functions of pg_proc
            continue
        call = pgml.get(id(node.parent))  # a call is pgml.<function>: its Dot
        if call is not None:
            if any(o.set_returning for o in call.function.overloads):
                raise _beside(call.sql_name)
        elif isinstance(node, exp.Anonymous):
            names.add(folded(node.this))
        else:  # sqlglot's own class (unnest is its Explode): the name PostgreSQL reads
            names.add(node.sql(dialect="postgres").split("(", 1)[0].lower())
    if not names:
        return
    found = await execution.select(
        "SELECT min(proname::text) FROM pg_catalog.pg_proc WHERE proretset "
        "AND proname = ANY(CAST($1 AS name[]))",
        [values.client_bytes(values.text_array_literal(sorted(names)))],
    )
    if found.rows and found.rows[0][0] is not None:
        raise _beside(values.text(found.rows[0][0]))


def _beside(name: str) -> PgmlError:
    return PgmlError(
        "0A000",
        f"a pgml function that returns a set cannot be called over columns beside {name}, "
        "which returns a set too, in one select list",
        hint="Call one of them in a subquery of its own and join them.",
    )


def anonymous_columns(step: ScopeStep, resolved: Resolved) -> set[str]:
    """The ``M`` columns of arguments that are anonymous rows: kept as JSON, as a table
    cannot hold them."""
    found: set[str] = set()
    position = 0
    for slot, columns in zip(step.slots, resolved.by_slot, strict=True):
        if slot.kind == "arg":
            found.update(
                name
                for j, (name, _) in enumerate(columns)
                if resolved.columns[position + j].type_oid == RECORD_OID
            )
        position += len(columns)
    return found


async def run_step(execution: Execution, parsed: Parsed, step: ScopeStep) -> str:
    """Materialise the scope's rows, evaluate the calls over them, and return the
    query (or statement) that takes the scope's place."""
    resolved = await resolve_step(execution, parsed, step)
    names, by_slot, rows = resolved.names, resolved.by_slot, resolved.rows
    anonymous = anonymous_columns(step, resolved)
    fields = ", ".join(f"to_json(s.{n}) AS {n}" if n in anonymous else f"s.{n}" for n in names)
    number = next(_NAMES)
    table = f"pg_temp.{own(str(number))}"
    on_commit = " ON COMMIT DROP" if execution.drop_at_commit else ""
    created = [
        execution.request(
            f"CREATE TEMP TABLE {table}_m{on_commit} AS SELECT row_number() OVER () AS "
            f"{ROW_KEY}, {fields} FROM ({step.inner}) AS s({', '.join(names)})"
        )
    ]
    execution.temp_tables.append(f"{table}_m")
    if step.kind in ("update", "delete"):  # the outer statement finds rows by ctid
        created.append(execution.request(f"ANALYZE {table}_m"))
    prepared = [
        _prepare(execution, f"{table}_{i}", f"{table}_m", i, row, on_commit, created)
        for i, row in enumerate(rows)
    ]
    execution.upstream.flush()
    await _all(created)
    for i, (row, (_, arguments)) in enumerate(zip(rows, prepared, strict=True)):
        await _fill(execution, f"{table}_{i}_v", own(f"p{number}_{i}"), arguments, row)
    source = f"{table}_m AS {M}" + "".join(join for join, _ in prepared)
    lookups = [
        f"__pgml_v{i}" if row.overload.set_returning else f"__pgml_v{i}.__pgml_v"
        for i, row in enumerate(rows)
    ]
    ordinals = [f"{_SET}{i}.__pgml_n" for i, row in enumerate(rows) if row.overload.set_returning]
    return step.outer(by_slot, lookups, source, ordinals)


async def _describe(execution: Execution, step: ScopeStep) -> Result:
    name = execution.helper
    execution.upstream.parse(name, step.inner, execution.param_oids())
    reply = execution.upstream.describe(b"S", name)
    if name:
        execution.upstream.close(b"S", name)
    execution.upstream.flush()
    try:
        return await reply
    except ServerError as error:
        if error.sqlstate in ("42703", "42P01") and step.nested:
            raise PgmlError(
                "0A000",
                "pgml functions cannot be evaluated in a subquery that reads columns of "
                "an outer query",
                detail=error.fields.get("M"),
                hint="Qualify the columns with their table, or move the call to the outer query.",
            ) from error
        raise


async def _resolve(
    execution: Execution,
    parsed: Parsed,
    step: ScopeStep,
    index: int,
    call: CallSite,
    groups: list[list[Column]],
    by_slot: list[list[tuple[str, str]]],
) -> RowCall:
    oids = [0] * len(call.args)
    columns = [""] * len(call.args)
    for s, slot in enumerate(step.slots):
        if slot.kind == "arg" and slot.index == index:
            oids[slot.argument] = groups[s][0].type_oid
            columns[slot.argument] = by_slot[s][0][0]
    overload = invoker.pick(call, oids)
    if not overload.row_dependent_ok:
        raise PgmlError(
            "0A000",
            f"{call.sql_name}({', '.join(p.type for p in overload.params[:2])}) returns a "
            "set and cannot read columns",
            hint="Call it with an array literal, or with one row's value per call.",
        )
    if overload.set_returning and step.kind != "late":
        raise PgmlError(
            "0A000",
            f"{call.sql_name} returns a set: over columns, its rows can be filtered, grouped "
            "or made distinct only by a query around the one that calls it",
            hint="Call it in the select list of a subquery in FROM, and filter or order its "
            "columns in the query around it.",
        )
    kinds = [binding.parameter_type(call, overload, a) for a in range(len(call.args))]
    constants: list[Any] = []
    for arg, span in zip(call.args, call.text.arguments, strict=True):
        found = (
            None if reads_columns(arg) else known_value(execution, arg, parsed.text[slice(*span)])
        )
        constants.append(None if found is None else found.value)
    if binding.typed_by_project(call, overload) and reads_columns(
        call.args[invoker.project_argument(call, overload)]
    ):
        raise PgmlError(
            "0A000",
            f"{call.sql_name} needs the same project_name for every row",
            hint="Call it once per project, with the project's name as a literal.",
        )
    invocation = await invoker.prepare(execution, call, overload, constants)
    return RowCall(call, invocation, kinds, columns, overload.set_returning and step.numbered)


def _prepare(
    execution: Execution,
    name: str,
    materialised: str,
    index: int,
    row: RowCall,
    on_commit: str,
    replies: list[Reply],
) -> tuple[str, str]:
    """Tables for one call's arguments and results: the join that reads them in the
    outer query, and the query that reads the arguments to evaluate."""
    casts = [cast_argument(f"{M}.{c}", k) for c, k in zip(row.columns, row.kinds, strict=True)]
    strict = " AND ".join(f"{c} IS NOT NULL" for c in casts) if row.overload.strict else ""
    where = f" WHERE {strict}" if strict else ""
    table = f"{name}_v"
    if row.overload.set_returning:  # a row per result row, numbered in order
        fields = ", ".join(f"{quote_ident(n)} {k}" for n, k in row.overload.columns)
        replies.append(
            execution.request(
                f"CREATE TEMP TABLE {table} (__pgml_id bigint, __pgml_n bigint, {fields})"
                f"{on_commit}"
            )
        )
    else:
        replies.append(
            execution.request(
                f"CREATE TEMP TABLE {table} (__pgml_id bigint, __pgml_v {row.returns}){on_commit}"
            )
        )
    execution.temp_tables.append(table)

    def results(key: str) -> str:
        """The join of the results to the row whose result id is ``key``."""
        alias = f"__pgml_v{index}"
        if not row.overload.set_returning:
            return f" LEFT JOIN {table} AS {alias} ON {alias}.__pgml_id = {key}"
        # no result row, no row (PostgreSQL's ProjectSet) unless kept; the subquery's whole
        # row is the call's value, a record whose fields PostgreSQL knows by name
        found = f"{_SET}{index}"
        fields = ", ".join(f"{found}.{quote_ident(n)}" for n, _ in row.overload.columns)
        return (
            f" {'LEFT JOIN' if row.keeps_empty else 'JOIN'} {table} AS {found} "
            f"ON {found}.__pgml_id = {key}"
            f" CROSS JOIN LATERAL (SELECT {fields}) AS {alias}"
        )

    if row.varies:  # every row gets a value of its own
        fetch = ", ".join(
            values.fetch_expression(k, c) for k, c in zip(row.kinds, casts, strict=True)
        )
        return (
            results(f"{M}.{ROW_KEY}"),
            f"SELECT {M}.{ROW_KEY}, {fetch} FROM {materialised} AS {M}{where}",
        )
    distinct = f"__pgml_a{index}"
    labels = [f"a{j}" for j in range(len(casts))]
    replies.append(
        execution.request(
            f"CREATE TEMP TABLE {name}_a{on_commit} AS SELECT row_number() OVER () AS "
            f"__pgml_id, d.* FROM (SELECT DISTINCT {', '.join(casts)} FROM {materialised} "
            f"AS {M}{where}) AS d({', '.join(labels)})"
        )
    )
    execution.temp_tables.append(f"{name}_a")
    fetch = ", ".join(values.fetch_expression(k, a) for k, a in zip(row.kinds, labels, strict=True))
    match = " AND ".join(f"{distinct}.{a} = {c}" for a, c in zip(labels, casts, strict=True))
    return (
        f" LEFT JOIN {name}_a AS {distinct} ON {match}" + results(f"{distinct}.__pgml_id"),
        f"SELECT __pgml_id, {fetch} FROM {name}_a",
    )


async def _fill(
    execution: Execution, results: str, portal: str, arguments: str, row: RowCall
) -> None:
    """Run the call over its arguments a batch at a time, the next batch read while
    the model works on this one, each batch's results written with that read."""
    upstream = execution.upstream
    size = int(execution.services.batch_size)
    upstream.parse(portal, arguments)
    upstream.bind(portal, portal)
    upstream.close(b"S", portal)
    fetched = upstream.execute(portal, size)
    upstream.flush()
    written: list[Reply] = []
    batch = await fetched
    while True:
        ids, tuples = _arguments(row, batch)
        computing = asyncio.ensure_future(row.invocation.run(execution, tuples))
        upcoming = upstream.execute(portal, size) if batch.suspended else None
        upstream.flush()
        try:
            results_now = await computing
        finally:
            if not computing.done():
                computing.cancel()
        execution.check_cancel()
        if results_now:  # a batch of vectors is megabytes of text: written off the loop
            written.append(await _write(execution, results, row, ids, results_now))
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


async def _write(
    execution: Execution, table: str, row: RowCall, ids: list[str], results: list[Any]
) -> Reply:
    """Insert a batch's results: one row each, or for a set-returning call one row per
    row of each result, numbered in order."""
    columns: list[list[Any]]
    if row.overload.set_returning:
        kinds = ["bigint", "bigint", *(kind for _, kind in row.overload.columns)]
        columns = [
            [key for key, rows in zip(ids, results, strict=True) for _ in rows],
            [n for rows in results for n in range(1, len(rows) + 1)],
            *([r[j] for rows in results for r in rows] for j in range(len(kinds) - 2)),
        ]
    else:
        kinds = ["bigint", row.returns]
        columns = [ids, results]
    encoded = [
        await off_loop(values.encode_all, kind, column)
        for kind, column in zip(kinds, columns, strict=True)
    ]
    labels = [f"v{j}" for j in range(len(kinds))]
    arrays = ", ".join(f"CAST(${j + 1} AS text[])" for j in range(len(kinds)))
    casts = ", ".join(f"CAST(u.{v} AS {k})" for v, k in zip(labels, kinds, strict=True))
    return execution.request(
        f"INSERT INTO {table} SELECT {casts} FROM unnest({arrays}) AS u({', '.join(labels)})",
        [values.client_bytes(values.text_array_literal(e)) for e in encoded],
    )


def _arguments(row: RowCall, batch: Result) -> tuple[list[str], list[Args]]:
    ids: list[str] = []
    tuples: list[Args] = []
    bind = row.invocation.bind
    for raw in batch.rows:
        ids.append(values.text(raw[0]))
        tuples.append(bind(row.decode(raw[1:])))
    return ids, tuples


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


def cast_argument(column: str, kind: str) -> str:
    if kind == "record":  # a row is read as its JSON object, fields in order
        return f"CAST(to_json({column}) AS text)"
    collate = ' COLLATE "C"' if kind in ("text", "text[]") else ""
    return f"CAST({column} AS {kind}){collate}"


async def _all(replies: list[Reply]) -> None:
    """Wait for every reply; the first failure is raised (a skipped request's cause is
    the earlier failure, raised first)."""
    for reply in replies:
        await reply
