"""A call in FROM over the columns of the FROM items before it (``FROM docs d,
pgml.chunk('character', d.body) c``, also written ``LATERAL`` or ``CROSS JOIN``).

PostgreSQL calls such a function once for each row of the items before it.  The
statement is read as its equivalent whose call stands in a select list, where the engine
evaluates per-row calls::

    FROM (SELECT d."id" AS __pgml_l0, d."body" AS __pgml_l1,
                 pgml.chunk('character', d.body) AS __pgml_lc
          FROM docs d) AS __pgml_lx,
         LATERAL (SELECT __pgml_lx.__pgml_l0 AS "id", __pgml_lx.__pgml_l1 AS "body") AS d,
         LATERAL (SELECT (__pgml_lx.__pgml_lc).*) AS c

Each item keeps its name and its columns' names and types (PostgreSQL is asked them: a
Describe of the items alone, in the statement's WITH queries), so the rest of the
statement reads them as written; a ``*`` of the select list is spelt as each item's
``.*`` so that the carrier adds no column.  Each row of the items is produced once and
the call evaluated once for it.

A set-returning call is followed in the carrier by the :data:`~proxy.engine.scopes.ORDINAL`
item: each result row's number, NULL on the one row kept for an item row whose call gave
none.  The call's derived table reads the numbered rows only, so PostgreSQL drops such a
row (a comma, ``CROSS`` or inner ``JOIN``) or joins it to NULLs (``LEFT JOIN ... ON
true``), and ``WITH ORDINALITY`` reads the number.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from sqlglot import TokenType, exp

from handlers.functions import unsupported
from proxy.engine import analysis, binding
from proxy.engine.calls import LATERAL_HINT, CallSite, alias_name, contains, item_name, items_before
from proxy.engine.names import own
from proxy.engine.planner import Parsed, parse, skeleton
from proxy.engine.scopes import ORDINAL, quote_ident
from proxy.engine.sourcetext import SourceText
from proxy.engine.sqltext import SqlText

if TYPE_CHECKING:
    from proxy.engine.executor import Execution

CARRIER = own("lx")
"""The derived table of the items' rows and the call's value."""
_VALUE = "__pgml_lc"
_SEPARATOR = "__pgml_ls"


@dataclass
class _Item:
    """A FROM item before the call: the name the statement reads it by."""

    name: str
    columns: list[str]


async def rewrite(execution: Execution, parsed: Parsed, call: CallSite) -> str:
    """The statement with ``call`` (a call in FROM over the items before it) read in the
    select list of the items' own query."""
    sql = parsed.sql
    join = _holder(call).parent
    assert isinstance(join, exp.Join) and isinstance(join.parent, exp.Select)
    select = join.parent
    side = str(join.args.get("side") or "").upper()
    if side in ("RIGHT", "FULL"):  # a column of an item before it: PostgreSQL's refusal
        oids = execution.user.oids
        await analysis.describe_text(
            execution.upstream, skeleton(parsed, oids, execution.label_types or {}), oids
        )
        raise unsupported(f"{call.sql_name} over columns cannot be joined with {side} JOIN")
    if sum(c.lateral and _select_of(c) is select for c in parsed.calls) > 1:
        raise unsupported(
            "pgml functions over columns in FROM: one in a FROM list",
            hint="Call the second in the select list of a query over the first's rows.",
        )
    layout = sql.select_layout(select)
    first = layout.clauses["from"][0] + 1
    start = sql.by_start[call.text.span[0]]
    lateral = sql.word(start - 1) == "LATERAL"
    last = _before_join(sql, start - 1 - lateral)
    names = [_reference(item) for item in items_before(select, join)]
    if any(n is None for n in names):
        raise unsupported(f"{call.sql_name} over columns needs each FROM item before it named")
    items = await _columns(execution, parsed, select, [n for n in names if n], first, last)
    pieces: list[str] = []
    outer: list[str] = []
    n = 0
    for item in items:
        fields = []
        for column in item.columns:
            pieces.append(f"{quote_ident(item.name)}.{quote_ident(column)} AS __pgml_l{n}")
            fields.append(f"{CARRIER}.__pgml_l{n} AS {quote_ident(column)}")
            n += 1
        outer.append(f"LATERAL (SELECT {', '.join(fields)}) AS {quote_ident(item.name)}")
    pieces.append(f"{_call_alone(sql, call)} AS {_VALUE}")
    oids = binding.syntax_oids(call, execution.user.oids)
    overload = binding.pick_overload(call, oids)
    if overload.set_returning:  # each result row numbered; none: one row numbered NULL
        pieces.append(f"CAST(NULL AS bigint) AS {ORDINAL}")
    text = SourceText(parsed.text)
    carrier = f"(SELECT {', '.join(pieces)} FROM {sql.source(first, last)}) AS {CARRIER}"
    text.replace(sql.chars(first, last), ", ".join([carrier, *outer]))
    name = call.alias or call.function.name
    read = f"({CARRIER}.{_VALUE}).*" if overload.columns else f"{CARRIER}.{_VALUE}"
    if not overload.columns and not (call.alias_node is not None and call.alias_node.columns):
        read += f" AS {quote_ident(name)}"
    if call.ordinality:
        number = f"{CARRIER}.{ORDINAL}" if overload.set_returning else "CAST(1 AS bigint)"
        read += f", {number} AS ordinality"
    found = f" WHERE {CARRIER}.{ORDINAL} IS NOT NULL" if overload.set_returning else ""
    value = f"(SELECT {read}{found})"
    if call.alias_node is None:
        value += f" AS {quote_ident(name)}"
    text.replace(call.text.span, value if lateral else f"LATERAL {value}")
    if any(isinstance(item, exp.Star) for item in select.expressions):
        after = [_reference(j.this) for j in select.args.get("joins") or [] if _after(j, join)]
        if any(a is None for a in after) or any(
            j.args.get("using") or j.args.get("method")
            for j in select.args.get("joins") or []
            if _after(j, join)
        ):
            raise unsupported(
                f"{call.sql_name} over columns cannot be read with SELECT * beside these items",
                hint="Name the columns.",
            )
        every = [i.name for i in items] + [name] + [a for a in after if a]
        spelt = ", ".join(f"{quote_ident(n)}.*" for n in every)
        for item, where in zip(select.expressions, layout.items, strict=True):
            if isinstance(item, exp.Star):
                text.replace(sql.chars(*where), spelt)
    return text.render()


def _call_alone(sql: SqlText, call: CallSite) -> str:
    """The call's text, without the ``WITH ORDINALITY`` its span takes in."""
    start, end = call.text.span
    if call.ordinality:  # the words' two tokens end the span
        end = sql.tokens[sql.by_end[end - 1] - 2].end + 1
    return sql.text[start:end]


def _holder(call: CallSite) -> exp.Expr:
    """The call's FROM item: the call, or the ``LATERAL`` around it."""
    return call.node.parent if isinstance(call.node.parent, exp.Lateral) else call.node


def _select_of(call: CallSite) -> exp.Expr | None:
    join = _holder(call).parent
    return join.parent if join is not None else None


def _after(candidate: exp.Join, join: exp.Join) -> bool:
    assert join.parent is not None
    joins = join.parent.args.get("joins") or []
    return joins.index(candidate) > joins.index(join)


def _reference(item: exp.Expr) -> str | None:
    """The name a FROM item is read by (its alias, a table's or a function's own name),
    as PostgreSQL folds it; None for an item without one."""
    if isinstance(item, exp.Join):
        item = item.this
    name = item_name(item)
    if name:
        return name
    if isinstance(item, exp.Table) and isinstance(item.this, exp.Anonymous | exp.Func):
        return item.this.sql_name().lower() if isinstance(item.this, exp.Func) else None
    return None


def _before_join(sql: SqlText, i: int) -> int:
    """The last token of the FROM items before a call whose join word ends at token
    ``i`` (a comma, ``CROSS JOIN`` or ``[INNER] JOIN``)."""
    if sql.kind(i) == TokenType.COMMA:
        return i - 1
    if sql.word(i) == "JOIN":
        if sql.word(i - 1) == "OUTER":  # LEFT OUTER JOIN
            return i - 3
        return i - 2 if sql.word(i - 1) in ("CROSS", "INNER", "LEFT") else i - 1
    raise unsupported(
        "pgml functions over columns in FROM: could not read the join", hint=LATERAL_HINT
    )


async def _columns(
    execution: Execution, parsed: Parsed, select: exp.Select, names: list[str], a: int, b: int
) -> list[_Item]:
    """Each named item's columns, as PostgreSQL names them: the items described alone,
    in the WITH queries the statement defines around them."""
    sql = parsed.sql
    listed = ", ".join(
        f"NULL AS {_SEPARATOR}{i}, {quote_ident(name)}.*" for i, name in enumerate(names)
    )
    probe = f"{_with_around(parsed, select)}SELECT {listed} FROM {sql.source(a, b)}"
    oids = analysis.probe_parameter_oids(probe, execution.user.oids)
    calling = await parse(probe)
    if calling is not None:  # the items hold calls (one read so before): typed in their place
        probe = skeleton(calling, oids, execution.label_types or {})
    described = await analysis.describe_text(execution.upstream, probe, oids)
    items: list[_Item] = []
    for column in described.columns:
        if column.name.startswith(_SEPARATOR):
            items.append(_Item(names[len(items)], []))
        else:
            items[-1].columns.append(column.name)
    return items


def _with_around(parsed: Parsed, select: exp.Select) -> str:
    """The WITH queries ``select`` may read, defined as the statement defines them."""
    sql = parsed.sql
    texts: dict[str, str] = {}
    recursive = False
    holders = [a for a in _ancestors(select) if a.args.get("with_") is not None]
    for holder in reversed(holders):  # the outermost first: inner ones shadow them
        with_ = holder.args["with_"]
        recursive = recursive or bool(with_.args.get("recursive"))
        for cte in with_.expressions:
            if contains(cte, select):
                break
            first, last = sql.with_query(cte)
            texts[alias_name(cte)] = sql.source(first, last)
    if not texts:
        return ""
    return ("WITH RECURSIVE " if recursive else "WITH ") + ", ".join(texts.values()) + " "


def _ancestors(node: exp.Expr) -> list[exp.Expr]:
    found = []
    parent: exp.Expr | None = node
    while parent is not None:
        found.append(parent)
        parent = parent.parent
    return found
