"""Per-row calls where the session may not write: a READ ONLY transaction, a hot standby,
a role without ``TEMP``.

The step runs as over a materialised scope (see :mod:`proxy.engine.rows`), but ``M`` is
not a temporary table: the inner query's rows are read once through a portal, the calls
evaluated over them a batch at a time, and the query that takes the scope's place reads
the rows and their results from arrays written into its own text.  So nothing is created
in the database, each row is still produced once, and PostgreSQL still evaluates WHERE,
ORDER BY, grouping and the rest over them.  The rows pass through the proxy's memory, up
to :data:`CARRY_LIMIT` bytes of text a statement.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from sqlglot import exp

from handlers.errors import PgmlError
from handlers.functions import RECORD_OID, Args
from proxy import metrics
from proxy.engine import binding, values
from proxy.engine.names import own
from proxy.engine.planner import Parsed, off_loop
from proxy.engine.rows import (
    RowCall,
    anonymous_columns,
    authorize_rows,
    cast_argument,
    resolve_step,
)
from proxy.engine.scopes import ROW_KEY, M, ScopeStep, quote_ident

if TYPE_CHECKING:
    from proxy.engine.executor import Execution

CARRY_LIMIT = 256 * 1024 * 1024
"""The most text (rows and results) one statement carries through the proxy."""

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
    """The rows read so far: each one's carried column texts, then its calls' results."""

    columns: list[list[str | None]]
    size: int = 0
    known: list[dict[str, Any]] = field(default_factory=list)
    """Per call that does not vary, its result by argument tuple."""

    def add(self, row: list[str | None]) -> None:
        self.size += sum(len(v) for v in row if v is not None)
        if self.size > CARRY_LIMIT:
            raise PgmlError(
                "54000",
                f"the statement's rows and results exceed {CARRY_LIMIT >> 20} MB, the most "
                "a statement that may not write carries through the proxy",
                hint="Read fewer rows, or run the statement where temporary tables may be "
                "created (not READ ONLY, not on a standby).",
            )
        for column, value in zip(self.columns, row, strict=True):
            column.append(value)


async def run_carried(execution: Execution, parsed: Parsed, step: ScopeStep) -> str:
    """Read the scope's rows, evaluate the calls over them, and return the query (or
    statement) that takes the scope's place, the rows and results in its text."""
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
    types = await _type_names(execution, [resolved.columns[i] for i in kept])
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
        f"FROM ({step.inner}) AS s({', '.join(names)})) AS {M} ORDER BY {M}.{ROW_KEY}"
    )
    width = len(kept) + sum(_width(row) for row in rows)
    carried = _Carried([[] for _ in range(1 + width)], known=[{} for _ in rows])
    async for batch in _batches(execution, sql):
        await _evaluate(execution, rows, batch, len(kept), carried)
    return step.outer(
        resolved.by_slot,
        [
            f"__pgml_v{i}" if r.overload.set_returning else f"{M}.__pgml_v{i}"
            for i, r in enumerate(rows)
        ],
        await off_loop(_source, [names[i] for i in kept], types, rows, carried),
        [f"{M}.__pgml_n{i}" for i, r in enumerate(rows) if r.overload.set_returning],
    )


def _width(row: RowCall) -> int:
    """The carried columns of a call's results: its value, or a set's number and fields."""
    return 1 + len(row.overload.columns) if row.overload.set_returning else 1


async def _type_names(execution: Execution, columns: list[Any]) -> list[str]:
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
        decoded = [
            [
                values.decode(k, v)
                for k, v in zip(row.kinds, raw[position : position + count], strict=True)
            ]
            for raw in batch
        ]
        position += count
        results.append(await _results(execution, row, decoded, carried.known[index]))
    for r, text in enumerate(texts):
        expanded: list[list[str | None]] = [[]]
        for row, values_of in zip(rows, results, strict=True):
            expanded = _with_result(expanded, row, values_of[r])
        for tail in expanded:
            carried.add(text + tail)


def _with_result(
    heads: list[list[str | None]], row: RowCall, result: Any
) -> list[list[str | None]]:
    if not row.overload.set_returning:
        return [[*head, values.encode(row.returns, result)] for head in heads]
    kinds = [kind for _, kind in row.overload.columns]
    return [
        head + [str(n)] + [values.encode(k, v) for k, v in zip(kinds, part, strict=True)]
        for head in heads
        for n, part in enumerate(result or [], start=1)
    ]


async def _results(
    execution: Execution, row: RowCall, decoded: list[list[Any]], known: dict[str, Any]
) -> list[Any]:
    """The call's result for each row: NULL without a call where a STRICT call has a NULL
    argument; once per distinct arguments unless its results vary."""
    tuples: dict[str, Args] = {}
    keys: list[str | None] = []
    for n, arguments in enumerate(decoded):
        if row.overload.strict and any(a is None for a in arguments):
            keys.append(None)
            continue
        key = str(n) if row.varies else repr(arguments)
        keys.append(key)
        if key not in known and key not in tuples:
            tuples[key] = binding.bind(row.call, row.overload, arguments)
    wanted = list(tuples.values())
    await authorize_rows(execution, row, wanted)
    found = await execution.invoke(row.overload, wanted) if wanted else []
    metrics.record_rows(row.call.sql_name, len(wanted), len(found))
    fresh = dict(zip(tuples, found, strict=True))
    if not row.varies:
        known.update(fresh)
    return [None if key is None else fresh[key] if key in fresh else known[key] for key in keys]


def _source(names: list[str], types: list[str], rows: list[RowCall], carried: _Carried) -> str:
    """``M`` as a derived table of the carried arrays, each column cast to its type, and a
    set-returning call's fields as the record its lookup names."""
    labels = ["k"] + [f"x{j}" for j in range(len(carried.columns) - 1)]
    casts = [f"CAST(u.k AS bigint) AS {ROW_KEY}"]
    casts += [
        f"CAST(u.x{j} AS {kind}) AS {name}"
        for j, (name, kind) in enumerate(zip(names, types, strict=True))
    ]
    position = len(names)
    joins = []
    for i, row in enumerate(rows):
        if not row.overload.set_returning:
            casts.append(f"CAST(u.x{position} AS {row.returns}) AS __pgml_v{i}")
            position += 1
            continue
        casts.append(f"CAST(u.x{position} AS bigint) AS __pgml_n{i}")
        fields = []
        for j, (column, kind) in enumerate(row.overload.columns, start=1):
            casts.append(f"CAST(u.x{position + j} AS {kind}) AS __pgml_s{i}_{j}")
            fields.append(f"{M}.__pgml_s{i}_{j} AS {quote_ident(column)}")
        position += _width(row)
        joins.append(f" CROSS JOIN LATERAL (SELECT {', '.join(fields)}) AS __pgml_v{i}")
    arrays = ", ".join(
        f"CAST({_literal(values.text_array_literal(c))} AS text[])" for c in carried.columns
    )
    return (
        f"(SELECT {', '.join(casts)} FROM unnest({arrays}) AS u({', '.join(labels)})) AS {M}"
        + "".join(joins)
    )


def _literal(text: str) -> str:
    """``text`` as a dollar-quoted constant (read alike whatever the session's
    ``standard_conforming_strings``)."""
    while True:
        tag = f"$__pgml_{secrets.token_hex(4)}$"
        if tag not in text:
            return f"{tag}{text}{tag}"
