"""Client messages that call pgml functions: planned once, then run in-band."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from handlers.errors import PgmlError
from handlers.serving import Services
from proxy import protocol as pg
from proxy.executor import Execution
from proxy.inband import Inband
from proxy.planner import StatementPlan, plan_statement, split_statements
from proxy.protocol import Message


@dataclass
class PreparedQuery:
    """A simple Query with at least one pgml call (or a planning error to report)."""

    statements: list[str]
    plans: list[StatementPlan | None]
    error: PgmlError | None = None

    async def run(
        self,
        inband: Inband,
        services: Services,
        cancelled: Callable[[], bool],
        database: str,
    ) -> None:
        execution = Execution(inband, services, cancelled, database=database)
        if self.error is not None:
            await execution.report(self.error)
            return
        await execution.run_planned(self.statements, self.plans)


def prepare_query(message: Message) -> PreparedQuery | None:
    """Plan a Query message; ``None`` when none of its statements calls a pgml function."""
    if message.type != pg.QUERY:
        return None
    sql = message.body[:-1].decode("utf-8", "replace")
    statements = split_statements(sql)
    try:
        plans = [plan_statement(text) for text in statements]
    except PgmlError as error:
        return PreparedQuery(statements, [], error)
    if all(plan is None for plan in plans):
        return None
    return PreparedQuery(statements, plans)
