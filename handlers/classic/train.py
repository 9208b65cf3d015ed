"""``pgml.train``: check the arguments, read the relation in the caller's session, fit off
the event loop, then record the project, snapshot and model, store the model's files and
deploy it when it scores best."""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from handlers.access import DEPLOYMENTS, MODELS, PROJECTS, Role, require
from handlers.classic.algorithms import (
    SUPERVISED,
    TASKS,
    build_estimator,
    check_algorithm,
    normalise_task,
)
from handlers.classic.features import read_table
from handlers.classic.fit import Fitted, Job, fit
from handlers.classic.preprocess import parse_preprocess
from handlers.errors import invalid_argument
from handlers.functions import Args, CallContext
from handlers.loading import quote_ident
from handlers.projects import Catalog, Project
from handlers.tuning.options import parse_test_size
from handlers.tuning.split import count_test_rows

DEFAULT_SEED = 42
SAMPLINGS = ("random", "last", "first", "stratified")
RUNTIMES = ("python", "rust")
"""``rust`` is accepted for PostgresML's sake; every model is trained with Python."""


async def train(ctx: CallContext, batch: Sequence[Args]) -> list[Any]:
    return [[await _train(ctx, *args)] for args in batch]


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
    y_column_name: str | None,
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
) -> tuple[str, str, str, bool]:
    """One call.  Without a relation_name, a project whose latest snapshot was materialized
    trains on that snapshot's rows; otherwise on its relation as it is now."""
    if not project_name:
        raise invalid_argument("pgml.train needs a project_name")
    services = ctx.services
    await services.ensure_catalog(ctx.database)
    catalog: Catalog = await services.catalog(ctx.database)
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
        raise invalid_argument(f'project "{project_name}" is new: pgml.train needs its task')
    task = normalise_task(task)
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
    y_column_name = y_column_name or (last or {}).get("y_column_name")
    if task not in SUPERVISED:
        y_column_name = None
    if not relation_name or (task in SUPERVISED and not y_column_name):
        raise invalid_argument(
            f'project "{project_name}" has no snapshot: pgml.train needs relation_name'
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
    if not table.x:
        raise invalid_argument(f'relation "{relation_name}" has no rows to train on')
    count_test_rows(len(table.x), size)
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
            "rows": len(table.x),
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
            {c.name: c.type for c in [*table.features, table.label] if c is not None},
            analysis,
            len(table.x),
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
