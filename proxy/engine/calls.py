"""The pgml calls of a statement, and where each one stands.

A call whose arguments read no column (a *constant* call) is evaluated once.  A call
whose arguments read columns is evaluated once per row of its *scope*: the nearest
SELECT, UPDATE or DELETE around it.  Places the proxy cannot evaluate a call in are
refused here, before anything runs, with SQLSTATE 0A000 naming the place.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from sqlglot import Token, exp

from handlers.functions import FUNCTIONS, SQL_FUNCTIONS, Function, PgmlError, unsupported
from proxy.engine.sourcetext import CallText, call_text, words_after

_NAMES = "|".join(sorted(FUNCTIONS, key=len, reverse=True))
CALL_PATTERN = re.compile(
    rf'(?:(?i:\bpgml)|"pgml")\s*\.\s*(?:(?i:\b(?:{_NAMES}))|"(?:{_NAMES})")\s*\('
)
"""A call's spelling, for text sqlglot cannot parse into a statement: each name unquoted
in any case, or quoted in lower case, as PostgreSQL resolves it."""

_SQL_NAMES = "|".join(sorted(SQL_FUNCTIONS, key=len, reverse=True))
SQL_CALL_PATTERN = re.compile(
    rf'(?:(?i:\bpgml)|"pgml")\s*\.\s*(?:(?i:\b(?:{_SQL_NAMES}))|"(?:{_SQL_NAMES})")\s*\('
)
"""A call of a function the catalog defines in SQL (PostgreSQL runs it, the catalog must
exist): spelt as :data:`CALL_PATTERN` spells the proxy's."""

Scope = exp.Select | exp.Update | exp.Delete
MERGE_HINT = (
    "Compute the values in the source: MERGE INTO t USING (SELECT ..., pgml...(...) AS v "
    "FROM ...) AS s ON ... WHEN MATCHED THEN UPDATE SET col = s.v"
)
LATERAL_HINT = (
    "Call it in the select list of a subquery and read its record there: SELECT d.id, "
    "(c).chunk FROM (SELECT id, pgml.chunk('character', body) AS c FROM docs) AS d."
)


@dataclass(eq=False)
class CallSite:
    """One pgml call in a statement."""

    node: exp.Expr
    """What gets replaced: the ``pgml.f(...)`` Dot, or the Table in ``FROM``."""
    function: Function
    args: list[exp.Expr]
    names: list[str | None]
    """For each argument, its name when passed as ``name => value``."""
    in_from: bool
    text: CallText
    """Where the call and its arguments stand in the statement's text."""
    scope: Scope | None = None
    """The query whose rows the arguments read; ``None`` for a constant call."""
    alias: str | None = None
    """The name PostgreSQL gives a set-returning call's column in FROM."""
    alias_node: exp.TableAlias | None = None
    """A call in FROM: the table alias written after it."""
    ordinality: bool = False
    """A call in FROM ``WITH ORDINALITY``: its rows numbered in a last column, whose text
    :attr:`text` takes in."""
    reads_with: frozenset[str] = frozenset()
    """A constant call in FROM: the statement's WITH queries its arguments read, carried
    once for them and the rest of the statement."""
    lateral: bool = False
    """A call in FROM over the columns of the items before it: read in a select list
    first (see :mod:`proxy.engine.lateral`)."""
    merge: bool = False
    """A call in a MERGE's actions over the source's row: the statement is read as its
    equivalent that evaluates it over the source's rows."""
    upsert: bool = False
    """A call in ``ON CONFLICT DO UPDATE`` over the proposed row (``excluded``): the
    statement is read as its equivalent that evaluates it over the INSERT's rows."""

    @property
    def sql_name(self) -> str:
        return f"pgml.{self.function.name}"

    @property
    def per_row(self) -> bool:
        return self.scope is not None


def find_calls(tree: exp.Expr, tokens: list[Token]) -> list[CallSite]:
    """Every pgml call in ``tree`` (outermost first), located and checked."""
    calls: list[CallSite] = []
    for node in tree.walk():
        anonymous: exp.Expr | None = None
        in_from = False
        if isinstance(node, exp.Dot) and _is_pgml(node.this):
            anonymous = _as_anonymous(node.expression)
            start = node.this.meta["start"]
            in_from = isinstance(node.parent, exp.Lateral)  # FROM ..., LATERAL pgml.f(...)
        elif isinstance(node, exp.Table) and _is_pgml(node.args.get("db")):
            anonymous = _as_anonymous(node.this)
            in_from = True
            start = node.args["db"].meta["start"]
        if not isinstance(anonymous, exp.Anonymous):
            continue
        function = FUNCTIONS.get(folded(anonymous.this))
        if function is None:
            continue
        args, names = _arguments(anonymous)
        text = call_text(tokens, start)
        site = CallSite(node, function, args, names, in_from, text)
        if len(text.arguments) != len(args):
            raise PgmlError("42601", f"could not read the arguments of {site.sql_name}")
        if in_from:
            holder = node.parent if isinstance(node.parent, exp.Lateral) else node
            if holder.args.get("ordinality"):  # replaced with the call, as its rows' number
                end = words_after(tokens, text.span[1], ("WITH", "ORDINALITY"))
                if end is None:
                    raise PgmlError("42601", f"could not read {site.sql_name} WITH ORDINALITY")
                site.text = CallText((text.span[0], end), text.arguments)
                site.ordinality = True
            alias = holder.args.get("alias")
            site.alias_node = alias
            site.alias = alias.name if alias is not None and alias.name else function.name
        _place(site)
        calls.append(site)
    return calls


def mentions_call(text: str) -> bool:
    return CALL_PATTERN.search(text) is not None


def mentions_sql_function(text: str) -> bool:
    """Whether the text calls one of the catalog's SQL functions (see :mod:`handlers.vectors`)."""
    return SQL_CALL_PATTERN.search(text) is not None


def _as_anonymous(node: exp.Expr) -> exp.Expr:
    """A pgml function that sqlglot reads as one of its own (``pgml.rank`` is its
    ``Rank``, ``FROM pgml.transform(...)`` its ``Transform``), as the anonymous call it
    is: its arguments in the order sqlglot's function takes them, which is the order
    they are written (:func:`find_calls` checks their number against the text)."""
    if isinstance(node, exp.Anonymous) or not isinstance(node, exp.Func):
        return node
    name = node.sql_name().lower()
    if name not in FUNCTIONS:
        return node
    arguments: list[exp.Expr] = []
    for key in node.arg_types:
        value = node.args.get(key)
        if isinstance(value, list):
            arguments.extend(value)
        elif isinstance(value, exp.Expr):
            arguments.append(value)
        elif value:  # a flag of sqlglot's own, not an argument
            return node
    anonymous = exp.Anonymous(this=name, expressions=arguments)
    node.replace(anonymous)
    return anonymous


def folded(name: object) -> str:
    """A name as PostgreSQL looks it up: an unquoted identifier folded to lower case."""
    if isinstance(name, exp.Identifier):
        return name.name if name.quoted else name.name.lower()
    return str(name).lower()


def alias_name(node: exp.Expr) -> str:
    """The name a select-list item, WITH query or FROM item is given by its alias, folded
    ("" for none)."""
    alias = node.args.get("alias")
    if isinstance(alias, exp.TableAlias):
        alias = alias.this
    return folded(alias) if alias is not None else ""


def item_name(item: exp.Expr) -> str:
    """The name a FROM or MERGE item is read by: its alias, else a table's own name,
    folded ("" for none)."""
    return alias_name(item) or (folded(item.this) if isinstance(item.this, exp.Identifier) else "")


def column_table(column: exp.Column) -> str:
    """The name a column is qualified by, folded ("" for none)."""
    table = column.args.get("table")
    return folded(table) if table is not None else ""


def _is_pgml(node: exp.Expr | None) -> bool:
    return isinstance(node, exp.Identifier) and folded(node) == "pgml"


def _arguments(call: exp.Anonymous) -> tuple[list[exp.Expr], list[str | None]]:
    args: list[exp.Expr] = []
    names: list[str | None] = []
    for arg in call.expressions:
        if isinstance(arg, exp.Kwarg):
            names.append(arg.this.name)
            args.append(arg.expression)
        else:
            if any(n is not None for n in names):
                raise PgmlError("42601", "positional argument cannot follow named argument")
            names.append(None)
            args.append(arg)
    return args, names


def ancestors(node: exp.Expr) -> list[exp.Expr]:
    found: list[exp.Expr] = []
    parent = node.parent
    while parent is not None:
        found.append(parent)
        parent = parent.parent
    return found


def contains(root: exp.Expr | None, node: exp.Expr) -> bool:
    """Whether ``node`` itself (not an equal copy) is in ``root``'s tree."""
    return root is not None and any(n is node for n in root.walk())


def reads_columns(node: exp.Expr) -> bool:
    return any(isinstance(n, exp.Column) for n in node.walk())


def _place(call: CallSite) -> None:
    """Find the call's scope and check that the proxy can evaluate it there."""
    node = call.node
    above = ancestors(node)
    if any(isinstance(a, exp.Returning) for a in above):
        raise unsupported(
            f"{call.sql_name} cannot be called in a RETURNING list",
            hint="Compute the values first: UPDATE ... SET col = pgml...(...), then "
            "return the column.",
        )
    if any(isinstance(a, exp.Join) and contains(a.args.get("on"), node) for a in above):
        raise unsupported(
            f"{call.sql_name} cannot be called in a JOIN condition",
            hint="Compute it in a CTE first, then join on the CTE's column.",
        )
    if not any(reads_columns(arg) for arg in call.args):
        return
    if call.in_from:
        if not any(_reads_outer_columns(arg) for arg in call.args):
            call.reads_with = _outer_with_read(call, above)
            return  # columns of its own subqueries only: evaluated first, as constants
        _check_lateral(call, node.parent if isinstance(node.parent, exp.Lateral) else node)
        call.lateral = True
        return
    merge = next((a for a in above if isinstance(a, exp.Merge)), None)
    if merge is not None and any(isinstance(a, exp.When) for a in above):
        _check_merge(call, merge)
        call.merge = True  # evaluated over the source's rows (see proxy.engine.merge)
        return
    scope = next((a for a in above if isinstance(a, exp.Select | exp.Update | exp.Delete)), None)
    if _in_conflict_clause(node, above) and _reads_proposed_row_only(call):
        call.upsert = True  # evaluated over the INSERT's rows (see proxy.engine.upsert)
        return
    if scope is None or _in_conflict_clause(node, above):
        raise unsupported(
            f"{call.sql_name} reads columns outside of a query",
            hint="Call it in a SELECT (INSERT ... SELECT pgml...(...) FROM ...).",
        )
    call.scope = scope


def _check_lateral(call: CallSite, holder: exp.Expr) -> None:
    """Refuse, with the reason, a call in FROM over columns that cannot be read this way
    (``holder``: the FROM item, the call or its ``LATERAL``)."""
    join = holder.parent
    name = call.sql_name
    if not isinstance(join, exp.Join) or not isinstance(join.parent, exp.Select):
        raise unsupported(f"{name} in FROM cannot take column arguments here", hint=LATERAL_HINT)
    if join.args.get("method"):
        method = str(join.args["method"]).upper()
        raise unsupported(
            f"{name} over columns cannot be joined with {method} JOIN", hint=LATERAL_HINT
        )
    on = join.args.get("on")  # RIGHT and FULL: PostgreSQL's refusal (proxy.engine.lateral)
    if str(join.args.get("side")).upper() == "LEFT" and not (
        isinstance(on, exp.Boolean) and on.this is True
    ):
        raise unsupported(
            f"{name} over columns can be joined with LEFT JOIN only ON true",
            hint=LATERAL_HINT,
        )
    select = join.parent
    if select.args.get("locks"):
        raise unsupported(f"{name} over columns cannot be called in a query FOR UPDATE or SHARE")
    for before in items_before(select, join):
        if isinstance(before, exp.Join) and (before.args.get("using") or before.args.get("method")):
            raise unsupported(
                f"{name} over columns cannot follow a join with USING or NATURAL",
                hint="Join with ON.",
            )


def items_before(select: exp.Select, join: exp.Join) -> list[exp.Expr]:
    """The FROM items of ``select`` before ``join`` (the joins themselves after the first)."""
    source = select.args["from_"]
    joins = select.args.get("joins") or []
    return [source.this, *joins[: joins.index(join)]]


def _check_merge(call: CallSite, merge: exp.Merge) -> None:
    """Refuse a call in a MERGE's actions that reads the target's row, with the way."""
    name = item_name(merge.this)
    if any(
        column_table(c) == name
        for a in call.args
        for c in a.find_all(exp.Column)
        if c.args.get("table") is not None
    ):
        raise unsupported(
            f"{call.sql_name} cannot read the target's row in a WHEN clause of MERGE",
            hint=MERGE_HINT,
        )


def _reads_outer_columns(argument: exp.Expr) -> bool:
    """Whether an argument reads a column other than of a subquery inside it: one
    outside every subquery, or one qualified by a name that none of the subqueries it
    is in names in its FROM (an unqualified one is taken for theirs, as PostgreSQL looks
    there first)."""
    for column in argument.find_all(exp.Column):
        names: set[str] = set()
        inside = False
        node = column.parent
        while node is not None and node is not argument.parent:
            if isinstance(node, exp.Select):
                inside = True
                names.update(_source_names(node))
            node = node.parent
        if not inside or (column.table and column_table(column) not in names):
            return True
    return False


def _outer_with_read(call: CallSite, above: list[exp.Expr]) -> frozenset[str]:
    """The WITH queries of the statement around a constant call in FROM that its
    arguments' subqueries read (see :mod:`proxy.engine.withqueries`)."""
    outer = {
        alias_name(cte)
        for a in above
        if a.args.get("with_") is not None
        for cte in a.args["with_"].expressions
    }
    return frozenset(
        folded(table.this)
        for arg in call.args
        for table in arg.find_all(exp.Table)
        if not table.db
        and folded(table.this) in outer
        and not _defined_inside(table, arg, folded(table.this))
    )


def _defined_inside(table: exp.Table, argument: exp.Expr, name: str) -> bool:
    """Whether a WITH inside ``argument`` around ``table`` defines ``name``."""
    node = table.parent
    while node is not None and node is not argument.parent:
        with_ = node.args.get("with_")
        if with_ is not None and any(alias_name(c) == name for c in with_.expressions):
            return True
        node = node.parent
    return False


def _source_names(select: exp.Select) -> set[str]:
    """The names a query's FROM and its WITH give its sources."""
    sources = [select.args.get("from_"), *select.args.get("joins", [])]
    names = {item_name(s.this) for s in sources if s is not None and s.this is not None}
    with_ = select.args.get("with_")
    if with_ is not None:
        names.update(alias_name(cte) for cte in with_.expressions)
    return names


def _in_conflict_clause(node: exp.Expr, above: list[exp.Expr]) -> bool:
    return any(isinstance(a, exp.OnConflict) for a in above)


def _reads_proposed_row_only(call: CallSite) -> bool:
    """Whether the call's arguments read columns of ``excluded`` alone, outside any
    subquery."""
    columns = [c for a in call.args for c in a.find_all(exp.Column)]
    return all(
        column_table(c) == "excluded" and not isinstance(c.this, exp.Star) for c in columns
    ) and not any(isinstance(n, exp.Query) for a in call.args for n in a.walk())
