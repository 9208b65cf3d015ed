"""Projects, models, deployments, files and logs in the catalog, through the service
connection: these writes must be visible to other sessions (and other proxies) at once,
whatever the caller's transaction does."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from handlers.artifact import KEY_METRICS
from handlers.errors import PgmlError, invalid_argument

FILE_PART_BYTES = 16 * 1024 * 1024
"""Model files are stored in parts of this size (a bytea value is read whole)."""

FEATURE_TASKS = frozenset({"regression", "classification", "clustering", "decomposition"})
FEATURES = "features"
"""The result type of a project that predicts from feature arrays: REAL for every overload
of ``pgml.predict`` (see ``proxy.engine.binding.result_type``)."""

STRATEGIES = ("best_score", "most_recent", "rollback", "specific")


@dataclass(frozen=True, slots=True)
class Project:
    id: int
    name: str
    task: str
    owner_oid: int
    owner: str
    """The owner role's name as an identifier in SQL (``regrole``'s text)."""


@dataclass(frozen=True, slots=True)
class Deployed:
    """A model to serve (a project's deployed one, or one named by its id) and what
    serving needs to know about it."""

    project: Project
    model_id: int
    algorithm: str
    created_at: float
    label_type: str

    @property
    def result_type(self) -> str:
        """``predict``'s SQL type: the label's for text classification, :data:`FEATURES`
        for a project that predicts from feature arrays, else text."""
        if self.project.task in FEATURE_TASKS:
            return FEATURES
        return self.label_type if self.project.task == "text-classification" else "text"


PROJECT_COLUMNS = "p.id, p.name, p.task, p.owner::oid AS owner_oid, p.owner::text AS owner"


def missing_project(name: str) -> PgmlError:
    """The answer for a project that does not exist, and for one the caller cannot see."""
    return PgmlError(
        "42704",
        f'project "{name}" does not exist',
        hint="pgml.tune creates projects; SELECT name FROM pgml.projects lists them.",
    )


def missing_model(model_id: int) -> PgmlError:
    """The answer for a model that does not exist, and for one the caller cannot see."""
    return PgmlError("42704", f"model {model_id} does not exist")


def _project(row: Any) -> Project:
    return Project(int(row["id"]), row["name"], row["task"], int(row["owner_oid"]), row["owner"])


_SERVED_COLUMNS = (
    f"{PROJECT_COLUMNS}, m.id AS model_id, m.algorithm, "
    "extract(epoch FROM m.created_at) AS created_at, s.analysis->>'label_type' AS label_type"
)


def _served(row: Any) -> Deployed:
    return Deployed(
        _project(row),
        int(row["model_id"]),
        row["algorithm"],
        float(row["created_at"]),
        row["label_type"] or "text",
    )


class Catalog:
    """The catalog of one database, through the proxy's asyncpg pool for it."""

    def __init__(self, pool: Any) -> None:
        self.pool = pool

    async def project(self, name: str) -> Project | None:
        row = await self.pool.fetchrow(
            f"SELECT {PROJECT_COLUMNS} FROM pgml.projects AS p WHERE p.name = $1", name
        )
        return None if row is None else _project(row)

    async def model_project(self, model_id: int) -> Project:
        """The project of a model; 42704 when there is no such model."""
        row = await self.pool.fetchrow(
            f"SELECT {PROJECT_COLUMNS} FROM pgml.models AS m "
            "JOIN pgml.projects AS p ON p.id = m.project_id WHERE m.id = $1",
            model_id,
        )
        if row is None:
            raise missing_model(model_id)
        return _project(row)

    async def create_project(self, name: str, task: str, owner_oid: int) -> Project | None:
        """A new project owned by ``owner_oid``; None when the name was taken meanwhile."""
        row = await self.pool.fetchrow(
            "INSERT INTO pgml.projects AS p (name, task, owner) VALUES ($1, $2, $3::oid::regrole) "
            f"ON CONFLICT (name) DO NOTHING RETURNING {PROJECT_COLUMNS}",
            name,
            task,
            owner_oid,
        )
        return None if row is None else _project(row)

    async def claim_project(
        self,
        name: str,
        task: str,
        owner_oid: int,
        may_use: Callable[[Project], Awaitable[object]],
    ) -> Project:
        """The project ``name``, created owned by ``owner_oid``; one that another session
        created meanwhile is used only when ``may_use`` lets the caller (it raises
        otherwise) and it has the same task."""
        created = await self.create_project(name, task, owner_oid)
        if created is not None:
            return created
        project = await self.project(name)
        if project is None:  # dropped again at once
            raise PgmlError("40001", f'project "{name}" was dropped while it was created')
        await may_use(project)
        if project.task != task:
            raise invalid_argument(
                f'project "{name}" is a {project.task} project, not {task}',
                hint="Use a new project name for another task.",
            )
        return project

    async def last_run(self, project: Project) -> dict[str, Any] | None:
        """The relation, label, split and model of the project's latest model, and its
        snapshot (``snapshot_id``, whether it is ``materialized``)."""
        row = await self.pool.fetchrow(
            "SELECT s.relation_name, s.y_column_name[1] AS y_column_name, "
            "s.y_column_name AS y_column_names, s.test_size, "
            "s.test_sampling, m.algorithm, s.id AS snapshot_id, s.materialized "
            "FROM pgml.models AS m "
            "JOIN pgml.snapshots AS s ON s.id = m.snapshot_id "
            "WHERE m.project_id = $1 ORDER BY m.id DESC LIMIT 1",
            project.id,
        )
        return None if row is None else dict(row)

    async def add_snapshot(
        self,
        project: Project,
        relation: str,
        y_column: str | list[str] | None,
        test_size: float,
        sampling: str,
        columns: dict[str, str],
        analysis: dict[str, Any],
        rows: int,
        checksum: str,
        materialized: bool,
    ) -> int:
        return int(
            await self.pool.fetchval(
                "INSERT INTO pgml.snapshots (project_id, relation_name, y_column_name, "
                "test_size, test_sampling, status, columns, analysis, rows, checksum, "
                "materialized) VALUES ($1, $2, $3::text[], $4, $5, 'successful', $6::jsonb, "
                "$7::jsonb, $8, $9, $10) RETURNING id",
                project.id,
                relation,
                y_column if isinstance(y_column, list) else [y_column],
                test_size,
                sampling,
                json.dumps(columns),
                json.dumps(analysis),
                rows,
                checksum,
                materialized,
            )
        )

    async def add_model(
        self, project: Project, snapshot_id: int, algorithm: str, hyperparams: dict[str, Any]
    ) -> tuple[int, float]:
        """A new ``in_progress`` model: its id and creation time (epoch seconds)."""
        row = await self.pool.fetchrow(
            "INSERT INTO pgml.models (project_id, snapshot_id, algorithm, hyperparams) "
            "VALUES ($1, $2, $3, $4::jsonb) RETURNING id, extract(epoch FROM created_at) AS t",
            project.id,
            snapshot_id,
            algorithm,
            json.dumps(hyperparams),
        )
        return int(row["id"]), float(row["t"])

    async def describe_training(
        self,
        model_id: int,
        runtime: str,
        num_features: int,
        search: str | None,
        search_params: dict[str, Any],
        search_args: dict[str, Any],
    ) -> None:
        """The runtime, feature count and search a model of ``pgml.train`` had."""
        await self.pool.execute(
            "UPDATE pgml.models SET runtime = $2, num_features = $3, search = $4, "
            "search_params = $5::jsonb, search_args = $6::jsonb WHERE id = $1",
            model_id,
            runtime,
            num_features,
            search,
            json.dumps(search_params),
            json.dumps(search_args),
        )

    async def log(self, project: Project, model_id: int, record: dict[str, Any]) -> None:
        await self.pool.execute(
            "INSERT INTO pgml.logs (model_id, project_id, logs) VALUES ($1, $2, $3::jsonb)",
            model_id,
            project.id,
            json.dumps(record),
        )

    async def fail_model(self, model_id: int, status: str, error: str) -> None:
        await self.pool.execute(
            "UPDATE pgml.models SET status = $2, error = $3, updated_at = clock_timestamp() "
            "WHERE id = $1",
            model_id,
            status,
            error,
        )

    async def finish_model(self, model_id: int, metrics: dict[str, Any], folder: Path) -> None:
        """Store the model's files and mark it successful, in one transaction."""
        async with self.pool.acquire() as connection, connection.transaction():
            await connection.execute("DELETE FROM pgml.files WHERE model_id = $1", model_id)
            for path in sorted(p for p in folder.rglob("*") if p.is_file()):
                name = path.relative_to(folder).as_posix()
                with path.open("rb") as handle:
                    part = 0
                    while chunk := handle.read(FILE_PART_BYTES):
                        await connection.execute(
                            "INSERT INTO pgml.files (model_id, path, part, data) "
                            "VALUES ($1, $2, $3, $4)",
                            model_id,
                            name,
                            part,
                            chunk,
                        )
                        part += 1
            await connection.execute(
                "UPDATE pgml.models SET status = 'successful', metrics = $2::jsonb, "
                "updated_at = clock_timestamp() WHERE id = $1",
                model_id,
                json.dumps(metrics),
            )

    async def files(self, model_id: int) -> AsyncIterator[tuple[str, bytes]]:
        """The model's stored files, part by part, in order."""
        async with self.pool.acquire() as connection, connection.transaction():
            ids = await connection.fetch(
                "SELECT id FROM pgml.files WHERE model_id = $1 ORDER BY path, part", model_id
            )
            for row in ids:
                part = await connection.fetchrow(
                    "SELECT path, data FROM pgml.files WHERE id = $1", row["id"]
                )
                yield part["path"], bytes(part["data"])

    async def deployed(self, name: str) -> Deployed:
        """The project's deployed model; a clear error when there is none."""
        row = await self.pool.fetchrow(
            f"SELECT {_SERVED_COLUMNS} FROM pgml.projects AS p "
            "LEFT JOIN pgml.deployed_models AS d ON d.name = p.name "
            "LEFT JOIN pgml.models AS m ON m.id = d.id "
            "LEFT JOIN pgml.snapshots AS s ON s.id = m.snapshot_id WHERE p.name = $1",
            name,
        )
        if row is None:
            raise missing_project(name)
        if row["model_id"] is None:
            raise PgmlError(
                "55000",
                f'project "{name}" has no deployed model',
                hint="Tune it with pgml.tune, or deploy a trained model with pgml.deploy.",
            )
        return _served(row)

    async def served(self, model_id: int) -> Deployed:
        """Any model of any project, to be served by its id (deployed or not); 42704 when
        there is no such model."""
        row = await self.pool.fetchrow(
            f"SELECT {_SERVED_COLUMNS} FROM pgml.models AS m "
            "JOIN pgml.projects AS p ON p.id = m.project_id "
            "LEFT JOIN pgml.snapshots AS s ON s.id = m.snapshot_id WHERE m.id = $1",
            model_id,
        )
        if row is None:
            raise missing_model(model_id)
        return _served(row)

    # --- deployment ----------------------------------------------------------------------

    async def deploy_automatically(self, project: Project, model_id: int) -> bool:
        """Deploy ``model_id`` when its key metric beats the deployed model's (or none is)."""
        metric, higher = KEY_METRICS[project.task]
        async with self.pool.acquire() as connection, connection.transaction():
            await connection.execute(
                "SELECT 1 FROM pgml.projects WHERE id = $1 FOR UPDATE", project.id
            )
            current = await connection.fetchrow(
                "SELECT m.id, (m.metrics->>$2)::float8 AS score FROM pgml.deployments AS d "
                "JOIN pgml.models AS m ON m.id = d.model_id WHERE d.project_id = $1 "
                "ORDER BY d.created_at DESC, d.id DESC LIMIT 1",
                project.id,
                metric,
            )
            score = await connection.fetchval(
                "SELECT (metrics->>$2)::float8 FROM pgml.models WHERE id = $1", model_id, metric
            )
            if current is not None and not _beats(score, current["score"], higher):
                return False
            await self._insert_deployment(connection, project.id, model_id, "new_score")
            return True

    async def deploy(self, project: Project, strategy: str, algorithm: str | None) -> str:
        """Deploy by strategy (see :func:`check_strategy`) a project whose caller was
        checked; the algorithm of the model now deployed."""
        metric, higher = KEY_METRICS[project.task]
        async with self.pool.acquire() as connection, connection.transaction():
            await _lock_checked(connection, project)
            if strategy == "rollback":
                model_id = await connection.fetchval(
                    "SELECT model_id FROM pgml.deployments WHERE project_id = $1 "
                    "AND model_id <> coalesce((SELECT model_id FROM pgml.deployments "
                    "WHERE project_id = $1 ORDER BY created_at DESC, id DESC LIMIT 1), -1) "
                    "AND ($2::text IS NULL OR model_id IN "
                    "(SELECT id FROM pgml.models WHERE algorithm = $2)) "
                    "ORDER BY created_at DESC, id DESC LIMIT 1",
                    project.id,
                    algorithm,
                )
            else:
                order = (
                    "m.id DESC"
                    if strategy == "most_recent"
                    else f"(m.metrics->>'{metric}')::float8 {'DESC' if higher else 'ASC'} "
                    "NULLS LAST, m.id DESC"
                )
                model_id = await connection.fetchval(
                    "SELECT m.id FROM pgml.models AS m WHERE m.project_id = $1 "
                    "AND m.status = 'successful' AND ($2::text IS NULL OR m.algorithm = $2) "
                    f"ORDER BY {order} LIMIT 1",
                    project.id,
                    algorithm,
                )
            if model_id is None:
                raise PgmlError(
                    "55000",
                    f'project "{project.name}" has no model to deploy with {strategy}'
                    + (f" and algorithm {algorithm}" if algorithm else ""),
                )
            await self._insert_deployment(connection, project.id, int(model_id), strategy)
            chosen = await connection.fetchval(
                "SELECT algorithm FROM pgml.models WHERE id = $1", model_id
            )
        return str(chosen)

    async def deploy_model(self, model_id: int, project: Project) -> str:
        """Deploy one model of a project whose caller was checked (strategy ``specific``);
        the model's algorithm."""
        async with self.pool.acquire() as connection, connection.transaction():
            await _lock_checked(connection, project)
            row = await connection.fetchrow(
                "SELECT algorithm, status FROM pgml.models WHERE id = $1 AND project_id = $2",
                model_id,
                project.id,
            )
            if row is None:
                raise missing_model(model_id)
            if row["status"] != "successful":
                raise PgmlError(
                    "55000", f"model {model_id} is {row['status']} and cannot be deployed"
                )
            await self._insert_deployment(connection, project.id, model_id, "specific")
        return str(row["algorithm"])

    @staticmethod
    async def _insert_deployment(
        connection: Any, project_id: int, model_id: int, strategy: str
    ) -> None:
        await connection.execute(
            "INSERT INTO pgml.deployments (project_id, model_id, strategy) VALUES ($1, $2, $3)",
            project_id,
            model_id,
            strategy,
        )


def check_strategy(strategy: str) -> None:
    """``pgml.deploy``'s strategies (``specific`` is deploying by model id)."""
    if strategy not in STRATEGIES or strategy == "specific":
        raise invalid_argument(
            f'unknown deployment strategy "{strategy}"',
            hint="Use best_score, most_recent or rollback, or pgml.deploy(model_id).",
        )


async def _lock_checked(connection: Any, project: Project) -> None:
    """Lock the project's row for the deployment; refuse when its owner changed since the
    caller was checked against it."""
    owner = await connection.fetchval(
        "SELECT owner::oid FROM pgml.projects WHERE id = $1 FOR UPDATE", project.id
    )
    if owner is None:
        raise missing_project(project.name)
    if int(owner) != project.owner_oid:
        raise PgmlError(
            "40001",
            f'the owner of project "{project.name}" changed while it was being deployed',
            hint="Run pgml.deploy again.",
        )


def _beats(score: float | None, current: float | None, higher: bool) -> bool:
    if score is None:
        return False
    if current is None:
        return True
    return score > current if higher else score < current
