"""Where a scope splits into its inner query (the rows, produced once) and its outer
query (the rest, over those rows): the planning half of :mod:`proxy.engine.scopes`."""

from __future__ import annotations

from collections.abc import Iterable

from sqlglot import exp

from handlers.functions import PgmlError, unsupported
from proxy.engine.calls import (
    CallSite,
    alias_name,
    ancestors,
    column_table,
    contains,
    folded,
    item_name,
)
from proxy.engine.guards import guarded_argument
from proxy.engine.scopes import MARK, Export, ScopeStep, Slot, StepKind, output_name
from proxy.engine.sourcetext import SourceText
from proxy.engine.sqltext import SelectLayout, Span, SqlText, subquery_of


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
    returns (its group, in HAVING); None: a place no step can evaluate (ORDER BY of a
    grouped query)."""
    clause = _clause(call.node, select)
    if _within(call.node, select, (exp.AggFunc, exp.Window, exp.Filter)) or clause in (
        "where",
        "group",
    ):
        return True
    if clause in ("expressions", "having"):  # for each group: HAVING is a grouped query's
        return False
    return None if grouped else True


def _plan_select(sql: SqlText, select: exp.Select, calls: list[CallSite]) -> ScopeStep:
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
    for clause in select.args.get("locks") or []:
        if any(
            _returns_set(c) and any(contains(items[i], c.node) for i in call_items) for c in calls
        ):
            raise PgmlError(
                "0A000",
                f"{_strength(clause)} is not allowed with set-returning functions in the "
                "target list",
            )
    keys: list[CallSite] = []
    if grouped:  # a call that is (in) a grouping key runs for each row, before grouping
        key_items = _key_items(select, items)
        keys = [
            c
            for c in calls
            if _clause(c.node, select) == "group"
            or any(contains(items[i], c.node) for i in key_items)
        ]
        for call in keys:
            levels[id(call)] = True
    rows_level = [c for c in calls if levels[id(c)]]
    if not rows_level and not grouped and not _late_fits(select, items, call_items):
        if _sorts_sets(select, items, calls):  # the sets' rows sorted by the outer query
            return _late(sql, select, layout, calls, items, call_items, sorted_after=True)
        rows_level = calls
    if rows_level:
        return _early(sql, select, layout, rows_level, items, _twins(keys))
    return _late(sql, select, layout, calls, items, call_items)


def _key_items(select: exp.Select, items: list[exp.Expr]) -> set[int]:
    """The select-list items GROUP BY names: by position, by alias, or by being the very
    expression it groups by (PostgreSQL then selects the group's value)."""
    group = select.args.get("group")
    found: set[int] = set()
    if group is None:
        return found
    aliases = {alias_name(item): i for i, item in enumerate(items) if isinstance(item, exp.Alias)}
    for key in group.expressions:
        if isinstance(key, exp.Literal) and key.is_int and 0 < int(key.name) <= len(items):
            found.add(int(key.name) - 1)
        elif isinstance(key, exp.Column) and not key.table and folded(key.this) in aliases:
            found.add(aliases[folded(key.this)])
        for i, item in enumerate(items):
            if (item.this if isinstance(item, exp.Alias) else item) == key:
                found.add(i)
    return found


def _twins(keys: list[CallSite]) -> list[tuple[CallSite, CallSite]]:
    """Grouping-key calls spelled alike, each with the first of them: evaluated once per
    row, as PostgreSQL evaluates a grouping expression and the select-list item that is
    the same expression."""
    first: dict[str, CallSite] = {}
    found: list[tuple[CallSite, CallSite]] = []
    for call in keys:
        spelled = call.node.sql(dialect="postgres")
        if spelled in first:
            found.append((call, first[spelled]))
        else:
            first[spelled] = call
    return found


def _late_fits(select: exp.Select, items: list[exp.Expr], call_items: set[int]) -> bool:
    """Whether select-list calls may run after the scope's own ORDER BY and LIMIT."""
    if select.args.get("distinct") is not None:
        return False
    if sum(1 for e in items if _is_star(e)) > 1:
        return False
    aliases = _output_names(items[i] for i in call_items)
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
            if _names_output(target, aliases):
                return False
    return True


def _strength(clause: exp.Lock) -> str:
    """A locking clause's strength as PostgreSQL spells it in its messages."""
    if clause.args.get("update"):
        return "FOR NO KEY UPDATE" if clause.args.get("key") else "FOR UPDATE"
    return "FOR KEY SHARE" if clause.args.get("key") else "FOR SHARE"


def _returns_set(call: CallSite) -> bool:
    """Whether the call over columns returns a set (``pgml.chunk``, ``pgml.rank``)."""
    return any(o.set_returning and o.row_dependent_ok for o in call.function.overloads)


def _sorts_sets(select: exp.Select, items: list[exp.Expr], calls: list[CallSite]) -> bool:
    """Whether the calls return sets and the query's DISTINCT and ORDER BY read their
    columns, as the outer query can: DISTINCT (not ON) over the select list, ORDER BY by
    position or name beside expressions without calls (see :func:`_sort_terms`).
    PostgreSQL makes the sets' rows distinct and sorts them."""
    order = select.args.get("order")
    distinct = select.args.get("distinct")
    if (order is None and distinct is None) or not all(map(_returns_set, calls)):
        return False
    if distinct is not None and distinct.args.get("on") is not None:
        return False
    if sum(1 for e in items if _is_star(e)) > 1:
        return False
    inputs = _sort_terms(order, items) if order is not None else []
    return all(not any(contains(term, c.node) for c in calls) for term in inputs)


def _sort_terms(order: exp.Order, items: list[exp.Expr]) -> list[exp.Expr]:
    """The ORDER BY terms that read the query's input, not an output column by position
    or name (those the outer query reads in its own select list)."""
    names = _output_names(items)
    found: list[exp.Expr] = []
    for ordered in order.expressions:
        target = ordered.this if isinstance(ordered, exp.Ordered) else ordered
        positional = isinstance(target, exp.Literal) and target.is_int
        if not positional and not _names_output(target, names):
            found.append(target)
    return found


def _output_names(items: Iterable[exp.Expr]) -> set[str]:
    """The names PostgreSQL gives the items' columns (an ORDER BY name reads one first)."""
    return {name for name in map(output_name, items) if name is not None}


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
    *,
    sorted_after: bool = False,
) -> ScopeStep:
    """``sorted_after``: DISTINCT or ORDER BY reads the sets' columns: the outer query
    makes the rows distinct and sorts them."""
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
    having_clause = _conjuncts(sql, layout.clauses.get("having"), select.args.get("having"), calls)
    having = [(span, node) for span, node, held in having_clause if held]
    tail = ""
    if having:  # the groups filtered by the calls' values after they are evaluated
        if select.args.get("distinct") is not None or any(i.find(exp.Window) for i in items):
            raise unsupported(
                "pgml functions in HAVING cannot be evaluated beside DISTINCT or window functions",
                hint="Compute it in a subquery in FROM, then filter on its column.",
            )
        for span, node in having:
            text.replace(span, "TRUE")
            _collect(sql, node, calls, exports, whole_aggregates=True)
    distinct = sorted_after and select.args.get("distinct") is not None
    if distinct:
        text.replace(sql.chars(layout.keyword + 1, layout.keyword + 1), "")
    order: Span | None = None
    if sorted_after and "order" in layout.clauses:  # the terms over the input read from M
        for term in _sort_terms(select.args["order"], items):
            _collect(sql, term, calls, exports, whole_aggregates=True)
        first, last = layout.clauses["order"]
        order = sql.chars(first + 1, last)  # after the one token ORDER BY
        text.replace(sql.chars(first, last), "")
    sets = any(map(_returns_set, calls))
    if having or sets:  # counted after the filter, or among the rows the sets give
        fetch = layout.clauses.get("fetch")
        if fetch is not None and "TIES" in sql.source(*fetch).upper():
            where = "in HAVING" if having else "that return sets"
            raise unsupported(
                f"pgml functions {where} cannot be evaluated beside FETCH ... WITH TIES",
                hint="Compute it in a subquery in FROM, then filter on its column.",
            )
        for key in ("limit", "offset", "fetch"):
            if key in layout.clauses:
                tail += " " + sql.source(*layout.clauses[key])
                text.replace(sql.chars(*layout.clauses[key]), "")
    slots += [Slot("export", k) for k in range(len(exports))]
    arguments: list[str] = []
    for c, call in enumerate(calls):
        for a in range(len(call.text.arguments)):
            slots.append(Slot("arg", c, a))
            arguments.append(guarded_argument(sql, call, a))
    added = [e.text for e in exports] + arguments
    end = item_spans[-1][1]
    text.replace((end, end), ", " + ", ".join(added))
    span = sql.chars(layout.start, layout.end)
    _refuse_correlation(select)
    return ScopeStep(
        "late",
        select,
        span,
        _with_outer_ctes(sql, select, text.render(span)),
        slots,
        calls,
        exports,
        ordered=select.args.get("order") is not None and not sorted_after,
        nested=select.parent is not None,
        _text=sql,
        _items=items,
        _item_spans=item_spans,
        _having=[span for span, _ in having],
        _arguments=arguments,
        _distinct=distinct,
        _order=order,
        _tail=tail,
    )


def _early(
    sql: SqlText,
    select: exp.Select,
    layout: SelectLayout,
    calls: list[CallSite],
    items: list[exp.Expr],
    twins: list[tuple[CallSite, CallSite]],
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
    where_clause = _conjuncts(sql, layout.clauses.get("where"), select.args.get("where"), calls)
    conditions = [(span, held) for span, _, held in where_clause]
    aliases = {alias_name(item) for item in items if isinstance(item, exp.Alias)}
    for key in ("distinct", "group", "having", "order", "windows", "qualify"):
        value = select.args.get(key)
        if value is None:
            continue
        for part in value.expressions if key in ("group", "order") else [value]:
            if not _names_output(part, aliases):
                _collect(sql, part, calls, exports, whole_aggregates=False)
    where = select.args.get("where")
    if where is not None:
        for conjunct in _conjunct_nodes(where.this):
            if any(contains(conjunct, c.node) for c in calls):
                _collect(sql, conjunct, calls, exports, whole_aggregates=False)
    evaluated = [c for c in calls if all(c is not twin for twin, _ in twins)]
    locked, locking = _locks(select)
    head = [f"{name}.{column}" for _, name in locked for column in ("tableoid", "ctid")]
    slots, inner_list = _inner_list(sql, exports, evaluated, head)
    inner = _inner_text(sql, layout.clauses, clauses, inner_list, conditions)
    inner = _with_outer_ctes(sql, select, inner)
    _refuse_correlation(select)
    return ScopeStep(
        "early",
        select,
        sql.chars(layout.start, layout.end),
        inner,
        slots,
        evaluated,
        exports,
        twins=[(twin, evaluated.index(same)) for twin, same in twins],
        nested=select.parent is not None,
        _text=sql,
        _items=items,
        _item_spans=[sql.chars(*r) for r in layout.items],
        _pieces=clauses,
        _conditions=conditions,
        _locked=locked,
        _locking=locking,
    )


def _locks(select: exp.Select) -> tuple[list[tuple[str, str]], str]:
    """The tables a locking clause locks, each as (its FROM item without sampling, the
    name that refers to it), and the clause naming them with ``OF``.

    The rows are read without locks and the calls evaluated; the outer query then locks,
    by ``tableoid`` and ``ctid``, only the rows that pass its conditions, in its order and
    up to its LIMIT (with SKIP LOCKED, the next free ones), as PostgreSQL's LockRows does
    above the conditions.  A row changed since it was read drops out (PostgreSQL would
    evaluate the call again on its new version)."""
    clauses = select.args.get("locks") or []
    if not clauses:
        return [], ""
    items: dict[str, exp.Expr] = {}
    for part in [select.args.get("from_"), *(select.args.get("joins") or [])]:
        if part is not None:
            items[item_name(part.this)] = part.this
    ctes = _cte_names(select)

    def table(item: exp.Expr | None) -> bool:
        """A table (or view) of the database, not a WITH query or a function."""
        return (
            isinstance(item, exp.Table)
            and isinstance(item.this, exp.Identifier)
            and not (not item.db and folded(item.this) in ctes)
        )

    locked: dict[str, tuple[str, str]] = {}
    written: list[str] = []
    for clause in clauses:
        # without OF, PostgreSQL locks the tables (a subquery's too) and passes over
        # WITH queries, functions and VALUES
        named = [folded(t.this) for t in clause.expressions] or [
            name for name, item in items.items() if table(item) or isinstance(item, exp.Subquery)
        ]
        for name in named:
            item = items.get(name)
            if not table(item):
                raise unsupported(
                    "a locking clause with a pgml call in WHERE, ORDER BY or DISTINCT can lock "
                    "only tables named in FROM",
                    hint="Name the tables to lock with FOR UPDATE OF, or lock in a statement "
                    "of its own.",
                )
            assert isinstance(item, exp.Table)
            locked.setdefault(name, _lockable(item))
        wait = {True: " NOWAIT", False: " SKIP LOCKED"}.get(clause.args.get("wait"), "")
        written.append(f"{_strength(clause)} OF {', '.join(locked[n][1] for n in named)}{wait}")
    return list(locked.values()), " ".join(written)


def _lockable(table: exp.Table) -> tuple[str, str]:
    """A FROM table as the outer query names it again: its name and alias alone (no
    TABLESAMPLE: the rows are found by ``ctid``), and the name that refers to it."""
    bare = exp.Table(
        this=table.this.copy(),
        db=table.args["db"].copy() if table.args.get("db") else None,
        catalog=table.args["catalog"].copy() if table.args.get("catalog") else None,
    )
    alias = table.args.get("alias")
    reference = alias.this if alias is not None and alias.this else table.this
    refers = reference.sql(dialect="postgres")
    if alias is not None and alias.this:
        return f"{bare.sql(dialect='postgres')} AS {refers}", refers
    return bare.sql(dialect="postgres"), refers


def _cte_names(select: exp.Select) -> set[str]:
    """The WITH queries a query may read by name: its own and its enclosing queries'."""
    names: set[str] = set()
    for node in [select, *ancestors(select)]:
        with_ = node.args.get("with_") if isinstance(node, exp.Expr) else None
        if with_ is not None:
            names |= {alias_name(cte) for cte in with_.expressions}
    return names


def _names_output(key: exp.Expr, aliases: set[str]) -> bool:
    """Whether a GROUP BY or ORDER BY key is the bare name of a select-list item (it
    reads that item's value, which the outer query computes, not a column of FROM)."""
    target = key.this if isinstance(key, exp.Ordered) else key
    return isinstance(target, exp.Column) and not target.table and folded(target.this) in aliases


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
        for a in range(len(call.text.arguments)):
            slots.append(Slot("arg", c, a))
            texts.append(guarded_argument(sql, call, a))
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


def _conjuncts(
    sql: SqlText,
    found: tuple[int, int] | None,
    condition: exp.Expr | None,
    calls: list[CallSite],
) -> list[tuple[Span, exp.Expr, bool]]:
    """The top-level conditions of a WHERE or HAVING (its tokens and node), each with
    whether it holds one of ``calls``."""
    if found is None or condition is None:
        return []
    nodes = _conjunct_nodes(condition.this)
    pieces = sql.conjuncts(found[0] + 1, found[1])
    if len(pieces) != len(nodes):  # an AND the splitter read differently: keep it whole
        pieces = [(found[0] + 1, found[1])]
        nodes = [condition.this]
    return [
        (sql.chars(*piece), node, any(contains(node, c.node) for c in calls))
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
            found = _export(sql, node)
            same = next((e for e in exports if _same_column(e, found)), None)
            if same is None:
                exports.append(found)
            else:
                same.also.append(found.span)
            return
        for child in node.iter_expressions():
            visit(child)

    visit(root)


def _same_column(export: Export, other: Export) -> bool:
    """Two references to one column, spelled alike."""
    return not export.star and isinstance(export.node, exp.Column) and export.text == other.text


def _export(sql: SqlText, node: exp.Expr) -> Export:
    span = sql.span(node)
    return Export(node, span, sql.text[span[0] : span[1]])


def _with_outer_ctes(sql: SqlText, scope: exp.Select, inner: str) -> str:
    """``inner`` preceded by the WITH clause of an enclosing query whose common table
    expressions the scope reads, so that the scope's rows can be produced on their own.
    Refused where something outside the scope reads those expressions too (PostgreSQL
    reads such an expression once, and the statement that replaces the scope would read
    it again) or one of them changes rows."""
    above = scope.parent
    while above is not None:
        if isinstance(above, exp.Select | exp.Insert) and above.args.get("with_") is not None:
            break
        above = above.parent
    if above is None:
        return inner
    ctes = {alias_name(cte): cte for cte in above.args["with_"].expressions}
    needed = with_closure(_read_names(scope, ctes), ctes)
    if not needed:
        return inner
    for name in sorted(needed):
        if not isinstance(ctes[name].this, exp.Query):
            raise unsupported(
                f'pgml functions cannot be evaluated over WITH query "{name}", which changes rows',
                hint="Change the rows in a statement of their own, then evaluate the calls.",
            )
    readers = sorted(
        folded(t.this)
        for t in above.find_all(exp.Table)
        if not t.db and folded(t.this) in needed and not _inside(t, scope, needed, ctes)
    )
    if readers:
        raise unsupported(
            f'pgml functions cannot be evaluated in a subquery over WITH query "{readers[0]}" '
            "that the statement also reads elsewhere",
            hint="Evaluate the calls in the WITH query itself, so that it is read once.",
        )
    first = _with_start(sql, above)
    head = "WITH RECURSIVE" if sql.word(first + 1) == "RECURSIVE" else "WITH"
    written = [_cte_text(sql, c) for c in above.args["with_"].expressions]
    kept = [
        t
        for c, t in zip(above.args["with_"].expressions, written, strict=True)
        if alias_name(c) in needed
    ]
    clause = f"{head} {', '.join(kept)}"
    if inner.lstrip()[:4].upper() != "WITH":
        return f"{clause} {inner}"
    own = inner.lstrip()[4:].lstrip()
    if own[:9].upper() == "RECURSIVE":
        own = own[9:].lstrip()
        if "RECURSIVE" not in clause[:20].upper():
            clause = "WITH RECURSIVE" + clause.lstrip()[4:]
    return f"{clause}, {own}"


def _with_start(sql: SqlText, holder: exp.Select | exp.Insert) -> int:
    """The WITH token of a query's or an INSERT's WITH clause."""
    if isinstance(holder, exp.Select):
        return sql.select_layout(holder).clauses["with"][0]
    found = sql.meta_range(holder.args["with_"].expressions[0])
    assert found is not None
    return sql.keyword_before(found[0] + 1, "WITH")


def _cte_text(sql: SqlText, cte: exp.CTE) -> str:
    """One WITH query as written: from its name to the comma or statement after it."""
    return sql.source(*sql.with_query(cte))


def _read_names(root: exp.Expr, ctes: dict[str, exp.CTE]) -> set[str]:
    return {folded(t.this) for t in root.find_all(exp.Table) if not t.db and folded(t.this) in ctes}


def with_closure(names: set[str], ctes: dict[str, exp.CTE]) -> set[str]:
    """``names`` (of ``ctes``, by lower-case name) and every WITH query they read, through
    each other."""
    needed: set[str] = set()
    pending = [names]
    while pending:
        for name in pending.pop() - needed:
            needed.add(name)
            pending.append(_read_names(ctes[name].this, ctes))
    return needed


def _inside(table: exp.Table, scope: exp.Expr, needed: set[str], ctes: dict[str, exp.CTE]) -> bool:
    """Whether a reference is read only through the scope: in it, or in the body of an
    expression the scope needs."""
    for above in ancestors(table):
        if above is scope:
            return True
        if isinstance(above, exp.CTE) and alias_name(above) in needed:
            return True
    return False


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
        if table and column_table(column) not in visible:
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
            if isinstance(
                node, exp.Table | exp.Subquery | exp.Values | exp.Unnest | exp.Lateral
            ) and (node is root or node.find_ancestor(exp.Select, exp.Update, exp.Delete) is scope):
                name = item_name(node)
                if name:
                    names.add(name)
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
    conditions = [
        (span, held) for span, _, held in _conjuncts(sql, ranges.get("WHERE"), where, calls)
    ]
    if where is not None:
        for conjunct in _conjunct_nodes(where.this):
            if any(contains(conjunct, c.node) for c in calls):
                _collect(sql, conjunct, calls, exports, whole_aggregates=False)
    slots, select_list = _inner_list(sql, exports, calls, [f"{target}.tableoid", f"{target}.ctid"])
    begin = start
    if scope.args.get("with_") is not None:
        begin = sql.keyword_before(start, "WITH")
    parts = [sql.source(begin, start - 1)] if begin < start else []
    sources = target_text
    if extra in ranges:
        sources += ", " + sql.source(ranges[extra][0] + 1, ranges[extra][1])
    parts.append("SELECT " + ", ".join(select_list) + " FROM " + sources)
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
