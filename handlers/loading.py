"""``pgml.load_dataset``: a dataset into ``pgml."<name>"``, with COPY, in the caller's session.

The table is written in the caller's own session (their privileges, their ownership, their
transaction) and replaced atomically: rows go into a new table that takes the old one's
place only once every row is in, or, when the old table has the same columns (views may
depend on it), the old table is emptied and refilled in the same transaction.  Either
way a load that fails leaves the previous table as it was.
"""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator, Sequence
from typing import Any

from handlers.files import with_rights
from handlers.signatures import Args, CallContext

_TYPE_NAMES = {"timestamp": "timestamp without time zone"}


async def load_dataset(ctx: CallContext, batch: Sequence[Args]) -> list[Any]:
    return [[await _load(ctx, *args)] for args in batch]


async def _load(
    ctx: CallContext, source: str, subset: str | None, limit: int | None, kwargs: Any
) -> tuple[str, int]:
    from handlers.classic.datasets import bundled_dataset
    from handlers.datasets import plan_dataset

    services = ctx.services
    await services.ensure_catalog(ctx.database)
    plan: Any = bundled_dataset(source, limit) if subset is None else None
    if plan is None:
        plan = await with_rights(
            ctx,
            lambda rights: plan_dataset(
                source, subset, limit, kwargs, services.datasets_dir, rights
            ),
        )
    table = f"pgml.{quote_ident(plan.table_name)}"
    names = ", ".join(quote_ident(name) for name, _ in plan.columns)
    existing = await ctx.session.run_sql(
        "SELECT a.attname, format_type(a.atttypid, a.atttypmod) FROM pg_attribute AS a "
        "WHERE a.attrelid = to_regclass($1) AND a.attnum > 0 AND NOT a.attisdropped "
        "ORDER BY a.attnum",
        [table],
    )
    wanted = [[name, _TYPE_NAMES.get(kind.lower(), kind.lower())] for name, kind in plan.columns]
    if existing and existing == wanted:
        await ctx.session.run_sql(f"TRUNCATE {table}")
        target = table
    else:
        staging = f"{plan.table_name[:40]}__loading_{secrets.token_hex(4)}"
        target = f"pgml.{quote_ident(staging)}"
        definition = ", ".join(f"{quote_ident(name)} {kind}" for name, kind in plan.columns)
        await ctx.session.run_sql(f"CREATE TABLE {target} ({definition})")
    options = " (FORMAT csv)" if plan.csv_ready else ""
    rows = await ctx.session.copy_in(
        f"COPY {target} ({names}) FROM STDIN{options}", _chunks(ctx, plan)
    )
    if target != table:
        if existing:
            await ctx.session.run_sql(f"DROP TABLE {table}")
        await ctx.session.run_sql(f"ALTER TABLE {target} RENAME TO {quote_ident(plan.table_name)}")
    return plan.table_name, rows


async def _chunks(ctx: CallContext, plan: Any) -> AsyncIterator[bytes]:
    """The dataset's COPY text, read in a worker thread a chunk at a time."""
    iterator = plan.csv_rows() if plan.csv_ready else plan.rows()
    while True:
        chunk = await ctx.services.run(next, iterator, None)
        if chunk is None:
            return
        ctx.check_cancel()
        yield chunk


def quote_ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'
