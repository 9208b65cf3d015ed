"""Models shared by every session of the proxy: loaded once, used from worker threads."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import shutil
import sys
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable, Hashable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from handlers.allowlist import ModelPolicy
from handlers.artifact import served_base
from handlers.batching import Batcher, Work
from handlers.capacity import INFERENCE_THREADS, Capacity, Limits, Stopped
from handlers.deployments import DeploymentCache
from handlers.device import pick_device
from handlers.errors import PgmlError
from handlers.files import FileRights, with_rights
from handlers.holds import Holds
from handlers.modelcache import (
    LoadedModel,
    MemorySetting,
    ModelCache,
    until_stopped,
    weights_bytes,
)
from handlers.models import ModelNotFound, ModelResolver, unreadable, unreadable_errors
from handlers.projects import Catalog, Deployed
from handlers.service import ServiceConnections
from handlers.signatures import CallContext
from handlers.trainings import Trainings

log = logging.getLogger("pgml_proxy.serving")

T = TypeVar("T")

COMPLETE_MARKER = ".complete"
"""Written last into a local model folder: the folder holds every file."""


class Services:
    """Process-wide state the handlers share: settings, the model cache, the worker pool."""

    def __init__(
        self,
        models_dir: Path | None = None,
        device: str = "auto",
        batch_size: int = 256,
        datasets_dir: Path | None = None,
        service: ServiceConnections | None = None,
        cache_dir: Path | None = None,
        *,
        model_memory: MemorySetting | None = None,
        policy: ModelPolicy | None = None,
        train_processes: int | None = None,
        ray_address: str | None = None,
        limits: Limits | None = None,
    ) -> None:
        self.resolver = ModelResolver(models_dir=models_dir)
        self.policy = policy or ModelPolicy()
        self.batch_size = batch_size
        self.datasets_dir = datasets_dir
        self.file_roots = FileRights.of(datasets_dir, models_dir).roots
        """The folders any caller may have read (real paths); other server files need
        ``pg_read_server_files`` (see :mod:`handlers.files`)."""
        self.service = service
        self.cache_dir = cache_dir or Path(tempfile.gettempdir()) / "pgml-proxy"
        self.device_setting = device
        self._device: str | None = None
        self.train_processes_setting = train_processes
        self.ray_address = ray_address
        """The Ray cluster that trains (``--ray-address``); None: local processes."""
        self.capacity = Capacity(limits or Limits())
        self._pool = ThreadPoolExecutor(
            max_workers=self.capacity.limits.inference_threads, thread_name_prefix=INFERENCE_THREADS
        )
        self.models = ModelCache(model_memory or MemorySetting(), lambda: self.device)
        self._deployed: dict[tuple[str, int], tuple[str, str, int, float]] = {}
        self.deployments = None if service is None else DeploymentCache(service)
        self.batcher = Batcher(self._run_batch, batch_size)
        self.trainings = None if service is None else Trainings(service)
        self.holds = None if service is None else Holds(service)
        """The locks a caller's backend waits on while a call works (see the executor)."""

    @property
    def device(self) -> str:
        if self._device is None:
            self._device = pick_device(self.device_setting)
        return self._device

    @property
    def train_processes(self) -> int:
        """Training processes per tune: as set, else one per GPU of this machine (1 on a
        CPU or one GPU, and on a Ray cluster)."""
        if self.train_processes_setting is not None:
            return self.train_processes_setting
        if self.device == "cuda" and self.ray_address is None:
            import torch

            return max(1, torch.cuda.device_count())
        return 1

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        """Run blocking work (tokenising, inference) off the event loop.  A CUDA
        out-of-memory fails this work only (SQLSTATE 53200), after freeing what it held."""
        try:
            return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)
        except Exception as exc:
            if not _is_out_of_memory(exc):
                raise
            message = str(exc).splitlines()[0] if str(exc) else "CUDA out of memory"
        self.models.out_of_memory += 1
        self.models.collect()
        log.warning("out of device memory in a call: %s", message)
        raise PgmlError(
            "53200",
            "out of GPU memory while running the model",
            detail=message,
            hint="Use smaller batches (--batch-size), fewer tokens, or lower --model-memory "
            "to leave more room for activations.",
        )

    async def submit(
        self, ctx: CallContext, model: Any, key: Hashable, work: Work, items: list[Any]
    ) -> list[Any]:
        """``work`` on ``model`` for ``items``, batched with the other calls waiting under
        ``key`` (see :class:`Batcher`), within the caller's share of the threads.  More
        items than a batch go a batch at a time: a cancel stops the call between two."""
        async with self.capacity.caller_share(ctx.caller):
            return await self.in_pieces(
                ctx,
                items,
                lambda piece: self.batcher.submit(key, model, work, piece, ctx.cancelled),
            )

    async def in_pieces(
        self,
        ctx: CallContext,
        items: list[Any],
        each: Callable[[list[Any]], Awaitable[list[Any]]],
    ) -> list[Any]:
        """``each`` over ``items`` a batch at a time, the statement checked before each
        batch: a cancel stops the call between two."""
        results: list[Any] = []
        for start in range(0, len(items), self.batch_size):
            ctx.check_cancel()
            results += await each(items[start : start + self.batch_size])
        return results

    async def infer(self, ctx: CallContext, model: Any, fn: Callable[..., T], *args: Any) -> T:
        """One call's work on ``model``, unbatched (a ranking, a stream), within the
        caller's share of the threads and the model's queue."""
        async with self.capacity.caller_share(ctx.caller), self.capacity.exclusive(model):
            return await self.run(fn, *args)

    async def _run_batch(
        self, model: Any, work: Work, inputs: list[Any], stopped: Stopped
    ) -> list[Any]:
        async with self.capacity.exclusive(model):
            return await self.run(work, inputs, self.capacity.stopped(stopped))

    async def cached(self, key: Hashable, load: Callable[[], Awaitable[Any]]) -> Any:
        """The object cached under ``key``, within the model memory budget; concurrent first
        callers share one load.  Hold it with :meth:`using` while a call runs on it."""
        return await self.models.get(key, load)

    def using(self, value: Any) -> contextlib.AbstractContextManager[None]:
        """Keep the loaded model ``value`` from being evicted while the block runs."""
        return self.models.using(value)

    @contextlib.asynccontextmanager
    async def lease(
        self,
        kind: str,
        name: str,
        load: Callable[[Path, str], Any],
        *,
        rights: FileRights,
        remote_code: bool = False,
        stopped: Callable[[], bool] = lambda: False,
    ) -> AsyncIterator[Any]:
        """:meth:`model`, held until the block ends."""
        value = await self.model(
            kind, name, load, rights=rights, remote_code=remote_code, stopped=stopped
        )
        with self.using(value):
            yield value

    async def model(
        self,
        kind: str,
        name: str,
        load: Callable[[Path, str], Any],
        *,
        rights: FileRights,
        remote_code: bool = False,
        stopped: Callable[[], bool] = lambda: False,
    ) -> Any:
        """The model ``name`` found by the resolver, loaded once within the budget; the
        caller's rights over it are checked on every call, loaded or not.  A caller that
        stops waiting for the load (``stopped()``) gets 57014; the load goes on."""
        self.check_model(name, rights=rights, remote_code=remote_code)
        key = (kind, name)
        found = self.models.touch(key)
        if found is not None:
            return found
        folder = await self.resolve_model(
            name, rights=rights, remote_code=remote_code, stopped=stopped
        )

        async def estimate() -> int:
            return await self.run(weights_bytes, folder)

        async def load_it() -> Any:
            try:
                loaded = await self.run(load, folder, self.device)
            except unreadable_errors() as exc:
                raise unreadable(f'cannot load {kind} model "{name}"', exc, {folder: name}) from exc
            log.info("loaded %s model %s on %s", kind, name, self.device)
            return loaded

        return await self.models.get(
            key, load_it, name=name, kind=kind, estimate=estimate, stopped=stopped
        )

    def check_model(self, name: str, *, rights: FileRights, remote_code: bool = False) -> None:
        """Refuse a model that ``--allow-models`` (and ``--trust-remote-code``) do not allow,
        or whose files the caller may not have read (see :mod:`handlers.files`)."""
        self.policy.check(name, remote_code=remote_code)
        self.resolver.local(name, rights)  # a few stat calls: not worth a worker thread

    async def check_model_for(self, ctx: Any, name: str) -> None:
        """:meth:`check_model` for the caller of ``ctx`` (whose session must be usable),
        asking its privilege when the name is a server path."""
        await with_rights(ctx, lambda rights: self.check_model(name, rights=rights), thread=False)

    async def resolve_model(
        self,
        name: str,
        *,
        rights: FileRights,
        remote_code: bool = False,
        stopped: Callable[[], bool] = lambda: False,
    ) -> Path:
        """The folder of model ``name``, if ``--allow-models`` allows it and the caller may
        read it.  A caller that stops waiting (``stopped()``: a download can take minutes)
        gets 57014; the download goes on for the next call."""
        self.policy.check(name, remote_code=remote_code)
        resolving = asyncio.ensure_future(self.run(self._resolve, name, rights))
        return await until_stopped(resolving, stopped)

    # --- the catalog and deployed models -----------------------------------------------

    async def ensure_catalog(self, database: str) -> None:
        """The ``pgml`` schema and catalog exist in ``database`` (via the service login);
        from then on, trainings whose proxy is gone are looked for there and marked failed."""
        await self._service().ensure_catalog(database)
        if self.trainings is not None:
            self.trainings.watch(database)

    def forget_catalog(self, database: str) -> None:
        """The catalog of ``database`` was dropped: it is looked for (and created) again
        on the next call, and nothing deployed is remembered from it."""
        if self.service is not None:
            self.service.forget_catalog(database)
        if self.deployments is not None:
            self.deployments.forget(database)

    async def catalog_installed(self, database: str) -> bool:
        return await self._service().catalog_installed(database)

    async def catalog(self, database: str) -> Catalog:
        return Catalog(await self._service().pool(database))

    def work_dir(self) -> Path:
        """Where training writes its files before they are stored."""
        folder = self.cache_dir / "training"
        folder.mkdir(parents=True, exist_ok=True)
        return folder

    def keep_trained(self, database: str, model_id: int, created_at: float, folder: Path) -> None:
        """Keep a just-trained model's folder as its local copy, so it serves warm."""
        target = self._model_folder(database, model_id, created_at)
        target.parent.mkdir(parents=True, exist_ok=True)
        if not target.exists():
            shutil.move(str(folder), target)
            (target / COMPLETE_MARKER).touch()

    async def deployment(self, database: str, project: str) -> Deployed:
        """What the project has deployed now (cached until the catalog changes)."""
        await self.ensure_catalog(database)
        catalog = await self.catalog(database)
        assert self.deployments is not None  # there is a service connection
        return await self.deployments.deployed(database, catalog, project)

    async def served_base(self, database: str, deployed: Deployed) -> str | None:
        """The base model the deployed adapter is served on (None: it is not an adapter),
        from the loaded model or else its manifest (its files restored from ``pgml.files``
        when this proxy has no copy yet)."""
        loaded = self.models.peek(self._deployed_key(database, deployed))
        if loaded is not None:
            return getattr(loaded, "base_model", None)
        folder = await self._local_copy(await self.catalog(database), database, deployed)
        return await self.run(served_base, folder)

    async def deployed(
        self,
        database: str,
        project: str,
        *,
        rights: FileRights,
        stopped: Callable[[], bool] = lambda: False,
    ) -> tuple[Deployed, Any]:
        """The project's deployed model and its loaded predictor, switched on redeploys.
        The base model of an adapter is the caller's to have read (``rights``), checked on
        every call, loaded or not."""
        deployed = await self.deployment(database, project)
        slot = (database, deployed.project.id)
        key = self._deployed_key(database, deployed)
        previous = self._deployed.get(slot)
        if previous is not None and previous != key:
            self.models.discard(previous)  # callers keep their ref
            log.info("project %s switched to model %d", project, deployed.model_id)
        self._deployed[slot] = key
        return deployed, await self.loaded(database, deployed, rights=rights, stopped=stopped)

    async def served(self, database: str, model_id: int) -> Deployed:
        """Model ``model_id`` of any project, deployed or not, to serve by its id."""
        await self.ensure_catalog(database)
        return await (await self.catalog(database)).served(model_id)

    async def loaded(
        self,
        database: str,
        deployed: Deployed,
        *,
        rights: FileRights,
        stopped: Callable[[], bool] = lambda: False,
    ) -> Any:
        """The model's predictor, loaded once for every caller (restored from
        ``pgml.files`` when this proxy has no copy yet).  The base model of an adapter is
        the caller's to have read (``rights``), checked on every call, loaded or not."""
        catalog = await self.catalog(database)
        key = self._deployed_key(database, deployed)
        project = deployed.project.name
        folder: list[Path] = []

        async def estimate() -> int:
            folder.append(await self._local_copy(catalog, database, deployed))
            return await self.run(weights_bytes, folder[0])

        async def load() -> Any:
            from handlers.predictor import load_predictor

            name = f"model_{deployed.model_id}"
            predictor = await load_predictor(self, folder[0], name, rights)
            log.info("loaded model %d of project %s on %s", deployed.model_id, project, self.device)
            return predictor

        name = LoadedModel.project_entry(project, deployed.model_id)
        loaded = await self.models.get(
            key, load, name=name, kind="project", estimate=estimate, stopped=stopped
        )
        base = getattr(loaded, "base_model", None)
        if base is not None:
            self.check_model(base, rights=rights)
        return loaded

    @staticmethod
    def _deployed_key(database: str, deployed: Deployed) -> tuple[Any, ...]:
        """A deployed model's key in the model cache: its id with its creation time (a
        catalog dropped and created again numbers its models from 1 again)."""
        return ("deployed", database, deployed.model_id, deployed.created_at)

    async def _local_copy(self, catalog: Catalog, database: str, deployed: Deployed) -> Path:
        """The model's folder on local disk, restored from ``pgml.files`` when missing."""
        folder = self._model_folder(database, deployed.model_id, deployed.created_at)
        if (folder / COMPLETE_MARKER).exists():
            return folder
        folder.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix="restoring-", dir=folder.parent))
        try:
            count = 0
            async for path, data in catalog.files(deployed.model_id):
                target = (staging / path).resolve()
                if not target.is_relative_to(staging.resolve()):
                    raise PgmlError("XX000", f"model file path {path!r} leaves its folder")
                target.parent.mkdir(parents=True, exist_ok=True)
                with target.open("ab") as handle:
                    handle.write(data)
                count += 1
            if count == 0:
                raise PgmlError(
                    "58P01",
                    f"model {deployed.model_id} has no files in pgml.files",
                    hint="Tune the project again.",
                )
            (staging / COMPLETE_MARKER).touch()
            shutil.rmtree(folder, ignore_errors=True)
            staging.rename(folder)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        log.info("restored model %d from pgml.files into %s", deployed.model_id, folder)
        return folder

    def _model_folder(self, database: str, model_id: int, created_at: float) -> Path:
        login = self._service().login
        server = re.sub(r"[^A-Za-z0-9_.-]", "_", f"{login.host}-{login.port}-{database}")
        return self.cache_dir / "models" / server / f"{model_id}-{round(created_at * 1e6)}"

    def _service(self) -> ServiceConnections:
        if self.service is None:
            raise PgmlError(
                "55000",
                "pgml-proxy has no service connection for its catalog",
                hint="Start the proxy with --upstream credentials of a role that may create "
                "the pgml schema.",
            )
        return self.service

    def _resolve(self, name: str, rights: FileRights) -> Path:
        try:
            return self.resolver.resolve(name, rights)
        except ModelNotFound as exc:
            raise PgmlError(
                "42704",
                str(exc),
                detail=exc.detail,
                hint="Put the model in --models-dir as <org>/<name>/.",
            ) from exc

    def loaded_models(self) -> list[Any]:
        """The models loaded now, most recently used first (for the dashboard)."""
        return self.models.loaded()

    async def close(self) -> None:
        """Close the service connections and stop the worker threads (a generation under
        way stops at its next token)."""
        self.capacity.closing.set()
        if self.trainings is not None:
            await self.trainings.close()
        if self.holds is not None:
            await self.holds.close()
        if self.deployments is not None:
            await self.deployments.close()
        if self.service is not None:
            await self.service.close()
        self._pool.shutdown(wait=False, cancel_futures=True)


def _is_out_of_memory(error: BaseException) -> bool:
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(error, torch.OutOfMemoryError)
