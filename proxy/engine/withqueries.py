"""WITH queries that a constant call's arguments read, read once.

PostgreSQL evaluates a WITH query once for its whole statement, so a call's argument
``(SELECT splitter FROM splitter)`` and the rest of the statement see the same rows.  The
proxy evaluates a constant call's arguments first, in a statement of its own; so the WITH
queries they read (and those these read) are run once, in order, in the client's
session, and their rows carried back as array parameters.  The arguments are evaluated
over the carried rows, and in the statement PostgreSQL runs each of those WITH queries is
replaced by its carried rows.  All of one caller's statements carry at most
``--max-carried-mb`` of text at once (:meth:`handlers.capacity.Capacity.carrying`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from sqlglot import exp

from handlers.functions import RECORD_OID, unsupported
from proxy.engine import values
from proxy.engine.calls import alias_name
from proxy.engine.carried import type_names
from proxy.engine.planner import Parsed
from proxy.engine.scopes import quote_ident
from proxy.engine.sourcetext import SourceText
from proxy.engine.split import with_closure
from proxy.engine.upstream import Result

if TYPE_CHECKING:
    from proxy.engine.executor import Execution


async def carry_with_queries(
    execution: Execution, parsed: Parsed, text: SourceText, names: set[str]
) -> str:
    """Run the statement's WITH queries in ``names``, and those they read, once each;
    replace each in ``text`` by its rows; return the WITH clause that defines them so,
    for the proxy's own statements over the calls' arguments."""
    ctes = _statement_ctes(parsed, names)
    needed = with_closure(names, {alias_name(c): c for c in ctes})
    start = parsed.sql.with_query(ctes[0])[0]
    head = "WITH RECURSIVE" if parsed.sql.word(start - 1) == "RECURSIVE" else "WITH"
    carried: list[str] = []
    with execution.services.capacity.carrying(execution.caller) as charge:
        for cte in ctes:
            name = alias_name(cte)
            if name not in needed:
                continue
            if not isinstance(cte.this, exp.Query):
                raise unsupported(
                    f'pgml functions in FROM cannot read WITH query "{name}", which changes '
                    "rows, in an argument",
                    hint="Change the rows in a statement of their own, then call the function.",
                )
            if any(call.node is node for call in parsed.calls for node in cte.this.walk()):
                raise unsupported(
                    f'pgml functions in FROM cannot read WITH query "{name}", which calls '
                    "pgml functions itself, in an argument",
                    hint="Call the function in the select list of that WITH query's reader.",
                )
            first, last = parsed.sql.with_query(cte)
            spelled = parsed.sql.source(first, first)  # its name as written
            written = parsed.sql.source(first, last)
            result = await execution.select(
                f"{head} {', '.join([*carried, written])} SELECT * FROM {spelled}"
            )
            definition = f"{spelled} AS ({await _rows(execution, name, result, charge)})"
            carried.append(definition)
            text.replace(parsed.sql.chars(first, last), definition)
    return f"WITH {', '.join(carried)} "


def _statement_ctes(parsed: Parsed, names: set[str]) -> list[exp.CTE]:
    """The statement's own WITH queries, where ``names`` are all among them."""
    with_ = parsed.tree.args.get("with_")
    ctes = list(with_.expressions) if with_ is not None else []
    missing = sorted(names - {alias_name(c) for c in ctes})
    if missing:
        raise unsupported(
            f'pgml functions in FROM cannot read WITH query "{missing[0]}" of a subquery '
            "in an argument",
            hint="Define the WITH query at the start of the statement, or read the table "
            "in the argument itself.",
        )
    return ctes


async def _rows(
    execution: Execution, name: str, result: Result, charge: Callable[[int], None]
) -> str:
    """A query of the WITH query's rows, from array parameters of the proxy's own, each
    column cast back to its type and named as it was."""
    columns = result.columns
    if not columns or any(c.type_oid == RECORD_OID for c in columns):
        raise unsupported(
            f'pgml functions in FROM cannot read WITH query "{name}" in an argument: a '
            "query of no columns, or of a row value of no named type, cannot be carried",
            hint="Select its columns one by one.",
        )
    texts: list[list[str | None]] = [[] for _ in columns]
    for row in result.rows:
        for column, value in zip(texts, row, strict=True):
            text = None if value is None else values.text(value)
            if text is not None:
                charge(len(text))
            column.append(text)
    arrays = [execution.add_param(values.text_array_literal(column)) for column in texts]
    kinds = await type_names(execution, columns)
    fields = ", ".join(
        f"CAST(u.c{i} AS {kind}) AS {quote_ident(column.name)}"
        for i, (column, kind) in enumerate(zip(columns, kinds, strict=True))
    )
    given = ", ".join(f"CAST({a} AS text[])" for a in arrays)
    labels = ", ".join(f"c{i}" for i in range(len(columns)))
    return f"SELECT {fields} FROM unnest({given}) AS u({labels})"
