"""Per-row calls: the SQL that evaluates them once per row of their scope.

A scope (the SELECT, UPDATE or DELETE whose rows a call reads) becomes two queries:

* the *inner* query produces each row of the scope once, with every value the rest of
  the statement needs from it and the calls' arguments, and is materialised into a
  temporary table (``M``);
* the *outer* query, which takes the scope's place in the statement, computes the
  scope's result from ``M`` and the calls' results alone.

Nothing reads the scope's tables twice, so ``random()``, ``LIMIT`` without ``ORDER BY``,
``TABLESAMPLE``, volatile functions and concurrent writers meet each row once, as they
would if the function were built into PostgreSQL.  Where the inner query ends depends on
where the calls stand:

* ``late``: calls in the select list only (of a plain or grouped query), or in a grouped
  query's HAVING.  The inner query is the whole scope (its WHERE, GROUP BY, ORDER BY,
  LIMIT and locking clause included) with the call items replaced by NULL and their
  inputs added, so the calls run only for the rows the scope returns; HAVING's
  conditions that hold calls, and then LIMIT, OFFSET and FETCH, move to the outer query;
* ``early``: a call in WHERE, inside an aggregate or window function, in ORDER BY, or in
  a DISTINCT query.  The inner query is FROM and the conditions without calls; the outer
  query is the rest of the scope, reading every column from ``M``;
* ``update`` / ``delete``: the inner query locks the target rows (``FOR UPDATE``) before
  any value is computed; the outer statement changes exactly those rows, by
  ``tableoid`` and ``ctid``.

The texts are spliced from the client's own: sqlglot tells what the parts are, the
tokens where they are (:mod:`proxy.engine.sqltext`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

from sqlglot import exp

from proxy.engine.calls import CallSite, alias_name, ancestors, folded
from proxy.engine.names import own
from proxy.engine.sourcetext import SourceText
from proxy.engine.sqltext import Span, SqlText

StepKind = Literal["late", "early", "update", "delete"]
M = "__pgml_m"
"""The alias of the materialised rows in outer queries."""
ORDINAL = own("lo")
"""A late step's select-list item of this name (a typed NULL) is given the number of
its set-returning call's row, and a row whose call gives no rows is kept, once, with
the number NULL: how a call in FROM is read ``WITH ORDINALITY`` or ``LEFT JOIN``
(see :mod:`proxy.engine.lateral`)."""
MARK = "__pgml_mark"
ROW_KEY = "__pgml_k"


def quote_ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


@dataclass(frozen=True)
class Slot:
    """One entry of the inner query's select list."""

    kind: Literal["item", "star", "null", "export", "arg", "row", "mark"]
    index: int = -1
    """The item, export, or (for ``arg``) the call's position in :attr:`ScopeStep.calls`."""
    argument: int = -1


@dataclass(eq=False)
class Export:
    """A value the outer query reads from ``M``: a column reference, a subquery, an
    aggregate or window call (late), or a whole row."""

    node: exp.Expr
    span: Span
    text: str
    star: bool = False
    """A ``*`` or ``t.*`` select-list item: expands to many columns."""
    also: list[Span] = field(default_factory=list)
    """Other places of the same column reference: one ``M`` column for all, so that a
    grouped outer query groups by the very column it selects."""


@dataclass(eq=False)
class ScopeStep:
    kind: StepKind
    scope: exp.Expr
    span: Span
    """The scope's characters in the statement: the outer query takes their place."""
    inner: str
    slots: list[Slot]
    calls: list[CallSite]
    exports: list[Export]
    ordered: bool = False
    """Late: the outer query keeps the inner query's order (it had ORDER BY)."""
    nested: bool = False
    """The scope is inside another query (its unknown columns may be an outer query's)."""
    twins: list[tuple[CallSite, int]] = field(default_factory=list)
    """Calls that take the value of the one of :attr:`calls` at that index (a grouping
    key's calls spelled alike)."""
    _text: SqlText | None = None
    _items: list[exp.Expr] = field(default_factory=list)
    _item_spans: list[Span] = field(default_factory=list)
    _pieces: dict[str, Span] = field(default_factory=dict)
    _conditions: list[tuple[Span, bool]] = field(default_factory=list)
    """WHERE's conjuncts and whether each holds a call of this step."""
    _target: str = ""
    _target_text: str = ""
    _locked: list[tuple[str, str]] = field(default_factory=list)
    """Early: the tables a locking clause locks (FROM item, name), found again by the
    ``row`` slots' ``tableoid`` and ``ctid``, two slots a table, in order."""
    _locking: str = ""
    """Early: the locking clause, naming each table it locks."""
    _having: list[Span] = field(default_factory=list)
    """Late: HAVING's conditions that hold calls, which the outer query applies."""
    _arguments: list[str] = field(default_factory=list)
    """Late: the calls' arguments as the inner query reads them (see
    :mod:`proxy.engine.guards`), in order."""
    _distinct: bool = False
    """Late: the outer query makes the rows distinct (they hold a set's columns)."""
    _order: Span | None = None
    """Late: the ORDER BY's terms, when the outer query sorts by the calls' columns."""
    _tail: str = ""
    """Late: the LIMIT, OFFSET and FETCH that then follow them in the outer query."""

    def item_functions(self) -> list[exp.Func]:
        """The functions the select list calls at its own level (not in its subqueries),
        the step's own calls left out."""
        own = {id(call.node) for call in self.calls}
        found: list[exp.Func] = []
        for item in self._items:
            for node in item.find_all(exp.Func):
                chain = [node, *ancestors(node)]
                above = chain[: next(i for i, a in enumerate(chain) if a is item) + 1]
                if not any(id(a) in own or isinstance(a, _QUERIES) for a in above):
                    found.append(node)
        return found

    @property
    def numbered(self) -> bool:
        """Whether the select list holds the :data:`ORDINAL` item."""
        return self.kind == "late" and any(
            isinstance(item, exp.Alias) and alias_name(item) == ORDINAL for item in self._items
        )

    @property
    def filters(self) -> bool:
        """Whether the outer query filters the inner query's rows (by HAVING's calls)."""
        return bool(self._having)

    def outer(
        self,
        columns: list[list[tuple[str, str]]],
        lookups: list[str],
        source: str,
        ordinals: Sequence[str] = (),
    ) -> str:
        """The query (or statement) that takes the scope's place.

        ``columns`` gives, for each slot, its ``M`` columns as (column, name PostgreSQL
        gave it); ``lookups`` each call's result expression; ``source`` the FROM list
        that reads ``M`` (as ``__pgml_m``) with the calls' results joined; ``ordinals``
        (late) the numbers of a set-returning call's rows, which follow each row in order.
        """
        assert self._text is not None
        text = SourceText(self._text.text)
        by_export = {
            slot.index: columns[i] for i, slot in enumerate(self.slots) if slot.kind == "export"
        }
        for index, export in enumerate(self.exports):
            if not export.star:
                for span in (export.span, *export.also):
                    text.replace(span, f"{M}.{by_export[index][0][0]}")
        for call, lookup in zip(self.calls, lookups, strict=True):
            text.replace(call.text.span, lookup)
        for twin, index in self.twins:
            text.replace(twin.text.span, lookups[index])
        if self.kind == "late":
            return self._late_outer(text, columns, source, ordinals)
        return self._rest_outer(text, columns, lookups, source)

    def inline_text(self, stand_ins: list[str], read: list[str]) -> str:
        """A late step over a whole statement, as the statement to stream: each call
        replaced by its stand-in (a typed NULL: PostgreSQL names and types the column as
        the call's), and after the last item each of the calls' arguments, read by the
        expression ``read`` gives for it (its text in place of ``{}``)."""
        assert self._text is not None and self.kind == "late"
        text = SourceText(self._text.text)
        for call, stand_in in zip(self.calls, stand_ins, strict=True):
            text.replace(call.text.span, stand_in)
        arguments = self._arguments
        added = [
            how.replace("{}", f"({argument})")
            for how, argument in zip(read, arguments, strict=True)
        ]
        end = self._item_spans[-1][1]
        text.replace((end, end), ", " + ", ".join(added))
        return text.render(self.span)

    def inline_items(self, values: list[str]) -> list[str]:
        """A late step's select-list items that hold calls, each call's value in its place."""
        assert self._text is not None and self.kind == "late"
        text = SourceText(self._text.text)
        for call, value in zip(self.calls, values, strict=True):
            text.replace(call.text.span, value)
        return [text.render(self._item_spans[s.index]) for s in self.slots if s.kind == "null"]

    def null_items(self) -> list[exp.Expr]:
        """A late step's select-list items that hold calls."""
        return [self._items[s.index] for s in self.slots if s.kind == "null"]

    def _alias(self, item: exp.Expr, columns: list[list[tuple[str, str]]]) -> str:
        """`` AS "name"`` when PostgreSQL would name the item after a part replaced."""
        if isinstance(item, exp.Alias):
            return ""
        reached = _name_source(item)
        for call in self.calls:
            if reached is call.node:
                return f" AS {quote_ident(call.function.name)}"
        for i, slot in enumerate(self.slots):
            if slot.kind == "export" and self.exports[slot.index].node is reached:
                return f" AS {quote_ident(columns[i][0][1])}"
        return ""

    def _late_outer(
        self,
        text: SourceText,
        columns: list[list[tuple[str, str]]],
        source: str,
        ordinals: Sequence[str],
    ) -> str:
        out: list[str] = []
        for i, slot in enumerate(self.slots):
            if slot.kind in ("item", "star"):
                out += [
                    f"{ordinals[0] if name == ORDINAL else f'{M}.{c}'} AS {quote_ident(name)}"
                    for c, name in columns[i]
                ]
            elif slot.kind == "null":
                item = self._items[slot.index]
                out.append(text.render(self._item_spans[slot.index]) + self._alias(item, columns))
        keys = [f"{M}.{ROW_KEY}", *ordinals] if self.ordered or ordinals else []
        if self._distinct:  # its ORDER BY reads the select list only
            keys = []
        if self._order is not None:  # the client's terms first, read by the outer query
            keys.insert(0, text.render(self._order))
        order = f" ORDER BY {', '.join(keys)}" if keys else ""
        having = " AND ".join(f"({text.render(span)})" for span in self._having)
        where = f" WHERE {having}" if having else ""
        select = "SELECT DISTINCT" if self._distinct else "SELECT"
        query = f"{select} {', '.join(out)} FROM {source}{where}{order}{self._tail}"
        if isinstance(self.scope.parent, exp.SetOperation):  # its ORDER BY its own
            return f"({query})"
        return query

    def _rest_outer(
        self,
        text: SourceText,
        columns: list[list[tuple[str, str]]],
        lookups: list[str],
        source: str,
    ) -> str:
        assert self._text is not None
        for i, slot in enumerate(self.slots):
            if slot.kind == "export" and self.exports[slot.index].star:
                expansion = ", ".join(f"{M}.{c} AS {quote_ident(n)}" for c, n in columns[i])
                text.replace(self.exports[slot.index].span, expansion)
        for item, span in zip(self._items, self._item_spans, strict=True):
            alias = self._alias(item, columns)
            if alias:
                text.replace((span[1], span[1]), alias)
        calls = [text.render(span) for span, has_call in self._conditions if has_call]
        targets = [self._target] if self.kind in ("update", "delete") else []
        targets += [name for _, name in self._locked]
        row_matches = [
            f"{target}.tableoid = {M}.{columns[2 * i][0][0]} "
            f"AND {target}.ctid = {M}.{columns[2 * i + 1][0][0]}"
            for i, target in enumerate(targets)
        ]
        where = " AND ".join([*row_matches, *(f"({c})" for c in calls)])
        where = "WHERE " + where if where else ""
        if self.kind == "early":
            if "with" in self._pieces:
                text.replace(self._pieces["with"], "")
            if "locking" in self._pieces:
                text.replace(self._pieces["locking"], self._locking)
            relock = "".join(f", {item}" for item, _ in self._locked)
            text.replace(self._pieces["from"], f"FROM {source}{relock}")
            if "where" in self._pieces:
                text.replace(self._pieces["where"], where)
            elif where:
                text.replace((self._pieces["from"][1], self._pieces["from"][1]), " " + where)
            return text.render(self.span).strip()
        head = "UPDATE " if self.kind == "update" else "DELETE FROM "
        parts = [head + self._target_text]
        if self.kind == "update":
            parts.append("SET " + text.render(self._pieces["set"]))
            parts.append(f"FROM {source}")
        else:
            parts.append(f"USING {source}")
        parts.append(where)
        if "returning" in self._pieces:
            parts.append(text.render(self._pieces["returning"]))
        return " ".join(parts)


_QUERIES = (exp.Select, exp.Subquery, exp.SetOperation)


def output_name(item: exp.Expr) -> str | None:
    """The name PostgreSQL gives a select-list item's column, as PostgreSQL folds it:
    its alias, a column's or a field's name, a function's name; None for ``?column?``."""
    if isinstance(item, exp.Alias):
        return alias_name(item)
    node = _name_source(item)
    if isinstance(node, exp.Column) and not isinstance(node.this, exp.Star):
        return folded(node.this)
    if isinstance(node, exp.Dot) and isinstance(node.expression, exp.Identifier):
        return folded(node.expression)  # a field of a record
    if isinstance(node, exp.Dot) and isinstance(node.expression, exp.Anonymous):
        return folded(node.expression.this)  # a schema's function
    if isinstance(node, exp.Anonymous):
        return folded(node.this)
    return None


def _name_source(item: exp.Expr) -> exp.Expr:
    """The part of a select-list item PostgreSQL names the item's column after (its
    FigureColname): through parentheses, casts, collations, subscripts and CASE's ELSE."""
    node = item
    while True:
        if isinstance(node, exp.Paren | exp.Cast | exp.Collate | exp.Bracket):
            node = node.this
        elif isinstance(node, exp.Case) and node.args.get("default") is not None:
            node = node.args["default"]
        else:
            return node
