"""The result types of calls typed by their project (``pgml.predict``'s label type),
known before the statement runs: for describing a statement that is not run yet."""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Protocol

from handlers.functions import Deployed, PgmlError
from proxy.engine import binding, values
from proxy.engine.planner import Parsed

if TYPE_CHECKING:
    from handlers.functions import Services
    from proxy.engine.upstream import Upstream


class Session(Protocol):
    """Where the question is asked: a session's engine, or a statement's evaluation."""

    @property
    def services(self) -> Services: ...
    @property
    def database(self) -> str: ...
    @property
    def upstream(self) -> Upstream: ...


_VISIBLE = (
    "SELECT v.id::text FROM pgml.visible_projects(false) AS v (id) WHERE v.id = ANY ($1::bigint[])"
)
"""Which of the projects ``$1`` the session's role can see (none without SELECT)."""


async def label_types(engine: Session, parsed: Parsed, helper: str) -> dict[str, str]:
    """Result types of the projects the statement names literally; a project that does
    not exist (yet), or that the session's role cannot see in pgml.projects, is left out
    (the same type either way), and its calls fail when they run.  ``helper`` names the
    prepared statement the question uses in the session."""
    found: dict[str, Deployed] = {}
    for call in parsed.calls:
        project = binding.project_literal(call) if binding.typed_by_project(call) else None
        if project is not None and project not in found:
            with contextlib.suppress(PgmlError):
                found[project] = await engine.services.deployment(engine.database, project)
    if not found:
        return {}
    ids = "{" + ",".join(str(d.project.id) for d in found.values()) + "}"
    upstream = engine.upstream
    reply = upstream.statement(_VISIBLE, [ids.encode()], [values.TEXT_OID], name=helper)
    upstream.flush()
    visible = {int(values.text(row[0])) for row in (await reply).rows}
    return {name: d.result_type for name, d in found.items() if d.project.id in visible}
