"""Catalog reads for the dashboard, through a connection as the logged-in role (see
:mod:`dashboard.logins`), so that its grants and row-level security decide what it sees.

They read the tables, not the views: a view reads with its owner's rights on servers
before PostgreSQL 15 (no ``security_invoker``)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from handlers.artifact import KEY_METRICS
from handlers.classic.algorithms import TASKS as CLASSIC_TASKS
from handlers.projects import Project
from handlers.secrets import without_secrets


def _json(value: Any) -> Any:
    """A JSONB value as asyncpg returns it (text) decoded; ``{}`` for NULL."""
    if value is None:
        return {}
    return json.loads(value) if isinstance(value, str) else value


def key_metric(task: str) -> tuple[str, bool]:
    """The metric models of ``task`` are compared by, and whether higher is better."""
    return KEY_METRICS.get(task, ("eval_loss", False))


@dataclass(slots=True)
class ModelRow:
    id: int
    project_id: int
    project: str
    task: str
    algorithm: str
    status: str
    hyperparams: dict[str, Any]
    metrics: dict[str, Any]
    error: str | None
    created_at: Any
    updated_at: Any
    snapshot_id: int | None = None
    deployed: bool = False
    runtime: str | None = None
    search: str | None = None
    search_params: dict[str, Any] = field(default_factory=dict)
    search_args: dict[str, Any] = field(default_factory=dict)
    trained_by: str | None = None
    """The proxy that runs (or ran) its training."""

    @property
    def classic(self) -> bool:
        """A model of ``pgml.train`` (an algorithm, not a tuned base model)."""
        return self.task in CLASSIC_TASKS

    @property
    def before(self) -> dict[str, Any]:
        before = self.metrics.get("before_tuning")
        return before if isinstance(before, dict) else {}

    @property
    def after(self) -> dict[str, Any]:
        return {k: v for k, v in self.metrics.items() if k not in _NOT_METRICS}

    @property
    def searched(self) -> list[tuple[dict[str, Any], Any]]:
        """A search's candidates and their mean cross-validated scores, best first."""
        found = self.metrics.get("search_results")
        if not isinstance(found, dict):
            return []
        pairs = zip(found.get("params", []), found.get("mean_test_score", []), strict=False)
        return sorted(pairs, key=lambda p: -p[1] if isinstance(p[1], int | float) else 0)

    @property
    def key(self) -> str:
        return key_metric(self.task)[0]


@dataclass(slots=True)
class ProjectRow:
    id: int
    name: str
    task: str
    owner_oid: int
    owner: str
    models: int
    deployed_id: int | None
    deployed_algorithm: str | None
    deployed_metrics: dict[str, Any]

    @property
    def key(self) -> str:
        return key_metric(self.task)[0]

    @property
    def classic(self) -> bool:
        return self.task in CLASSIC_TASKS

    @property
    def record(self) -> Project:
        """The project as the access checks take it."""
        return Project(self.id, self.name, self.task, self.owner_oid, self.owner)


@dataclass(slots=True)
class Curves:
    """Training curves from ``pgml.logs``: per series, its (step, value) points."""

    series: dict[str, list[tuple[float, float]]] = field(default_factory=dict)
    max_steps: int | None = None
    last_step: int | None = None


@dataclass(slots=True)
class Job:
    model: ModelRow
    last_step: int | None
    max_steps: int | None
    seconds_left: float | None

    @property
    def progress(self) -> float | None:
        if not self.max_steps or self.last_step is None:
            return None
        return min(1.0, self.last_step / self.max_steps)


_NOT_METRICS = frozenset({"before_tuning", "search_results"})
"""Entries of a model's metrics that are not figures of the model."""

_DEPLOYED = (
    "(SELECT d.model_id FROM pgml.deployments AS d WHERE d.project_id = p.id "
    "ORDER BY d.created_at DESC, d.id DESC LIMIT 1)"
)
"""The project ``p``'s deployed model."""

_MODEL_SELECT = (
    "SELECT m.id, m.project_id, p.name AS project, p.task, m.algorithm, m.status, "
    "m.hyperparams::text AS hyperparams, m.metrics::text AS metrics, m.error, m.created_at, "
    f"m.updated_at, m.snapshot_id, m.id IS NOT DISTINCT FROM {_DEPLOYED} AS deployed, "
    "m.runtime, m.search, m.search_params::text AS search_params, "
    "m.search_args::text AS search_args, m.trained_by "
    "FROM pgml.models AS m JOIN pgml.projects AS p ON p.id = m.project_id "
)


def _model(row: Any) -> ModelRow:
    return ModelRow(
        id=row["id"],
        project_id=row["project_id"],
        project=row["project"],
        task=row["task"],
        algorithm=row["algorithm"],
        status=row["status"],
        hyperparams=without_secrets(_json(row["hyperparams"])),
        metrics=_json(row["metrics"]),
        error=row["error"],
        created_at=row["created_at"],
        updated_at=row["updated_at"],
        snapshot_id=row["snapshot_id"],
        deployed=bool(row["deployed"]),
        runtime=row["runtime"],
        search=row["search"],
        search_params=_json(row["search_params"]),
        search_args=_json(row["search_args"]),
        trained_by=row["trained_by"],
    )


async def has_catalog(pool: Any) -> bool:
    """Whether the database has the catalog (the dashboard never creates it)."""
    row = await pool.fetchrow("SELECT to_regclass('pgml.projects') IS NOT NULL AS found")
    return bool(row["found"])


async def projects(pool: Any, project_id: int | None = None) -> list[ProjectRow]:
    """Every project (or the one of ``project_id``) with its deployed model and number of
    models."""
    rows = await pool.fetch(
        "SELECT p.id, p.name, p.task, p.owner::oid AS owner_oid, p.owner::text AS owner, "
        "(SELECT count(*) FROM pgml.models AS m WHERE m.project_id = p.id) AS models, "
        "m.id AS model_id, m.algorithm, m.metrics::text AS metrics "
        f"FROM pgml.projects AS p LEFT JOIN pgml.models AS m ON m.id = {_DEPLOYED} "
        "WHERE $1::bigint IS NULL OR p.id = $1 ORDER BY p.id",
        project_id,
    )
    return [
        ProjectRow(
            id=r["id"],
            name=r["name"],
            task=r["task"],
            owner_oid=int(r["owner_oid"]),
            owner=r["owner"],
            models=r["models"],
            deployed_id=r["model_id"],
            deployed_algorithm=r["algorithm"],
            deployed_metrics=_json(r["metrics"]),
        )
        for r in rows
    ]


async def project(pool: Any, project_id: int) -> ProjectRow | None:
    found = await projects(pool, project_id)
    return found[0] if found else None


async def project_models(pool: Any, project_id: int) -> list[ModelRow]:
    rows = await pool.fetch(_MODEL_SELECT + "WHERE m.project_id = $1 ORDER BY m.id", project_id)
    return [_model(r) for r in rows]


async def deployments(pool: Any, project_id: int) -> list[dict[str, Any]]:
    rows = await pool.fetch(
        "SELECT d.id, d.model_id, d.strategy, d.created_at, m.algorithm "
        "FROM pgml.deployments AS d LEFT JOIN pgml.models AS m ON m.id = d.model_id "
        "WHERE d.project_id = $1 ORDER BY d.created_at, d.id",
        project_id,
    )
    return [dict(r) for r in rows]


async def model(pool: Any, model_id: int) -> ModelRow | None:
    row = await pool.fetchrow(_MODEL_SELECT + "WHERE m.id = $1", model_id)
    return None if row is None else _model(row)


async def snapshot(pool: Any, snapshot_id: int | None) -> dict[str, Any] | None:
    if snapshot_id is None:
        return None
    row = await pool.fetchrow(
        "SELECT id, relation_name, y_column_name, test_size, test_sampling, rows, checksum, "
        "materialized, analysis::text AS analysis, columns::text AS columns "
        "FROM pgml.snapshots WHERE id = $1",
        snapshot_id,
    )
    if row is None:
        return None
    found = dict(row)
    found["analysis"] = _json(found["analysis"])
    labels = set(found["y_column_name"] or [])
    columns = _json(found.pop("columns"))
    found["features"] = (  # by name: JSONB keeps no order
        sorted((name, kind) for name, kind in columns.items() if name not in labels)
        if isinstance(columns, dict)
        else []
    )
    return found


async def parameters(pool: Any, model_id: int) -> dict[str, Any] | None:
    """How the model was tuned (``full``, ``lora``, ``qlora``) and its trainable and total
    parameters, as its training logged them."""
    row = await pool.fetchrow(
        "SELECT logs::text AS logs FROM pgml.logs WHERE model_id = $1 "
        "AND logs ? 'trainable_parameters' ORDER BY id LIMIT 1",
        model_id,
    )
    return None if row is None else dict(_json(row["logs"]))


SUMMARY = frozenset(
    {
        "train_runtime",
        "train_samples_per_second",
        "train_steps_per_second",
        "total_flos",
        "train_loss",
    }
)
"""Figures of the training run's last log, not curves (the metrics table has them)."""


async def curves(pool: Any, model_id: int) -> Curves:
    """Loss, learning rate and evaluation metrics against step, in log order; evaluation
    metrics start at step 0 with the model before tuning."""
    rows = await pool.fetch(
        "SELECT logs::text AS logs FROM pgml.logs WHERE model_id = $1 ORDER BY id", model_id
    )
    out = Curves()
    before: dict[str, Any] = {}
    for row in rows:
        record = _json(row["logs"])
        if not isinstance(record, dict):
            continue
        if isinstance(record.get("before_tuning"), dict):
            before = record["before_tuning"]
            continue
        if isinstance(record.get("max_steps"), int | float):
            out.max_steps = int(record["max_steps"])
        step = record.get("step")
        if not isinstance(step, int | float):
            continue
        out.last_step = int(step)
        for name, value in record.items():
            if name in ("step", "epoch", "max_steps", "epochs") or name in SUMMARY:
                continue
            if isinstance(value, int | float) and not isinstance(value, bool):
                out.series.setdefault(name, []).append((float(step), float(value)))
    for name, points in out.series.items():
        value = before.get(name)
        if isinstance(value, int | float) and not isinstance(value, bool):
            points.insert(0, (0.0, float(value)))
    return out


async def jobs(pool: Any) -> list[Job]:
    """Models being trained, with their progress and an extrapolated time left."""
    rows = await pool.fetch(
        _MODEL_SELECT + "WHERE m.status = 'in_progress' ORDER BY m.id",
    )
    found: list[Job] = []
    for row in rows:
        current = _model(row)
        progress = await pool.fetchrow(
            "SELECT max((logs->>'step')::float) AS step, max((logs->>'max_steps')::float) AS total,"
            " extract(epoch FROM now() - min(created_at)) AS elapsed "
            "FROM pgml.logs WHERE model_id = $1",
            current.id,
        )
        total = progress["total"]
        step = progress["step"] if progress["step"] is not None or total is None else 0
        left: float | None = None
        if step and total and progress["elapsed"] is not None:
            elapsed = float(progress["elapsed"])
            left = max(0.0, elapsed * (float(total) - float(step)) / float(step))
        found.append(
            Job(
                current,
                None if step is None else int(step),
                None if total is None else int(total),
                left,
            )
        )
    return found
