"""Models shared by every session of the proxy: loaded once, used from worker threads."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from handlers.device import pick_device
from handlers.errors import PgmlError
from handlers.models import ModelNotFound, ModelResolver
from handlers.service import ServiceConnections

log = logging.getLogger("pgml_proxy.serving")

T = TypeVar("T")


class Services:
    """Process-wide state the handlers share: settings, the model cache, the worker pool."""

    def __init__(
        self,
        models_dir: Path | None = None,
        device: str = "auto",
        batch_size: int = 256,
        datasets_dir: Path | None = None,
        service: ServiceConnections | None = None,
    ) -> None:
        self.resolver = ModelResolver(models_dir=models_dir)
        self.batch_size = batch_size
        self.datasets_dir = datasets_dir
        self.service = service
        self.device_setting = device
        self._device: str | None = None
        self._pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="pgml-infer")
        self._models: dict[tuple[str, str], Any] = {}
        self._loading: dict[tuple[str, str], asyncio.Future[Any]] = {}

    @property
    def device(self) -> str:
        if self._device is None:
            self._device = pick_device(self.device_setting)
        return self._device

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        """Run blocking work (tokenising, inference) off the event loop."""
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)

    async def model(self, kind: str, name: str, load: Callable[[Path, str], Any]) -> Any:
        """The loaded model ``name``; concurrent first callers share one load."""
        key = (kind, name)
        if key in self._models:
            return self._models[key]
        pending = self._loading.get(key)
        if pending is None:
            pending = asyncio.get_running_loop().create_future()
            self._loading[key] = pending
            try:
                path = await self.run(self._resolve, name)
                loaded = await self.run(load, path, self.device)
            except BaseException as exc:
                del self._loading[key]
                pending.set_exception(exc)
                pending.exception()  # retrieved here: each waiter re-raises its own copy
                raise
            self._models[key] = loaded
            del self._loading[key]
            pending.set_result(loaded)
            log.info("loaded %s model %s on %s", kind, name, self.device)
            return loaded
        return await asyncio.shield(pending)

    async def ensure_catalog(self, database: str) -> None:
        """The ``pgml`` schema and catalog exist in ``database`` (via the service login)."""
        if self.service is None:
            raise PgmlError(
                "55000",
                "pgml-proxy has no service connection for its catalog",
                hint="Start the proxy with --upstream credentials of a role that may create "
                "the pgml schema.",
            )
        await self.service.ensure_catalog(database)

    def _resolve(self, name: str) -> Path:
        try:
            return self.resolver.resolve(name)
        except ModelNotFound as exc:
            raise PgmlError(
                "42704",
                str(exc),
                detail=exc.detail,
                hint="Put the model in --models-dir as <org>/<name>/.",
            ) from exc

    async def close(self) -> None:
        """Close the service connections and stop the worker threads."""
        if self.service is not None:
            await self.service.close()
        self._pool.shutdown(wait=False, cancel_futures=True)
