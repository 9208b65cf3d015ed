"""``CREATE``, ``ALTER`` and ``DROP EXTENSION pgml``, and ``DROP SCHEMA pgml``, answered as
PostgreSQL answers them for an installed extension.

The catalog is the extension: ``CREATE EXTENSION pgml`` creates (or migrates) it through
the proxy's service connection, as the first pgml call would; ``DROP EXTENSION pgml`` drops
schema ``pgml`` in the caller's own session (their rights, their transaction), refusing
without ``CASCADE`` when objects outside it depend on it. After a drop, the next pgml call
creates the catalog again. Where PostgresML's own extension is installed, the statements
are PostgreSQL's.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import Enum
from typing import TYPE_CHECKING

from handlers.functions import PgmlError
from proxy.wire import codec

if TYPE_CHECKING:
    from proxy.engine.executor import Execution
    from proxy.engine.session import Engine


class Action(Enum):
    CREATE = "CREATE EXTENSION"
    ALTER = "ALTER EXTENSION"
    DROP = "DROP EXTENSION"
    DROP_SCHEMA = "DROP SCHEMA"


@dataclass(frozen=True, slots=True)
class ExtensionCommand:
    action: Action
    text: str
    """The statement as the client wrote it."""
    if_exists: bool = False
    """``IF NOT EXISTS`` of CREATE, ``IF EXISTS`` of DROP."""
    cascade: bool = False


_LEAD = r"^(?:\s|--[^\n]*\n|/\*.*?\*/)*"
_NAME = r'(?:pgml\b|(?-i:"pgml"))'
_END = r"\s*;?\s*$"
_CREATE = re.compile(
    rf"{_LEAD}CREATE\s+EXTENSION\s+(IF\s+NOT\s+EXISTS\s+)?{_NAME}"
    rf"(?:\s+WITH\b|\s+SCHEMA\s+{_NAME}|\s+VERSION\s+(?:'[^']*'|\w+)|\s+(CASCADE)\b)*{_END}",
    re.IGNORECASE | re.DOTALL,
)
_ALTER = re.compile(
    rf"{_LEAD}ALTER\s+EXTENSION\s+{_NAME}\s+UPDATE(?:\s+TO\s+(?:'[^']*'|\w+))?{_END}",
    re.IGNORECASE | re.DOTALL,
)
_DROP = re.compile(
    rf"{_LEAD}DROP\s+EXTENSION\s+(IF\s+EXISTS\s+)?{_NAME}(?:\s+(CASCADE)\b|\s+RESTRICT\b)?{_END}",
    re.IGNORECASE | re.DOTALL,
)
_DROP_SCHEMA = re.compile(
    rf"{_LEAD}DROP\s+SCHEMA\s+(?:IF\s+EXISTS\s+)?(?:[^;]*,\s*)?{_NAME}\s*(?:,|CASCADE|RESTRICT|;|$)",
    re.IGNORECASE | re.DOTALL,
)


def recognise(sql: str) -> ExtensionCommand | None:
    """The statement, if it is one of the extension's."""
    if (found := _CREATE.match(sql)) is not None:
        return ExtensionCommand(Action.CREATE, sql, bool(found.group(1)), bool(found.group(2)))
    if _ALTER.match(sql) is not None:
        return ExtensionCommand(Action.ALTER, sql)
    if (found := _DROP.match(sql)) is not None:
        return ExtensionCommand(Action.DROP, sql, bool(found.group(1)), bool(found.group(2)))
    if _DROP_SCHEMA.match(sql) is not None:
        return ExtensionCommand(Action.DROP_SCHEMA, sql)
    return None


_STATE = """
SELECT EXISTS (SELECT FROM pg_catalog.pg_extension WHERE extname = 'pgml')::text,
       EXISTS (SELECT FROM pg_catalog.pg_namespace WHERE nspname = 'pgml')::text
"""
_DEPENDENTS = """
SELECT DISTINCT pg_catalog.pg_describe_object(d.classid, d.objid, d.objsubid)
FROM pg_catalog.pg_depend AS d
CROSS JOIN LATERAL pg_catalog.pg_identify_object(d.refclassid, d.refobjid, 0) AS target
CROSS JOIN LATERAL pg_catalog.pg_identify_object(d.classid, d.objid, d.objsubid) AS dependent
WHERE d.deptype = 'n' AND target.schema = 'pgml'
  AND dependent.schema IS DISTINCT FROM 'pgml' AND dependent.identity NOT LIKE '% pgml.%'
ORDER BY 1
"""
"""Objects outside schema pgml that depend on something in it (a view over pgml.norm_l2)."""
_QUIET_DROP = """
DO $drop$
DECLARE
    level text := pg_catalog.current_setting('client_min_messages');
BEGIN
    PERFORM pg_catalog.set_config('client_min_messages', 'warning', true);
    DROP SCHEMA pgml CASCADE;
    PERFORM pg_catalog.set_config('client_min_messages', level, true);
END $drop$
"""
"""The catalog dropped without a NOTICE for each of its objects (DROP EXTENSION lists none)."""


async def run(engine: Engine, command: ExtensionCommand, *, helper: str, held: bool) -> None:
    """Carry the command out and answer it (its notices and CommandComplete); raises the
    error the client gets. ``helper``: the statement name for SQL in the session;
    ``held``: answers of the extended protocol."""
    execution = engine.execution(helper=helper)
    services, database = engine.services, engine.database

    def answer(data: bytes) -> None:
        engine.upstream.local(data, held=held)

    if command.action is Action.DROP_SCHEMA:
        await execution.run_sql(command.text)
        services.forget_catalog(database)
        answer(codec.command_complete(Action.DROP_SCHEMA.value))
        return
    [[extension, schema]] = await execution.run_sql(_STATE)
    if extension == "true":  # PostgresML's own: PostgreSQL answers
        await execution.run_sql(command.text)
        services.forget_catalog(database)
        answer(codec.command_complete(command.action.value))
        return
    if command.action is Action.DROP:
        if schema != "true":
            if not command.if_exists:
                raise PgmlError("42704", 'extension "pgml" does not exist')
            answer(_notice("00000", 'extension "pgml" does not exist, skipping'))
        else:
            if not command.cascade:
                await _refuse_dependents(execution)
            await execution.run_sql(_QUIET_DROP)
            services.forget_catalog(database)
        answer(codec.command_complete(command.action.value))
        return
    services.forget_catalog(database)  # asked afresh: it may have been dropped elsewhere
    if command.action is Action.CREATE and await services.catalog_installed(database):
        if not command.if_exists:
            raise PgmlError("42710", 'extension "pgml" already exists')
        answer(_notice("42710", 'extension "pgml" already exists, skipping'))
    await services.ensure_catalog(database)
    answer(codec.command_complete(command.action.value))


async def _refuse_dependents(execution: Execution) -> None:
    rows = await execution.run_sql(_DEPENDENTS)
    if rows:
        raise PgmlError(
            "2BP01",
            "cannot drop extension pgml because other objects depend on it",
            detail="\n".join(f"{row[0]} depends on extension pgml" for row in rows[:100]),
            hint="Use DROP ... CASCADE to drop the dependent objects too.",
        )


def _notice(sqlstate: str, message: str) -> bytes:
    return codec.PgError("NOTICE", sqlstate, message).encode(b"N")
