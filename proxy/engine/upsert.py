"""``INSERT ... ON CONFLICT (key) DO UPDATE SET col = pgml.f(..., excluded.x)``: the
calls over the proposed row, evaluated over the INSERT's own rows first.

The statement is read as its equivalent whose calls stand in a select list::

    WITH __pgml_u AS (SELECT s.*, pgml.f(..., s.x) AS __pgml_c0
                      FROM (<the INSERT's VALUES or query>) AS s(<its columns>))
    INSERT INTO t (<its columns>) SELECT <its columns> FROM __pgml_u
    ON CONFLICT (key) DO UPDATE SET col = (SELECT __pgml_c0 FROM __pgml_u
                                           WHERE __pgml_u.key = excluded.key)

PostgreSQL reads the WITH query once, so each proposed row is produced once and its
value found again by the conflict key (a key is proposed once, or PostgreSQL refuses
the statement for affecting a row twice).  The calls run for every proposed row, also
those that do not conflict.
"""

from __future__ import annotations

from sqlglot import TokenType, exp

from handlers.functions import unsupported
from proxy.engine.calls import CallSite, folded, mentions_call
from proxy.engine.names import own
from proxy.engine.sourcetext import SourceText
from proxy.engine.sqltext import SqlText

ROWS = own("u")
"""The WITH query of the proposed rows."""
SOURCE = "__pgml_s"


def rewrite(sql: SqlText, tree: exp.Insert, calls: list[CallSite]) -> str:
    """The statement with the calls over ``excluded`` evaluated over the proposed rows."""
    how = "Name the inserted columns and the conflict key's columns, or update in a "
    how += "statement of its own."
    target = tree.this
    if not isinstance(target, exp.Schema) or not target.expressions:
        raise unsupported("pgml functions over excluded need the INSERT's column list", hint=how)
    columns = [sql.text[i.meta["start"] : i.meta["end"] + 1] for i in target.expressions]
    names = {folded(i) for i in target.expressions}
    conflict = tree.args["conflict"]
    keys = [
        k.this if isinstance(k, exp.Ordered) else k
        for k in conflict.args.get("conflict_keys") or []
    ]
    if not keys or not all(isinstance(k, exp.Column) and not k.table for k in keys):
        raise unsupported(
            "pgml functions over excluded need ON CONFLICT to name the key's columns "
            "(not ON CONSTRAINT or an expression)",
            hint=how,
        )
    key_names = [sql.text[k.this.meta["start"] : k.this.meta["end"] + 1] for k in keys]
    if not all(folded(k.this) in names for k in keys):
        raise unsupported(
            "pgml functions over excluded need the conflict key's columns among the inserted ones",
            hint=how,
        )
    source = tree.expression
    if isinstance(source, exp.Values) and any(
        isinstance(v, exp.Var) and v.name.upper() == "DEFAULT" for v in source.find_all(exp.Var)
    ):
        raise unsupported(
            "pgml functions over excluded cannot be evaluated over VALUES with DEFAULT",
            hint="Write each value.",
        )
    for call in calls:
        read = {folded(c.this) for a in call.args for c in a.find_all(exp.Column)}
        if read - names:
            raise unsupported(
                f"{call.sql_name} reads excluded.{sorted(read - names)[0]}, which the INSERT "
                "does not name: its value is the column's default",
                hint="Name the column in the INSERT's column list.",
            )
        if any(mentions_call(sql.text[a:b]) for a, b in call.text.arguments):
            raise unsupported(
                f"{call.sql_name} over excluded cannot take another pgml call's value",
                hint=how,
            )
    tokens = sql.tokens
    insert = sql.keyword_at_depth0(0, len(tokens) - 1, ("INSERT",))  # not a WITH query's
    listed = _closing_parenthesis_after(sql, target.expressions[-1].meta["end"])
    on = next(
        i
        for i in range(listed, len(tokens))
        if tokens[i].token_type == TokenType.ON and sql.word(i + 1) == "CONFLICT"
    )
    proposed = SourceText(sql.text)  # the calls over the proposed rows' columns
    text = SourceText(sql.text)  # the statement, each call's value found by the key
    match = " AND ".join(f"{ROWS}.{k} = excluded.{k}" for k in key_names)
    items = []
    for n, call in enumerate(calls):
        for column in (c for a in call.args for c in a.find_all(exp.Column)):
            name = sql.text[column.this.meta["start"] : column.this.meta["end"] + 1]
            proposed.replace(sql.span(column), f"{SOURCE}.{name}")
        items.append(f"{proposed.render(call.text.span)} AS __pgml_c{n}")
        text.replace(call.text.span, f"(SELECT {ROWS}.__pgml_c{n} FROM {ROWS} WHERE {match})")
    rows = (
        f"{ROWS} AS (SELECT {SOURCE}.*, {', '.join(items)} FROM "
        f"({sql.source(listed + 1, on - 1)}) AS {SOURCE}({', '.join(columns)}))"
    )
    head = sql.text[: tokens[insert].start].rstrip()
    with_ = f"{head}, {rows}" if tree.args.get("with_") is not None else f"WITH {rows}"
    body = sql.text[tokens[insert].start : tokens[listed].end + 1]
    rest = text.render((tokens[on].start, len(sql.text)))
    return f"{with_} {body} SELECT {', '.join(columns)} FROM {ROWS} {rest}"


def _closing_parenthesis_after(sql: SqlText, char: int) -> int:
    """The index of the first ``)`` token after character ``char`` (the column list's)."""
    return next(
        i for i, t in enumerate(sql.tokens) if t.start > char and t.token_type == TokenType.R_PAREN
    )
