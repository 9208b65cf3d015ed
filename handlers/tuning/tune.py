"""``pgml.tune``: check the arguments, snapshot the relation, train in a worker process,
record the model and its metrics, store its files and deploy it when it is better."""

from __future__ import annotations

import asyncio
import copy
import logging
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from handlers.access import CATALOG_READS, require_read, require_tune
from handlers.artifact import TASKS
from handlers.errors import PgmlError, invalid_argument, unsupported
from handlers.files import FileRights, rights_of, with_rights
from handlers.models import adapter_base, check_model_files
from handlers.projects import Catalog, Project
from handlers.signatures import Args, CallContext
from handlers.trainings import Training
from handlers.tuning.adapters import check_adapter_options
from handlers.tuning.options import (
    TuneOptions,
    arguments_class,
    check_value_types,
    normalise_task,
    parse_hyperparams,
    parse_sampling,
    parse_test_size,
    training_argument_names,
)
from handlers.tuning.runner import TrainingCancelled, run_training
from handlers.tuning.snapshot import read_snapshot

log = logging.getLogger("pgml_proxy.tune")

DEFAULT_SEED = 42


async def tune(ctx: CallContext, batch: Sequence[Args]) -> list[Any]:
    return [[await _tune(ctx, *args)] for args in batch]


async def _tune(
    ctx: CallContext,
    project_name: str | None,
    task: str | None,
    relation_name: str | None,
    y_column_name: str | None,
    model_name: str | None,
    hyperparams: Any,
    test_size: Any,
    test_sampling: str | None,
    automatic_deploy: bool | None,
    materialize_snapshot: bool | None = False,
) -> tuple[str, str, str, bool]:
    if not project_name:
        raise invalid_argument("pgml.tune needs a project_name")
    services = ctx.services
    await services.ensure_catalog(ctx.database)
    catalog: Catalog = await services.catalog(ctx.database)
    await require_read(ctx.session, CATALOG_READS)
    existing = await catalog.project(project_name)
    deploys = automatic_deploy is not False
    caller = await require_tune(ctx.session, existing, deploys)
    last = await catalog.last_run(existing) if existing else None
    task = normalise_task(task) if task else (existing.task if existing else None)
    if task is None:
        raise invalid_argument(f'project "{project_name}" is new: pgml.tune needs its task')
    if task not in TASKS:
        raise invalid_argument(
            f'project "{project_name}" is a {task} project',
            hint="Train it with pgml.train; pgml.tune tunes " + ", ".join(TASKS) + " projects.",
        )
    if existing is not None and existing.task != task:
        raise invalid_argument(
            f'project "{project_name}" is a {existing.task} project, not {task}',
            hint="Use a new project name for another task.",
        )
    relation_name = relation_name or (last or {}).get("relation_name")
    y_column_name = y_column_name or (last or {}).get("y_column_name")
    model_name = model_name or (last or {}).get("algorithm")
    for value, what in (
        (relation_name, "relation_name"),
        (y_column_name, "y_column_name"),
        (model_name, "model_name"),
    ):
        if not value:
            raise invalid_argument(f'project "{project_name}" is new: pgml.tune needs {what}')
    assert relation_name and y_column_name and model_name
    allowed = await services.run(training_argument_names, task)
    options = parse_hyperparams(task, hyperparams, allowed)
    size = parse_test_size(0.25 if test_size is None else test_size)
    sampling = parse_sampling(test_sampling, task)
    await with_rights(
        ctx, lambda rights: _check_training_arguments(options, services.device, rights)
    )
    await services.check_model_for(ctx, model_name)
    model_path = await services.resolve_model(
        model_name, rights=rights_of(ctx), stopped=ctx.cancelled
    )
    await services.run(check_model_files, model_name, model_path)
    base = await services.run(adapter_base, model_path)
    if base is not None:  # an adapter: transformers loads its base model by that name
        await services.check_model_for(ctx, base)
    await services.run(check_adapter_options, options, model_path, services.device)
    seed = int(options.training.get("seed", DEFAULT_SEED))
    workdir = Path(tempfile.mkdtemp(prefix="pgml-tune-", dir=services.work_dir()))
    try:
        snapshot = await read_snapshot(
            ctx.session,
            services.run,
            task,
            relation_name,
            y_column_name,
            size,
            workdir,
            materialize=bool(materialize_snapshot),
        )
        ctx.check_cancel()
        project = existing or await catalog.claim_project(
            project_name, task, caller.oid, lambda p: require_tune(ctx.session, p, deploys)
        )
        snapshot_id = await catalog.add_snapshot(
            project,
            snapshot.relation,
            snapshot.y_column,
            size,
            sampling,
            {c.name: c.type for c in snapshot.columns},
            snapshot.analysis,
            snapshot.rows,
            snapshot.checksum,
            snapshot.materialized is not None,
        )
        if snapshot.materialized is not None:
            await ctx.session.run_sql(
                f"ALTER TABLE {snapshot.materialized} RENAME TO snapshot_{snapshot_id}"
            )
        model_id, created_at = await catalog.add_model(
            project, snapshot_id, model_name, options.stored
        )
        await ctx.session.notice(
            f"training model {model_id} ({model_name}) for {task} on {snapshot.train_rows} "
            f"rows, testing on {snapshot.test_rows}"
        )
        job = {
            "task": options.task,
            "model_name": model_name,
            "model_path": str(model_path),
            "output_dir": str(workdir),
            "data_file": str(snapshot.file),
            "rows": snapshot.rows,
            "test_size": size,
            "sampling": sampling,
            "seed": seed,
            "training": options.training,
            "labels": snapshot.labels,
            "label_type": snapshot.label_type,
            "max_length": options.max_length,
            "max_input_length": options.max_input_length,
            "max_target_length": options.max_target_length,
            "device": services.device,
            "lora": options.lora,
            "quantization": options.quantization,
            "merge_adapter": options.merge_adapter,
        }
        await _train_and_record(ctx, catalog, project, model_id, created_at, job, workdir)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    deployed = deploys and await catalog.deploy_automatically(project, model_id)
    if deployed:
        await ctx.session.notice(f"model {model_id} deployed for project {project_name}")
    return project.name, task, model_name, deployed


async def _train_and_record(
    ctx: CallContext,
    catalog: Catalog,
    project: Project,
    model_id: int,
    created_at: float,
    job: dict[str, Any],
    workdir: Path,
) -> None:
    services = ctx.services

    async def relay(event: dict[str, Any]) -> None:
        record = {k: v for k, v in event.items() if k != "event"}
        if event["event"] == "before":
            record = {"before_tuning": event["metrics"]}
        elif event["event"] == "parameters":
            record = {
                "trainable_parameters": event["trainable"],
                "total_parameters": event["total"],
                "tuning": event["method"],
            }
        await catalog.log(project, model_id, record)
        await ctx.session.notice(describe_progress(event))

    trainings = services.trainings
    assert trainings is not None  # the catalog needs the service connections too
    training: Training | None = None
    stop = asyncio.Event()
    try:
        training = await trainings.start(ctx.database, model_id)
        stop = training.stop
        outcome = await run_training(
            job,
            workdir,
            relay,
            lambda: ctx.cancelled() or stop.is_set(),
            services.train_processes,
            services.ray_address,
        )
        metrics = dict(outcome["after"]) | {"before_tuning": outcome["before"]}
        folder = workdir / "model"
        await catalog.finish_model(model_id, metrics, folder)
        services.keep_trained(ctx.database, model_id, created_at, folder)
    except TrainingCancelled:
        reason = "cancelled from the dashboard" if stop.is_set() else "cancelled by the client"
        await asyncio.shield(catalog.fail_model(model_id, "cancelled", reason))
        raise
    except asyncio.CancelledError:
        await asyncio.shield(catalog.fail_model(model_id, "cancelled", "the client went away"))
        raise
    except PgmlError as error:
        await asyncio.shield(catalog.fail_model(model_id, "failed", error.message))
        raise
    except Exception as error:
        log.exception("training model %d failed", model_id)
        await asyncio.shield(catalog.fail_model(model_id, "failed", str(error)))
        raise PgmlError("XX000", f"training failed: {error}") from error
    finally:
        if training is not None:
            await asyncio.shield(trainings.finish(training))


def _check_training_arguments(options: TuneOptions, device: str, rights: FileRights) -> None:
    """Build the arguments once here, and the reporting integrations they name, so that
    bad values fail before anything is recorded.  A hyperparameter that names a file (a
    DeepSpeed, FSDP or Accelerate configuration) is read only as the caller's rights allow,
    by its real path."""
    check_value_types(options.task, options.training)
    for key in sorted(FILE_ARGUMENTS & options.training.keys()):
        value = options.training[key]
        if isinstance(value, str):
            options.training[key] = rights.require(value, value)
    cls = arguments_class(options.task)
    settings = {"report_to": "none"} | ({"use_cpu": True} if device == "cpu" else {})
    training = copy.deepcopy(options.training)  # TrainingArguments fills in fsdp_config
    with tempfile.TemporaryDirectory() as scratch:
        try:
            arguments = cls(**settings | training, output_dir=scratch)
            _check_reporting(arguments.report_to)
            if arguments.push_to_hub:
                raise unsupported(
                    "push_to_hub is not supported: the trained model is stored in pgml.files",
                    hint="Leave push_to_hub out; pgml-proxy pushes nothing with its own "
                    "credentials.",
                )
        except ImportError as exc:  # deepspeed and the like, when not installed
            raise unsupported(
                f"these hyperparameters need a package that is not installed: {exc}",
                hint="Install it where the proxy runs, or leave those hyperparameters out.",
            ) from exc
        except (TypeError, ValueError) as exc:
            raise invalid_argument(f"bad hyperparameters: {exc}") from exc


FILE_ARGUMENTS = frozenset({"deepspeed", "fsdp_config", "accelerator_config"})
"""``TrainingArguments`` fields whose text value is the path of a file to read."""


def _check_reporting(report_to: Any) -> None:
    """``report_to`` names integrations transformers has, whose packages are installed."""
    from transformers.integrations.integration_utils import get_reporting_integration_callbacks

    callbacks = get_reporting_integration_callbacks(report_to)  # type: ignore[no-untyped-call]
    for callback in callbacks:  # ValueError above: an unknown name
        try:
            callback()
        except (ImportError, RuntimeError) as exc:
            raise unsupported(
                f"report_to {callback.__name__} needs a package that is not installed",
                hint="Install it where the proxy runs, or leave report_to out.",
            ) from exc


def describe_progress(event: dict[str, Any]) -> str:
    """One NOTICE line for a worker event."""
    kind = event.get("event")
    if kind == "before":
        return "before tuning: " + _numbers(event["metrics"])
    if kind == "parameters":
        share = event["trainable"] / event["total"] if event["total"] else 0.0
        return (
            f"{event['method']} tuning: {event['trainable']:,} of {event['total']:,} "
            f"parameters trainable ({share:.2%})"
        )
    if kind == "begin":
        return f"training {event['max_steps']} steps over {event['epochs']:g} epochs"
    skip = {"event", "step", "max_steps", "epoch"}
    values = {k: v for k, v in event.items() if k not in skip}
    return (
        f"epoch {event.get('epoch', 0):.2f} step {event.get('step')}/{event.get('max_steps')}: "
        + _numbers(values)
    )


def _numbers(values: dict[str, Any]) -> str:
    return ", ".join(
        f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in values.items()
    )
