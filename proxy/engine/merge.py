"""``MERGE`` whose actions call pgml functions over the source's rows (``WHEN MATCHED THEN
UPDATE SET e = pgml.embed('m', s.body)``, ``WHEN NOT MATCHED THEN INSERT ... VALUES (...,
pgml.embed('m', s.body))``, a ``WHEN ... AND`` condition): the calls evaluated over the
source first.

The statement is read as its equivalent whose calls stand in the source's select list::

    MERGE INTO t USING (SELECT s.*, pgml.embed('m', s.body) AS __pgml_c0
                        FROM <the source as written>) AS s
    ON ... WHEN MATCHED THEN UPDATE SET e = s.__pgml_c0

PostgreSQL reads the source once, so each source row is produced once and its values
computed once.  The calls run for every source row, also those that no action takes (as
over the proposed rows of an upsert, see :mod:`proxy.engine.upsert`).
"""

from __future__ import annotations

from sqlglot import exp

from handlers.functions import unsupported
from proxy.engine.calls import MERGE_HINT, CallSite, contains, item_name
from proxy.engine.scopes import quote_ident
from proxy.engine.sourcetext import SourceText
from proxy.engine.sqltext import SqlText

VALUE = "__pgml_c"
"""The source's column of a call's value (``__pgml_c0``, ...)."""


def rewrite(sql: SqlText, tree: exp.Merge, calls: list[CallSite]) -> str:
    """The statement with the calls of its actions evaluated over the source's rows."""
    source = tree.args["using"]
    name = item_name(source)
    if not name:
        raise unsupported("pgml functions in MERGE need its source named", hint=MERGE_HINT)
    spelled = quote_ident(name)
    outermost = [
        c for c in calls if not any(o is not c and contains(o.node, c.node) for o in calls)
    ]
    text = SourceText(sql.text)
    items = []
    for n, call in enumerate(outermost):
        items.append(f"{sql.text[slice(*call.text.span)]} AS {VALUE}{n}")
        text.replace(call.text.span, f"{spelled}.{VALUE}{n}")
    where = sql.chars(*sql.item_range(source))
    text.replace(
        where,
        f"(SELECT {spelled}.*, {', '.join(items)} FROM {sql.text[slice(*where)]}) AS {spelled}",
    )
    return text.render()
