"""Calls in the select list of a whole SELECT, evaluated on its rows as they stream.

``SELECT id, pgml.embed('m', body) FROM docs WHERE ...`` is the common shape: its calls'
values are wanted only in the rows the client receives.  PostgreSQL runs the statement
once, each call replaced by a typed NULL (so the columns are named and typed as the
call's) and the calls' arguments added as the last columns.  The proxy reads its rows a
batch at a time from a suspended portal, evaluates the calls on the batch, has PostgreSQL
write the values in the client's formats (its own output functions and settings), and
sends the rows with the values in place and the arguments left out.

Nothing is created in the database, so the statement runs in READ ONLY transactions, on
hot standbys and for roles without TEMP; each row is read once, and the backend stays
inside the statement throughout, with the statement's snapshot, locks and controls.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from sqlglot import exp

from handlers.functions import Args
from proxy import metrics
from proxy.engine import values
from proxy.engine.names import own
from proxy.engine.planner import Parsed, named_scalar, off_loop
from proxy.engine.rows import RowCall, resolve_step
from proxy.engine.scopes import ScopeStep
from proxy.engine.upstream import Reply, Result
from proxy.wire import codec

if TYPE_CHECKING:
    from proxy.engine.executor import Execution

_NAMES = itertools.count(1)
_FETCHED = 8
"""Model batches of rows read from PostgreSQL at a time: the round trip is paid once for
them, and rows whose values are known cost no model work."""
_KNOWN = 4096
"""Values (as text) kept per call for arguments met again; then forgotten, all at once."""
_STATEMENT = own("inline")
_FORMAT = own("format")
_READS_ROWS = (
    exp.Column,
    exp.Star,
    exp.Subquery,
    exp.Select,
    exp.Placeholder,
    exp.Parameter,
    exp.AggFunc,
    exp.Window,
)
"""What an item around a call may not hold: its value must follow from the calls' alone."""
_VOLATILE = (exp.Anonymous, exp.Rand, exp.Uuid)
"""Functions in an item that may give another value for the same input (a function
sqlglot does not know may be one): without them, the item's value follows from its
calls' values, so it is written once for each set of them."""


@dataclass(eq=False)
class Inline:
    """A statement whose select-list calls are evaluated on its rows as they stream."""

    statement: str
    """What PostgreSQL runs: the calls as typed NULLs, their arguments last."""
    calls: list[RowCall]
    width: int
    """The client's columns (the arguments follow them)."""
    items_at: list[int]
    """Each item holding calls: its column among the client's."""
    arguments: list[list[int]]
    """Each call's arguments: their columns in the rows PostgreSQL sends."""
    formatting: str
    """The query that turns the calls' values (text arrays, one per call) into the items'
    values, a row per row, in the client's formats."""
    reusable: bool = False
    """The items' values follow from the calls' values alone (nothing volatile besides
    the calls): written once for each set of them."""
    known: list[dict[tuple[bytes | None, ...], str | None]] = field(default_factory=list)
    """Each call's values by its arguments so far (as PostgreSQL sent them), for calls
    whose value follows from them: a value met again is not evaluated again."""
    formatted: dict[tuple[str | None, ...], list[bytes | None]] = field(default_factory=dict)
    """The items' values as written, by the calls' values (when reusable)."""


def fits(parsed: Parsed, step: ScopeStep) -> bool:
    """Whether the step's calls can be evaluated on the statement's rows as they stream:
    a plain SELECT whose calls stand only in items whose values follow from them."""
    if step.kind != "late" or step.nested or step.exports or step.filters:
        return False
    if parsed.declares_cursor:
        return False
    if step.scope is not parsed.tree or len(step.calls) != len(parsed.calls):
        return False
    start, end = step.span
    if parsed.text[:start].strip() or parsed.text[end:].strip(" \t\r\n;"):
        return False
    calls = {id(c.node) for c in step.calls}
    return all(_holds_none(item, calls, _READS_ROWS) for item in step.null_items())


def _holds_none(node: exp.Expr, calls: set[int], kinds: tuple[type, ...]) -> bool:
    """Whether ``node`` holds nothing of ``kinds`` outside the calls in it."""
    if id(node) in calls:
        return True
    if isinstance(node, kinds):
        return False
    return all(_holds_none(child, calls, kinds) for child in node.iter_expressions())


async def plan(execution: Execution, parsed: Parsed, step: ScopeStep) -> Inline | None:
    """The statement to stream, or None where a call cannot be evaluated so (one that
    returns a set or a table: it is evaluated with its scope materialised)."""
    resolved = await resolve_step(execution, parsed, step)
    rows = resolved.rows
    if any(r.overload.set_returning or r.overload.columns for r in rows):
        return None
    stand_ins = [named_scalar(f"CAST(NULL AS {r.returns})", r.call.function.name) for r in rows]
    read = [_read(kind) for r in rows for kind in r.kinds]
    statement = step.inline_text(stand_ins, read)
    argument_count = sum(len(r.call.args) for r in rows)
    width = len(resolved.columns) - argument_count
    items_at: list[int] = []
    position = 0
    for slot, columns in zip(step.slots, resolved.by_slot, strict=True):
        if slot.kind == "null":
            items_at.append(position)
        position += len(columns)
    arguments: list[list[int]] = []
    first = width
    for row in rows:
        arguments.append(list(range(first, first + len(row.call.args))))
        first += len(row.call.args)
    lookups = [f"CAST(u.v{i} AS {r.returns})" for i, r in enumerate(rows)]
    arrays = ", ".join(f"CAST(${i + 1} AS text[])" for i in range(len(rows)))
    names = ", ".join([f"v{i}" for i in range(len(rows))] + ["n"])
    formatting = (
        f"SELECT {', '.join(step.inline_items(lookups))} FROM unnest({arrays}) "
        f"WITH ORDINALITY AS u({names}) ORDER BY u.n"
    )
    calls = {id(r.call.node) for r in rows}
    reusable = all(_holds_none(item, calls, _VOLATILE) for item in step.null_items())
    return Inline(
        statement, rows, width, items_at, arguments, formatting, reusable, [{} for _ in rows]
    )


def _read(kind: str) -> str:
    """How an argument of type ``kind`` is read (its text at ``{}``), as :func:`values.decode`
    takes it: a row as its JSON object, arrays as JSON."""
    if kind == "record":
        return "CAST(to_json({}) AS text)"
    return values.fetch_expression(kind, f"CAST({{}} AS {kind})")


def result_formats(formats: Sequence[int], width: int) -> list[int] | None:
    """The client's result formats, one per column (None: not a count PostgreSQL takes)."""
    if not formats:
        return [0] * width
    if len(formats) == 1:
        return [formats[0]] * width
    return list(formats) if len(formats) == width else None


async def send(execution: Execution, inline: Inline, formats: list[int], *, describe: bool) -> None:
    """Run the statement and send the client its rows with the calls' values, then its
    tag; ``describe``: its RowDescription first (a simple Query's).  Raises PostgreSQL's
    error (:class:`~proxy.engine.upstream.ServerError`) or the proxy's."""
    upstream = execution.upstream
    number = next(_NAMES)
    portal, formatter = own(f"rows_{number}"), own(f"values_{number}")
    size = int(execution.services.batch_size) * _FETCHED
    prepared = [
        upstream.parse(_STATEMENT, inline.statement, execution.param_oids()),
        upstream.bind(
            portal,
            _STATEMENT,
            execution.param_values(),
            execution.param_formats(),
            formats + [0] * sum(map(len, inline.arguments)),
        ),
        upstream.close(b"S", _STATEMENT),
        upstream.parse(_FORMAT, inline.formatting, [values.TEXT_ARRAY_OID] * len(inline.calls)),
    ]
    described = upstream.describe(b"P", portal) if describe else None
    fetched = upstream.execute(portal, size)
    upstream.flush()
    for reply in prepared:  # PostgreSQL's error (a permission, a type) is the statement's
        await reply
    if described is not None:
        body = (await described).row_description
        assert body is not None
        upstream.local(codec.row_description_prefix(body, inline.width))
    item_formats = [formats[i] for i in inline.items_at]
    sent = 0
    started, ok = time.perf_counter(), False
    try:
        while True:
            batch = await fetched
            upcoming = upstream.execute(portal, size) if batch.suspended else None
            upstream.flush()
            if batch.rows:
                formatted = await _values(execution, inline, batch, formatter, item_formats)
                upstream.local(await off_loop(_rows, inline, batch.rows, formatted))
                sent += len(batch.rows)
            if upcoming is None:
                break
            fetched = upcoming
        ok = True
    finally:
        for row in inline.calls:
            metrics.record_call(row.call.sql_name, ok, time.perf_counter() - started)
        upstream.close(b"P", portal)
        upstream.close(b"P", formatter)
        upstream.close(b"S", _FORMAT)
        upstream.flush()
    upstream.local(codec.command_complete(f"SELECT {sent}"))


async def _values(
    execution: Execution, inline: Inline, batch: Result, formatter: str, formats: list[int]
) -> list[list[bytes | None]]:
    """The items' values for the batch's rows, as PostgreSQL writes them for the client:
    asked once for each set of the calls' values where the items follow from those alone
    (:attr:`Inline.reusable`), else for each row."""
    per_call = [
        await _evaluate(execution, row, columns, batch.rows, known)
        for row, columns, known in zip(inline.calls, inline.arguments, inline.known, strict=True)
    ]
    execution.check_cancel()
    if not inline.reusable:
        return await _written(execution, formatter, per_call, formats)
    keys = list(zip(*per_call, strict=True))
    formatted = inline.formatted
    missing = list(dict.fromkeys(k for k in keys if k not in formatted))
    fresh: dict[tuple[str | None, ...], list[bytes | None]] = {}
    if missing:
        columns = [list(column) for column in zip(*missing, strict=True)]
        written = await _written(execution, formatter, columns, formats)
        fresh = dict(zip(missing, written, strict=True))
    rows = [fresh[k] if k in fresh else formatted[k] for k in keys]
    if len(formatted) + len(fresh) > _KNOWN:
        formatted.clear()
    formatted.update(fresh)
    return rows


async def _written(
    execution: Execution,
    formatter: str,
    per_call: list[list[str | None]],
    formats: list[int],
) -> list[list[bytes | None]]:
    """The items' values, a row for each position of the calls' values (text)."""
    upstream = execution.upstream
    texts: list[bytes | None] = [
        values.client_bytes(values.text_array_literal(column)) for column in per_call
    ]
    upstream.bind(formatter, _FORMAT, texts, [], formats)
    written: Reply = upstream.execute(formatter)
    upstream.flush()
    return (await written).rows


async def _evaluate(
    execution: Execution,
    row: RowCall,
    columns: list[int],
    rows: list[list[bytes | None]],
    known: dict[tuple[bytes | None, ...], str | None],
) -> list[str | None]:
    """One call's value for each row, as text: evaluated once for each set of arguments
    not met before (for each row, where the value varies), NULL without a call where the
    function is strict and an argument is NULL."""
    keys: list[tuple[bytes | None, ...] | None] = []
    fresh: dict[tuple[bytes | None, ...], int] = {}
    given: list[Args] = []
    bind = row.invocation.bind
    for number, raw in enumerate(rows):
        arguments = tuple(raw[c] for c in columns)
        if row.overload.strict and None in arguments:
            keys.append(None)
            continue
        key = (str(number).encode(), *arguments) if row.varies else arguments
        if key not in known and key not in fresh:
            fresh[key] = len(given)
            given.append(bind(row.decode(arguments)))
        keys.append(key)
    results = await row.invocation.run(execution, given)
    encoded = await off_loop(values.encode_all, row.returns, results)
    batch = {key: encoded[index] for key, index in fresh.items()}
    values_now = [None if key is None else batch.get(key, known.get(key)) for key in keys]
    if not row.varies:
        if len(known) + len(batch) > _KNOWN:
            known.clear()
        known.update(batch)
    return values_now


def _rows(
    inline: Inline, rows: list[list[bytes | None]], formatted: list[list[bytes | None]]
) -> bytes:
    """The client's DataRows: PostgreSQL's columns, the items' values in their places."""
    out = []
    width, places = inline.width, inline.items_at
    for raw, items in zip(rows, formatted, strict=True):
        row = raw[:width]
        for place, value in zip(places, items, strict=True):
            row[place] = value
        out.append(codec.data_row(row))
    return b"".join(out)
