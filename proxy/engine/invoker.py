"""The one way a call runs, for constant, per-row and streamed calls alike: its overload
picked by its arguments' types (:func:`pick`), the arguments known before it runs bound
and the caller authorized and the result type read (:func:`prepare`), then the handler
over batches of argument tuples (:meth:`Invocation.run`) or its rows as they come
(:meth:`Invocation.stream`)."""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from handlers.functions import Args, Overload, PgmlError, project_result_type
from proxy import metrics
from proxy.engine import binding
from proxy.engine.calls import CallSite, reads_columns
from proxy.engine.streams import LiveRows

if TYPE_CHECKING:
    from proxy.engine.executor import Execution


def pick(call: CallSite, oids: Sequence[int]) -> Overload:
    """The overload a call means, by its arguments' type OIDs (0: not known yet)."""
    return binding.pick_overload(call, oids)


@dataclass(eq=False)
class Invocation:
    """A call made ready: its overload, what it returns, and the projects whose rights
    have been checked."""

    call: CallSite
    overload: Overload
    bound: Args
    """The arguments known before the call runs (NULL where a row gives them)."""
    returns: str
    """The SQL type of its value (a set's rows: of each row)."""
    varies: bool
    """Whether equal arguments may give different values (every row gets its own)."""
    authorized: set[Any] = field(default_factory=set)
    """Projects read from rows that ``authorize`` has been given."""

    @functools.cached_property
    def bind(self) -> Callable[[Sequence[Any]], Args]:
        """One row's arguments, decoded, as the handler takes them."""
        return binding.binder(self.call, self.overload)

    async def run(self, execution: Execution, batch: Sequence[Args]) -> list[Any]:
        """The handler's result for each argument tuple of ``batch``, the rights for any
        project the batch's rows name for the first time checked before."""
        if not batch:
            return []
        await self._authorize_rows(execution, batch)
        results = await execution.invoke(self.overload, batch)
        if len(results) != len(batch):
            raise PgmlError(
                "XX000", f"{self.call.sql_name} returned {len(results)} values for {len(batch)}"
            )
        if self.call.per_row:
            metrics.record_rows(self.call.sql_name, len(batch), len(results))
        return results

    def stream(self, execution: Execution) -> LiveRows:
        """The rows of a streaming call over its bound arguments, read as they come."""
        assert self.overload.stream is not None
        return LiveRows(self.overload.stream(execution.context, self.bound), self.returns)

    async def _authorize_rows(self, execution: Execution, batch: Sequence[Args]) -> None:
        authorize = self.overload.authorize
        if authorize is None or not self.call.per_row:
            return
        if not reads_columns(self.call.args[project_argument(self.call, self.overload)]):
            return  # one project for every row: checked by :func:`prepare`
        for args in batch:
            if args and args[0] not in self.authorized:
                self.authorized.add(args[0])
                await authorize(execution.context, args)


async def prepare(
    execution: Execution, call: CallSite, overload: Overload, known: Sequence[Any]
) -> Invocation:
    """The call made ready with the arguments known before it runs (None where rows give
    them): bound, the caller authorized for them, its result type read."""
    bound = binding.bind(call, overload, known)
    if overload.authorize is not None:
        await overload.authorize(execution.context, bound)
    returns = await _result_type(execution, call, overload, bound)
    varies = overload.varies is not None and overload.varies(bound)
    return Invocation(call, overload, bound, returns, varies)


def project_argument(call: CallSite, overload: Overload) -> int:
    """Which of the call's arguments names the project (its first parameter)."""
    found = binding.positions(call, overload)
    assert found is not None
    return found.index(0)


async def _result_type(execution: Execution, call: CallSite, overload: Overload, args: Args) -> str:
    """The call's SQL result type; a project-typed call's is its project's."""
    if not binding.typed_by_project(call, overload):
        return overload.returns
    project = args[0]
    if execution.label_types is not None or project is None:
        label = (execution.label_types or {}).get(str(project), "text")
    else:
        label = await project_result_type(execution.services, execution.database, str(project))
    return binding.result_type(overload, label)
