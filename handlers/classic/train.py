"""``pgml.train`` and ``pgml.train_joint`` (several label columns, fitted together): check
the arguments, read the relation in the caller's session, fit off the event loop, then
record the project, snapshot and model, store the model's files and deploy it when it
scores best."""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from handlers.access import (
    CATALOG_READS,
    DEPLOYMENTS,
    MODELS,
    PROJECTS,
    Role,
    require,
    require_read,
)
from handlers.classic.algorithms import (
    REGRESSION,
    SUPERVISED,
    TASKS,
    build_estimator,
    check_algorithm,
    normalise_task,
)
from handlers.classic.features import read_table
from handlers.classic.fit import Fitted, Job, fit
from handlers.classic.preprocess import parse_preprocess
from handlers.errors import PgmlError, invalid_argument
from handlers.loading import quote_ident
from handlers.projects import Catalog, Project
from handlers.signatures import Args, CallContext
from handlers.tuning.options import parse_test_size
from handlers.tuning.split import count_test_rows

DEFAULT_SEED = 42
SAMPLINGS = ("random", "last", "first", "stratified")
RUNTIMES = ("python", "rust")
"""``rust`` is accepted for PostgresML's sake; every model is trained with Python."""


async def train(ctx: CallContext, batch: Sequence[Args]) -> list[Any]:
    return [[await _train(ctx, *args)] for args in batch]


async def train_joint(ctx: CallContext, batch: Sequence[Args]) -> list[Any]:
    return [[await _train(ctx, *args, joint=True)] for args in batch]


def _labels(value: Any, joint: bool, function: str) -> str | list[str] | None:
    """The label column, or a joint model's label columns (at least one, none NULL)."""
    if not joint or value is None:
        return value  # type: ignore[no-any-return]
    if any(v is None for v in value):
        raise PgmlError("22004", f"{function}: y_column_name must not contain NULL")
    if not value or len(set(value)) != len(value):
        raise invalid_argument(
            f"{function} needs distinct label columns in y_column_name",
            hint="For example ARRAY['weight', 'waist', 'pulse'].",
        )
    return list(value)


def _object(value: Any, what: str) -> dict[str, Any]:
    parsed = json.loads(value) if isinstance(value, str) else value
    if parsed is None:
        return {}
    if not isinstance(parsed, dict):
        raise invalid_argument(f"{what} must be a JSON object", hint="For example '{}'.")
    return parsed


async def _require(ctx: CallContext, project: Project | None, deploys: bool) -> Role:
    """INSERT on models (projects for a new one, deployments when it may deploy), and for an
    existing project membership in its owner: what ``pgml.tune`` asks."""
    inserts = [MODELS, DEPLOYMENTS] if deploys else [MODELS]
    hint = " Or train with automatic_deploy => false." if deploys else ""
    if project is None:
        return await require(ctx.session, "pgml.train", [PROJECTS, *inserts], hint=hint)
    return await require(ctx.session, "pgml.train", inserts, project, hint, unseen=[PROJECTS])


async def _train(
    ctx: CallContext,
    project_name: str | None,
    task: str | None,
    relation_name: str | None,
    y_column_name: Any,
    algorithm: str | None,
    hyperparams: Any,
    search: str | None,
    search_params: Any,
    search_args: Any,
    test_size: Any,
    test_sampling: str | None,
    runtime: str | None,
    automatic_deploy: bool | None,
    materialize_snapshot: bool | None,
    preprocess: Any,
    *,
    joint: bool = False,
) -> tuple[str, str, str, bool]:
    """One call.  Without a relation_name, a project whose latest snapshot was materialized
    trains on that snapshot's rows; otherwise on its relation as it is now.  ``joint``:
    ``y_column_name`` lists several label columns."""
    function = "pgml.train_joint" if joint else "pgml.train"
    if not project_name:
        raise invalid_argument(f"{function} needs a project_name")
    y_column_name = _labels(y_column_name, joint, function)
    services = ctx.services
    await services.ensure_catalog(ctx.database)
    catalog: Catalog = await services.catalog(ctx.database)
    await require_read(ctx.session, CATALOG_READS)
    existing = await catalog.project(project_name)
    deploys = automatic_deploy is not False
    caller = await _require(ctx, existing, deploys)
    if existing is not None and existing.task not in TASKS:
        raise invalid_argument(
            f'project "{project_name}" is a {existing.task} project',
            hint="Tune it with pgml.tune; pgml.train trains " + ", ".join(TASKS) + " projects.",
        )
    if existing is not None and task is None:
        task = existing.task
    if task is None:
        raise invalid_argument(f'project "{project_name}" is new: {function} needs its task')
    task = normalise_task(task)
    if joint and task != REGRESSION:
        raise invalid_argument(
            f"pgml.train_joint trains regression projects, not {task}",
            hint="Train one project a label with pgml.train.",
        )
    if existing is not None and existing.task != task:
        raise invalid_argument(
            f'project "{project_name}" is a {existing.task} project, not {task}',
            hint="Use a new project name for another task.",
        )
    last = await catalog.last_run(existing) if existing else None
    source = None
    if not relation_name and last is not None and last["materialized"]:
        source = f"pgml.snapshot_{last['snapshot_id']}"  # the latest snapshot's own rows
    relation_name = relation_name or (last or {}).get("relation_name")
    if not y_column_name and last is not None:
        labels = [n for n in last["y_column_names"] or [] if n is not None]
        if len(labels) > 1 and not joint:
            raise invalid_argument(
                f'project "{project_name}" has several labels: train it with pgml.train_joint'
            )
        y_column_name = labels if joint else last["y_column_name"]
    if task not in SUPERVISED:
        y_column_name = None
    if not relation_name or (task in SUPERVISED and not y_column_name):
        raise invalid_argument(
            f'project "{project_name}" has no snapshot: {function} needs relation_name'
            + (" and y_column_name" if task in SUPERVISED else "")
        )
    name = check_algorithm(task, algorithm or "linear")
    if (runtime or "python").lower() not in RUNTIMES:
        raise invalid_argument(f'unknown runtime "{runtime}"', hint="Use python or rust.")
    sampling = str(test_sampling or "random").strip().lower()
    if sampling not in SAMPLINGS or (sampling == "stratified" and task != "classification"):
        raise invalid_argument(
            f'test_sampling "{test_sampling}" is not one of random, first, last'
            + (", stratified" if task == "classification" else "")
        )
    size = parse_test_size(0.25 if test_size is None else test_size)
    job = Job(
        task,
        name,
        _object(hyperparams, "hyperparams"),
        None if search is None else search.strip().lower(),
        _object(search_params, "search_params"),
        _object(search_args, "search_args"),
        size,
        sampling,
        DEFAULT_SEED,
    )
    await services.run(build_estimator, task, name, job.hyperparams)  # refuses bad ones
    table = await read_table(ctx.session, source or relation_name, y_column_name)
    if not table.rows:
        raise invalid_argument(f'relation "{relation_name}" has no rows to train on')
    count_test_rows(table.rows, size)
    job.preprocess = parse_preprocess(preprocess, [c.name for c in table.features])
    ctx.check_cancel()
    workdir = Path(tempfile.mkdtemp(prefix="pgml-train-", dir=services.work_dir()))
    try:
        folder = workdir / "model"
        async with services.capacity.caller_share(ctx.caller):  # a role keeps a thread free
            fitted: Fitted = await services.run(fit, table, job, folder)
        ctx.check_cancel()
        project = existing or await catalog.claim_project(
            project_name, task, caller.oid, lambda p: _require(ctx, p, deploys)
        )
        analysis = {
            "rows": table.rows,
            "train_rows": fitted.train_rows,
            "test_rows": fitted.test_rows,
            "features": fitted.features,
        }
        snapshot_id = await catalog.add_snapshot(
            project,
            relation_name if source else table.relation,
            y_column_name,
            size,
            sampling,
            {c.name: c.type for c in [*table.features, table.label, *table.joint] if c},
            analysis,
            table.rows,
            table.checksum,
            bool(materialize_snapshot),
        )
        if materialize_snapshot:
            await ctx.session.run_sql(
                f"CREATE TABLE pgml.{quote_ident(f'snapshot_{snapshot_id}')} AS "
                f"SELECT * FROM {table.relation}"
            )
        model_id, created_at = await catalog.add_model(
            project, snapshot_id, name, fitted.hyperparams
        )
        await catalog.describe_training(
            model_id,
            "python",
            fitted.features,
            job.search,
            job.search_params,
            job.search_args,
        )
        await catalog.finish_model(model_id, fitted.metrics, folder)
        services.keep_trained(ctx.database, model_id, created_at, folder)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    deployed = deploys and await catalog.deploy_automatically(project, model_id)
    if deployed:
        await ctx.session.notice(f"model {model_id} deployed for project {project_name}")
    return project.name, task, name, deployed
