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

* ``late``: calls in the select list only (of a plain or grouped query).  The inner
  query is the whole scope (its WHERE, GROUP BY, ORDER BY, LIMIT and locking clause
  included) with the call items replaced by NULL and their inputs added, so the calls
  run only for the rows the scope returns;
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

from dataclasses import dataclass, field
from typing import Literal

from sqlglot import exp

from handlers.errors import unsupported
from proxy.engine.calls import CallSite, ancestors, contains
from proxy.engine.sourcetext import SourceText
from proxy.engine.sqltext import SelectLayout, Span, SqlText, subquery_of

StepKind = Literal["late", "early", "update", "delete"]
M = "__pgml_m"
"""The alias of the materialised rows in outer queries."""
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
    _text: SqlText | None = None
    _items: list[exp.Expr] = field(default_factory=list)
    _item_spans: list[Span] = field(default_factory=list)
    _pieces: dict[str, Span] = field(default_factory=dict)
    _conditions: list[tuple[Span, bool]] = field(default_factory=list)
    """WHERE's conjuncts and whether each holds a call of this step."""
    _target: str = ""
    _target_text: str = ""

    def outer(self, columns: list[list[tuple[str, str]]], lookups: list[str], source: str) -> str:
        """The query (or statement) that takes the scope's place.

        ``columns`` gives, for each slot, its ``M`` columns as (column, name PostgreSQL
        gave it); ``lookups`` each call's result expression; ``source`` the FROM list
        that reads ``M`` (as ``__pgml_m``) with the calls' results joined.
        """
        assert self._text is not None
        text = SourceText(self._text.text)
        by_export = {
            slot.index: columns[i] for i, slot in enumerate(self.slots) if slot.kind == "export"
        }
        for index, export in enumerate(self.exports):
            if not export.star:
                text.replace(export.span, f"{M}.{by_export[index][0][0]}")
        for call, lookup in zip(self.calls, lookups, strict=True):
            text.replace(call.text.span, lookup)
        if self.kind == "late":
            return self._late_outer(text, columns, lookups, source)
        return self._rest_outer(text, columns, lookups, source)

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
        lookups: list[str],
        source: str,
    ) -> str:
        out: list[str] = []
        for i, slot in enumerate(self.slots):
            if slot.kind in ("item", "star"):
                out += [f"{M}.{c} AS {quote_ident(name)}" for c, name in columns[i]]
            elif slot.kind == "null":
                item = self._items[slot.index]
                out.append(text.render(self._item_spans[slot.index]) + self._alias(item, columns))
        order = f" ORDER BY {M}.{ROW_KEY}" if self.ordered else ""
        return f"SELECT {', '.join(out)} FROM {source}{order}"

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
        row_match = ""
        if self.kind in ("update", "delete"):
            target = self._target
            row_match = (
                f"{target}.tableoid = {M}.{columns[0][0][0]} "
                f"AND {target}.ctid = {M}.{columns[1][0][0]}"
            )
            calls.insert(0, row_match)
        where = (
            ("WHERE " + " AND ".join(f"({c})" if c != row_match else c for c in calls))
            if calls
            else ""
        )
        if self.kind == "early":
            for name in ("with", "locking"):
                if name in self._pieces:
                    text.replace(self._pieces[name], "")
            text.replace(self._pieces["from"], f"FROM {source}")
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


# --- building a step -------------------------------------------------------------------------


def plan_scope(sql: SqlText, scope: exp.Expr, calls: list[CallSite]) -> ScopeStep:
    """The step that evaluates ``calls`` (all of one scope; their arguments hold no
    other call) or, when some of them must run before others, the first part of them."""
    if isinstance(scope, exp.Select):
        return _plan_select(sql, scope, calls)
    assert isinstance(scope, exp.Update | exp.Delete)
    return _plan_change(sql, scope, calls)


def _clause(node: exp.Expr, scope: exp.Expr) -> str:
    """The argument of ``scope`` that ``node`` stands in (``expressions``, ``where``...)."""
    child = node
    while child.parent is not None and child.parent is not scope:
        child = child.parent
    return str(child.arg_key)


def _within(node: exp.Expr, scope: exp.Expr, kinds: tuple[type, ...]) -> bool:
    for above in ancestors(node):
        if above is scope:
            return False
        if isinstance(above, kinds):
            return True
    return False


def _grouped(select: exp.Select) -> bool:
    if select.args.get("group") is not None or select.args.get("having") is not None:
        return True
    return any(_aggregates(e, select) for e in select.expressions)


def _aggregates(root: exp.Expr, scope: exp.Expr) -> bool:
    return any(
        isinstance(node, exp.AggFunc)
        and not _within(node, scope, (exp.Window,))
        and node.find_ancestor(exp.Select) is scope
        for node in root.walk()
    )


def _is_rows_level(call: CallSite, select: exp.Select, grouped: bool) -> bool | None:
    """True: the call runs once per row of FROM and WHERE; False: once per row the scope
    returns; None: a place no step can evaluate (HAVING or ORDER BY of a grouped query)."""
    clause = _clause(call.node, select)
    if _within(call.node, select, (exp.AggFunc, exp.Window)) or clause in ("where", "group"):
        return True
    if clause == "expressions":
        return False
    return None if grouped else True


def _plan_select(sql: SqlText, select: exp.Select, calls: list[CallSite]) -> ScopeStep:
    if select.args.get("into") is not None:
        raise unsupported(
            "pgml functions cannot be called in SELECT ... INTO",
            hint="Use CREATE TABLE ... AS SELECT pgml...(...) FROM ... instead.",
        )
    layout = sql.select_layout(select)
    grouped = _grouped(select)
    levels = {}
    for call in calls:
        level = _is_rows_level(call, select, grouped)
        if level is None:
            raise unsupported(
                f"{call.sql_name} cannot be called in {_clause(call.node, select).upper()} "
                "of a query with GROUP BY or aggregates",
                hint="Compute it in a subquery in FROM, then use its column.",
            )
        levels[id(call)] = level
    items = list(select.expressions)
    call_items = {i for i, item in enumerate(items) if any(contains(item, c.node) for c in calls)}
    rows_level = [c for c in calls if levels[id(c)]]
    if not rows_level and not grouped and not _late_fits(select, items, call_items):
        rows_level = calls
    if rows_level:
        return _early(sql, select, layout, rows_level, items)
    return _late(sql, select, layout, calls, items, call_items)


def _late_fits(select: exp.Select, items: list[exp.Expr], call_items: set[int]) -> bool:
    """Whether select-list calls may run after the scope's own ORDER BY and LIMIT."""
    if select.args.get("distinct") is not None:
        return False
    if sum(1 for e in items if _is_star(e)) > 1:
        return False
    aliases = {items[i].alias.lower() for i in call_items if isinstance(items[i], exp.Alias)}
    for key in ("order", "group"):
        clause = select.args.get(key)
        if clause is None:
            continue
        for ordered in clause.expressions:
            target = ordered.this if isinstance(ordered, exp.Ordered) else ordered
            if (
                isinstance(target, exp.Literal)
                and target.is_int
                and int(target.name) - 1 in call_items
            ):
                return False
            if (
                isinstance(target, exp.Column)
                and not target.table
                and target.name.lower() in aliases
            ):
                return False
    return True


def _is_star(item: exp.Expr) -> bool:
    return isinstance(item, exp.Star) or (
        isinstance(item, exp.Column) and isinstance(item.this, exp.Star)
    )


def _late(
    sql: SqlText,
    select: exp.Select,
    layout: SelectLayout,
    calls: list[CallSite],
    items: list[exp.Expr],
    call_items: set[int],
) -> ScopeStep:
    text = SourceText(sql.text)
    slots: list[Slot] = []
    exports: list[Export] = []
    item_spans = [sql.chars(*r) for r in layout.items]
    for i, item in enumerate(items):
        if i in call_items:
            text.replace(item_spans[i], "NULL")
            slots.append(Slot("null", i))
            _collect(sql, item, calls, exports, whole_aggregates=True)
        else:
            slots.append(Slot("star" if _is_star(item) else "item", i))
    slots += [Slot("export", k) for k in range(len(exports))]
    added = [e.text for e in exports]
    for c, call in enumerate(calls):
        for a, span in enumerate(call.text.arguments):
            slots.append(Slot("arg", c, a))
            added.append(sql.text[span[0] : span[1]])
    end = item_spans[-1][1]
    text.replace((end, end), ", " + ", ".join(added))
    span = sql.chars(layout.start, layout.end)
    _refuse_correlation(select)
    return ScopeStep(
        "late",
        select,
        span,
        text.render(span),
        slots,
        calls,
        exports,
        ordered=select.args.get("order") is not None,
        nested=select.parent is not None,
        _text=sql,
        _items=items,
        _item_spans=item_spans,
    )


def _early(
    sql: SqlText,
    select: exp.Select,
    layout: SelectLayout,
    calls: list[CallSite],
    items: list[exp.Expr],
) -> ScopeStep:
    clauses = {name: sql.chars(*r) for name, r in layout.clauses.items() if r[0] <= r[1]}
    if "from" not in clauses:
        raise unsupported("pgml functions read columns only in a query with FROM")
    exports: list[Export] = []
    for item in items:
        if _is_star(item):
            star_span = sql.span(item) if not isinstance(item, exp.Star) else _star_span(sql, item)
            exports.append(Export(item, star_span, sql.text[star_span[0] : star_span[1]], True))
        else:
            _collect(sql, item, calls, exports, whole_aggregates=False)
    conditions = _conditions(sql, layout.clauses.get("where"), select.args.get("where"), calls)
    for key in ("distinct", "group", "having", "order", "windows", "qualify"):
        value = select.args.get(key)
        if value is not None:
            _collect(sql, value, calls, exports, whole_aggregates=False)
    where = select.args.get("where")
    if where is not None:
        for conjunct in _conjunct_nodes(where.this):
            if any(contains(conjunct, c.node) for c in calls):
                _collect(sql, conjunct, calls, exports, whole_aggregates=False)
    slots, inner_list = _inner_list(sql, exports, calls)
    inner = _inner_text(sql, layout.clauses, clauses, inner_list, conditions)
    if "locking" in clauses:
        inner += " " + sql.text[slice(*clauses["locking"])]
    _refuse_correlation(select)
    return ScopeStep(
        "early",
        select,
        sql.chars(layout.start, layout.end),
        inner,
        slots,
        calls,
        exports,
        nested=select.parent is not None,
        _text=sql,
        _items=items,
        _item_spans=[sql.chars(*r) for r in layout.items],
        _pieces=clauses,
        _conditions=conditions,
    )


def _star_span(sql: SqlText, star: exp.Star) -> Span:
    found = sql.meta_range(star)
    assert found is not None
    return sql.chars(*found)


def _inner_list(
    sql: SqlText, exports: list[Export], calls: list[CallSite], head: list[str] | None = None
) -> tuple[list[Slot], list[str]]:
    """The inner query's select list: ``head`` (row identity), exports, the calls'
    arguments, then each star with a mark after it."""
    slots = [Slot("row", i) for i in range(len(head or []))]
    texts = list(head or [])
    for k, export in enumerate(exports):
        if not export.star:
            slots.append(Slot("export", k))
            texts.append(export.text)
    for c, call in enumerate(calls):
        for a, span in enumerate(call.text.arguments):
            slots.append(Slot("arg", c, a))
            texts.append(sql.text[span[0] : span[1]])
    for k, export in enumerate(exports):
        if export.star:
            slots += [Slot("export", k), Slot("mark")]
            texts += [export.text, f"NULL AS {MARK}"]
    return slots, texts


def _inner_text(
    sql: SqlText,
    ranges: dict[str, tuple[int, int]],
    clauses: dict[str, Span],
    select_list: list[str],
    conditions: list[tuple[Span, bool]],
) -> str:
    parts = []
    if "with" in clauses:
        parts.append(sql.text[slice(*clauses["with"])])
    parts.append("SELECT " + ", ".join(select_list))
    parts.append(sql.text[slice(*clauses["from"])])
    kept = [sql.text[slice(*span)] for span, has_call in conditions if not has_call]
    if kept:
        parts.append("WHERE " + " AND ".join(f"({c})" for c in kept))
    return " ".join(parts)


def _conjunct_nodes(condition: exp.Expr) -> list[exp.Expr]:
    return list(condition.flatten()) if isinstance(condition, exp.And) else [condition]


def _conditions(
    sql: SqlText,
    where_range: tuple[int, int] | None,
    where: exp.Expr | None,
    calls: list[CallSite],
) -> list[tuple[Span, bool]]:
    """WHERE's top-level conditions, each with whether it holds one of ``calls``."""
    if where_range is None or where is None:
        return []
    nodes = _conjunct_nodes(where.this)
    pieces = sql.conjuncts(where_range[0] + 1, where_range[1])
    if len(pieces) != len(nodes):  # an AND the splitter read differently: keep it whole
        pieces = [(where_range[0] + 1, where_range[1])]
        nodes = [where.this]
    return [
        (sql.chars(*piece), any(contains(node, c.node) for c in calls))
        for piece, node in zip(pieces, nodes, strict=True)
    ]


def _collect(
    sql: SqlText,
    root: exp.Expr,
    calls: list[CallSite],
    exports: list[Export],
    *,
    whole_aggregates: bool,
) -> None:
    """The values the outer query will read from ``M`` in ``root``: column references
    and subqueries (and, where the inner query groups, aggregate and window calls)."""
    call_nodes = {id(c.node) for c in calls}

    def visit(node: exp.Expr) -> None:
        if id(node) in call_nodes:
            return
        if subquery_of(node) is not None:
            exports.append(_export(sql, node))
            return
        if whole_aggregates and (
            isinstance(node, exp.Window)
            or (isinstance(node, exp.AggFunc) and not isinstance(node.parent, exp.Window))
        ):
            exports.append(_export(sql, node))
            return
        if isinstance(node, exp.Column):
            if isinstance(node.this, exp.Star):  # t.* inside an expression: the whole row
                span = sql.span(node)
                table = node.args.get("table")
                exports.append(Export(node, span, table.sql(dialect="postgres") if table else "*"))
                return
            exports.append(_export(sql, node))
            return
        for child in node.iter_expressions():
            visit(child)

    visit(root)


def _export(sql: SqlText, node: exp.Expr) -> Export:
    span = sql.span(node)
    return Export(node, span, sql.text[span[0] : span[1]])


def _refuse_correlation(scope: exp.Expr) -> None:
    """Columns of an outer query, read where the calls' rows are produced."""
    visible = _sources(scope)
    columns = [
        c
        for c in scope.find_all(exp.Column)
        if c.find_ancestor(exp.Select, exp.Update, exp.Delete) is scope
    ]
    for column in columns:
        table = column.table
        if table and table.lower() not in visible:
            raise unsupported(
                "pgml functions cannot be evaluated in a correlated subquery "
                f'(it reads "{table}.{column.name}" of an outer query)',
                hint="Join the tables in one query, or move the call to the outer query.",
            )


def _sources(scope: exp.Expr) -> set[str]:
    names: set[str] = set()
    roots: list[exp.Expr | None] = [scope.args.get("from_"), *(scope.args.get("joins") or [])]
    if isinstance(scope, exp.Update | exp.Delete):
        roots += [scope.this, *(scope.args.get("using") or [])]
    for root in roots:
        if root is None:
            continue
        for node in root.walk():
            if isinstance(node, exp.Table | exp.Subquery | exp.Unnest | exp.Lateral) and (
                node is root or node.find_ancestor(exp.Select, exp.Update, exp.Delete) is scope
            ):
                alias = node.alias_or_name
                if alias:
                    names.add(alias.lower())
    return names


# --- UPDATE and DELETE -------------------------------------------------------------------------


def _plan_change(sql: SqlText, scope: exp.Update | exp.Delete, calls: list[CallSite]) -> ScopeStep:
    kind: StepKind = "update" if isinstance(scope, exp.Update) else "delete"
    keyword = "UPDATE" if kind == "update" else "DELETE"
    extra = "FROM" if kind == "update" else "USING"
    target_node = scope.this
    target_range = sql.meta_range(target_node)
    assert target_range is not None
    start = target_range[0]
    while start > 0 and sql.word(start) != keyword:
        start -= 1
    end = sql.statement_end(start)
    marks = {
        word: at
        for word in ("SET", extra, "WHERE", "RETURNING")
        if (at := sql.keyword_at_depth0(target_range[1] + 1, end, (word,))) >= 0
    }
    order = sorted(marks.items(), key=lambda kv: kv[1])
    bounds = [at for _, at in order[1:]] + [end + 1]
    ranges = {word: (at, bound - 1) for (word, at), bound in zip(order, bounds, strict=True)}
    first = start + (2 if kind == "delete" else 1)  # after DELETE FROM
    target_text = sql.source(first, min(marks.values(), default=end + 1) - 1)
    alias = target_node.args.get("alias")
    named = alias.this if alias is not None else target_node.this
    target = sql.source(*sql.token_range(named)) if named.meta else named.sql(dialect="postgres")
    if "WHERE" in ranges and sql.word(ranges["WHERE"][0] + 1) == "CURRENT":
        raise unsupported(f"pgml functions cannot be called in {keyword} ... WHERE CURRENT OF")
    if "RETURNING" in ranges and extra in ranges:
        raise unsupported(
            f"{keyword} ... {extra} ... RETURNING with a pgml call is not supported",
            hint=f"Leave out RETURNING, or the {extra} list.",
        )
    exports: list[Export] = []
    if isinstance(scope, exp.Update):
        for assignment in scope.expressions:
            value = assignment.expression if isinstance(assignment, exp.EQ) else assignment
            _collect(sql, value, calls, exports, whole_aggregates=False)
    where = scope.args.get("where")
    conditions = _conditions(sql, ranges.get("WHERE"), where, calls)
    if where is not None:
        for conjunct in _conjunct_nodes(where.this):
            if any(contains(conjunct, c.node) for c in calls):
                _collect(sql, conjunct, calls, exports, whole_aggregates=False)
    slots, select_list = _inner_list(sql, exports, calls, [f"{target}.tableoid", f"{target}.ctid"])
    begin = start
    if scope.args.get("with_") is not None:
        begin = sql.keyword_before(start, "WITH")
    parts = [sql.source(begin, start - 1)] if begin < start else []
    parts.append("SELECT " + ", ".join(select_list) + " FROM " + target_text)
    if extra in ranges:
        parts.append(", " + sql.source(ranges[extra][0] + 1, ranges[extra][1]))
    kept = [sql.text[slice(*span)] for span, has_call in conditions if not has_call]
    if kept:
        parts.append("WHERE " + " AND ".join(f"({c})" for c in kept))
    parts.append(f"FOR UPDATE OF {target}")
    pieces = {}
    if kind == "update":
        pieces["set"] = sql.chars(ranges["SET"][0] + 1, ranges["SET"][1])
    if "RETURNING" in ranges:
        pieces["returning"] = sql.chars(*ranges["RETURNING"])
    _refuse_correlation(scope)
    return ScopeStep(
        kind,
        scope,
        sql.chars(begin, end),
        " ".join(parts),
        slots,
        calls,
        exports,
        nested=scope.parent is not None,
        _text=sql,
        _pieces=pieces,
        _conditions=conditions,
        _target=target,
        _target_text=target_text,
    )


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
