"""Per-row calls where the session may not write: a READ ONLY transaction, a hot standby,
a role without ``TEMP``.

The step runs as over a materialised scope (see :mod:`proxy.engine.rows`), but ``M`` is
not a temporary table: the inner query's rows are read once through a portal, the calls
evaluated over them a batch at a time, and the query that takes the scope's place reads
the rows and their results (each distinct one once) from array parameters.  So nothing is created
in the database, each row is still produced once, and PostgreSQL still evaluates WHERE,
ORDER BY, grouping and the rest over them.  The rows pass through the proxy's memory:
all of one caller's statements carry at most ``--max-carried-mb`` of text at once
(:meth:`handlers.capacity.Capacity.carrying`).
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from sqlglot import exp

from handlers.functions import RECORD_OID, Args, PgmlError
from proxy.engine import values
from proxy.engine.names import own
from proxy.engine.planner import Parsed, off_loop
from proxy.engine.rows import (
    RowCall,
    anonymous_columns,
    cast_argument,
    resolve_step,
)
from proxy.engine.scopes import ROW_KEY, M, ScopeStep, quote_ident

if TYPE_CHECKING:
    from proxy.engine.executor import Execution

_WRITES_SQL = (
    "SELECT current_setting('transaction_read_only'), "
    "pg_catalog.has_database_privilege(current_database(), 'TEMPORARY')"
)
_COMMANDS: tuple[tuple[type[exp.Expr], str], ...] = (
    (exp.Insert, "INSERT"),
    (exp.Update, "UPDATE"),
    (exp.Delete, "DELETE"),
    (exp.Merge, "MERGE"),
    (exp.Create, "CREATE TABLE AS"),
)


async def may_create_temp_tables(execution: Execution, parsed: Parsed) -> bool:
    """Whether the session may create the temporary tables of a materialised scope.  In
    a read-only transaction a statement that writes gets PostgreSQL's own 25006 before
    any model runs."""
    result = await execution.select(_WRITES_SQL, [])
    read_only, temporary = (values.text(v) for v in result.rows[0])
    command = _writes(parsed.tree)
    if read_only == "on" and command is not None:
        command = parsed.command or command
        raise PgmlError("25006", f"cannot execute {command} in a read-only transaction")
    return read_only == "off" and temporary == "t"


def _writes(tree: exp.Expr) -> str | None:
    """The command PostgreSQL names when it refuses the statement in a read-only
    transaction (a SELECT whose WITH query changes rows is a SELECT to it)."""
    for kind, name in _COMMANDS:
        if isinstance(tree, kind):
            return name
    with_ = tree.args.get("with_")
    ctes = with_.expressions if with_ is not None else []
    if any(not isinstance(cte.this, exp.Query) for cte in ctes):
        return "SELECT"
    return None


@dataclass
class _Carried:
    """The rows read so far (each one's carried column texts, then for each call its
    result's number, or a set's row number and fields), and each call's distinct results."""

    columns: list[list[str | None]]
    results: list[list[str | None]]
    """Per call that returns one value: its distinct results, numbered from 1."""
    known: list[dict[str, Any]]
    """Per call: by its arguments, its result's number (or a set's rows); a call whose
    results vary is evaluated for each row, and known for its batch only."""
    charge: Callable[[int], None]
    """Counts text carried against the caller's limit (see ``Capacity.carrying``)."""

    def count(self, text: str | None) -> None:
        if text is not None:
            self.charge(len(text))

    def add(self, row: list[str | None]) -> None:
        for value in row:
            self.count(value)
        for column, value in zip(self.columns, row, strict=True):
            column.append(value)


async def run_carried(execution: Execution, parsed: Parsed, step: ScopeStep) -> str:
    """Read the scope's rows, evaluate the calls over them, and return the query (or
    statement) that takes the scope's place, the rows and results its parameters."""
    resolved = await resolve_step(execution, parsed, step)
    names, rows = resolved.names, resolved.rows
    arguments = {c for row in rows for c in row.columns}
    kept = [i for i, name in enumerate(names) if name not in arguments]
    if any(resolved.columns[i].type_oid == RECORD_OID for i in kept):
        raise PgmlError(
            "0A000",
            "a row value of no named type cannot be carried through the proxy in a "
            "statement that may not write",
            hint="Select its columns one by one.",
        )
    types = await type_names(execution, [resolved.columns[i] for i in kept])
    anonymous = anonymous_columns(step, resolved)
    fields = ", ".join(f"to_json(s.{n}) AS {n}" if n in anonymous else f"s.{n}" for n in names)
    fetch = (
        [f"{M}.{ROW_KEY}"]
        + [f"{M}.{names[i]}" for i in kept]
        + [
            values.fetch_expression(kind, cast_argument(f"{M}.{column}", kind))
            for row in rows
            for column, kind in zip(row.columns, row.kinds, strict=True)
        ]
    )
    sql = (
        f"SELECT {', '.join(fetch)} FROM (SELECT row_number() OVER () AS {ROW_KEY}, {fields} "
        f"FROM ({step.inner}) AS s({', '.join(names)})) AS {M}"
    )
    width = len(kept) + sum(_width(row) for row in rows)
    with execution.services.capacity.carrying(execution.caller) as charge:
        carried = _Carried(
            [[] for _ in range(1 + width)], [[] for _ in rows], [{} for _ in rows], charge
        )
        async for batch in _batches(execution, sql):
            await _evaluate(execution, rows, batch, len(kept), carried)
        arrays = [
            execution.add_param(literal)
            for literal in await off_loop(_literals, carried.columns + carried.results)
        ]
    lookups = [
        f"__pgml_v{i}" if r.overload.set_returning else f"__pgml_v{i}.v" for i, r in enumerate(rows)
    ]
    return step.outer(
        resolved.by_slot,
        lookups,
        _source([names[i] for i in kept], types, rows, arrays),
        [f"{M}.__pgml_n{i}" for i, r in enumerate(rows) if r.overload.set_returning],
    )


def _literals(columns: list[list[str | None]]) -> list[str]:
    return [values.text_array_literal(column) for column in columns]


def _width(row: RowCall) -> int:
    """The carried columns of a call's results: its value, or a set's number and fields."""
    return 1 + len(row.overload.columns) if row.overload.set_returning else 1


async def type_names(execution: Execution, columns: list[Any]) -> list[str]:
    """Each column's type as SQL names it (``format_type``), to cast its text back."""
    if not columns:
        return []
    oids = values.text_array_literal([str(c.type_oid) for c in columns])
    mods = values.text_array_literal([str(c.type_modifier) for c in columns])
    result = await execution.select(
        "SELECT pg_catalog.format_type(t.o, t.m) FROM unnest(CAST($1 AS oid[]), "
        "CAST($2 AS int[])) WITH ORDINALITY AS t(o, m, i) ORDER BY t.i",
        [oids.encode(), mods.encode()],
    )
    return [values.text(row[0]) for row in result.rows]


async def _batches(execution: Execution, sql: str) -> Any:
    """The rows of ``sql`` (with the statement's parameters) a batch at a time, the next
    batch read while this one is evaluated."""
    upstream = execution.upstream
    size = int(execution.services.batch_size)
    portal = own(f"c{secrets.token_hex(4)}")
    upstream.parse(portal, sql, execution.param_oids())
    upstream.bind(portal, portal, execution.param_values(), execution.param_formats())
    upstream.close(b"S", portal)
    fetched = upstream.execute(portal, size)
    upstream.flush()
    while True:
        batch = await fetched
        if batch.suspended:
            fetched = upstream.execute(portal, size)
            upstream.flush()
        yield batch.rows
        if not batch.suspended:
            break
    upstream.close(b"P", portal)
    upstream.flush()


async def _evaluate(
    execution: Execution,
    rows: list[RowCall],
    batch: list[list[bytes | None]],
    kept: int,
    carried: _Carried,
) -> None:
    """Evaluate each call over the batch's rows and keep the rows with their results (a
    set-returning call's row once per result row, none for an empty set)."""
    texts = [[None if v is None else values.text(v) for v in raw[: 1 + kept]] for raw in batch]
    results: list[list[Any]] = []
    position = 1 + kept
    for index, row in enumerate(rows):
        count = len(row.kinds)
        decoded = [row.decode(raw[position : position + count]) for raw in batch]
        position += count
        results.append(await _results(execution, row, decoded, carried, index))
    for r, text in enumerate(texts):
        expanded: list[list[str | None]] = [text]
        for row, found in zip(rows, results, strict=True):
            expanded = _with_result(expanded, row, found[r])
        for carried_row in expanded:
            carried.add(carried_row)


def _with_result(
    heads: list[list[str | None]], row: RowCall, result: Any
) -> list[list[str | None]]:
    """Each row with a call's result: its number, or a set's rows (none: no row, or one
    row numbered NULL where the call keeps it)."""
    if not row.overload.set_returning:
        return [[*head, None if result is None else str(result)] for head in heads]
    kinds = [kind for _, kind in row.overload.columns]
    if not result and row.keeps_empty:
        return [[*head, *[None] * (1 + len(kinds))] for head in heads]
    return [
        [*head, str(n), *(values.encode(k, v) for k, v in zip(kinds, part, strict=True))]
        for head in heads
        for n, part in enumerate(result or [], start=1)
    ]


async def _results(
    execution: Execution, row: RowCall, decoded: list[list[Any]], carried: _Carried, index: int
) -> list[Any]:
    """The call's result for each row (a number among its distinct results, or a set's
    rows): NULL without a call where a STRICT call has a NULL argument; once per distinct
    arguments unless its results vary."""
    known: dict[str, Any] = {} if row.varies else carried.known[index]
    tuples: dict[str, Args] = {}
    keys: list[str | None] = []
    for n, arguments in enumerate(decoded):
        if row.overload.strict and any(a is None for a in arguments):
            keys.append(None)
            continue
        key = str(n) if row.varies else repr(arguments)
        keys.append(key)
        if key not in known and key not in tuples:
            tuples[key] = row.invocation.bind(arguments)
    found = await row.invocation.run(execution, list(tuples.values()))
    distinct = carried.results[index]
    if row.overload.set_returning:
        known.update(zip(tuples, found, strict=True))
    else:
        encoded = await off_loop(values.encode_all, row.returns, found)
        for key, text in zip(tuples, encoded, strict=True):
            carried.count(text)
            if text is not None:
                distinct.append(text)
            known[key] = None if text is None else len(distinct)
    return [None if key is None else known[key] for key in keys]


def _source(names: list[str], types: list[str], rows: list[RowCall], arrays: list[str]) -> str:
    """``M`` as a derived table of the carried arrays (the statement's parameters named in
    ``arrays``: the columns, then each call's distinct results), each column cast to its
    type, joined with each call's results: a value by its number, or a set's fields as
    the record its lookup names."""
    columns, distinct = arrays[: len(arrays) - len(rows)], arrays[len(arrays) - len(rows) :]
    labels = ["k"] + [f"x{j}" for j in range(len(columns) - 1)]
    casts = [f"CAST(u.k AS bigint) AS {ROW_KEY}"]
    casts += [
        f"CAST(u.x{j} AS {kind}) AS {name}"
        for j, (name, kind) in enumerate(zip(names, types, strict=True))
    ]
    position = len(names)
    joins = []
    for i, row in enumerate(rows):
        if not row.overload.set_returning:
            casts.append(f"CAST(u.x{position} AS bigint) AS __pgml_i{i}")
            joins.append(
                f" LEFT JOIN (SELECT r.n, CAST(r.v AS {row.returns}) AS v FROM "
                f"unnest(CAST({distinct[i]} AS text[])) WITH ORDINALITY AS r(v, n) OFFSET 0) AS "
                f"__pgml_v{i} ON __pgml_v{i}.n = {M}.__pgml_i{i}"
            )
            position += 1
            continue
        casts.append(f"CAST(u.x{position} AS bigint) AS __pgml_n{i}")
        fields = []
        for j, (column, kind) in enumerate(row.overload.columns, start=1):
            casts.append(f"CAST(u.x{position + j} AS {kind}) AS __pgml_s{i}_{j}")
            fields.append(f"{M}.__pgml_s{i}_{j} AS {quote_ident(column)}")
        position += _width(row)
        joins.append(f" CROSS JOIN LATERAL (SELECT {', '.join(fields)}) AS __pgml_v{i}")
    given = ", ".join(f"CAST({a} AS text[])" for a in columns)
    # OFFSET 0: each value cast once, not wherever the query around reads it
    return (
        f"(SELECT {', '.join(casts)} FROM unnest({given}) AS u({', '.join(labels)}) OFFSET 0) "
        f"AS {M}" + "".join(joins)
    )
