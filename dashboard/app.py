"""The dashboard's aiohttp application: HTML pages over the catalog, forms, ``/metrics``."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode

import jinja2
from aiohttp import web
from markupsafe import Markup

from dashboard import charts, queries
from dashboard.metrics import Exporter
from handlers.errors import PgmlError

if TYPE_CHECKING:
    from handlers.projects import Catalog
    from proxy.server import Proxy

log = logging.getLogger("pgml_proxy.dashboard")

HERE = Path(__file__).parent
REQUEST_TIMEOUT = 15.0
"""Seconds a page may wait for the database before it is reported down."""

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class NotFound(Exception):
    """An id in the URL that the catalog does not have."""


def _database_errors() -> tuple[type[BaseException], ...]:
    import asyncpg

    return (
        OSError,
        TimeoutError,
        asyncpg.InterfaceError,
        asyncpg.PostgresConnectionError,
        asyncpg.CannotConnectNowError,
        asyncpg.exceptions.OperatorInterventionError,
    )


def _fmt(value: Any) -> str:
    """A metric or hyperparameter value for a table cell."""
    if value is None:
        return "—"
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, str):
        return value
    return json.dumps(value)


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "—"
    minutes, secs = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h {minutes:02d}m {secs:02d}s" if hours else f"{minutes}m {secs:02d}s"


class Dashboard:
    """The web app bound to one proxy; started next to it, stopped before it."""

    def __init__(self, proxy: Proxy, database: str) -> None:
        self.proxy = proxy
        self.database = database
        self.runner: web.AppRunner | None = None
        self.port = 0
        self.templates = jinja2.Environment(
            loader=jinja2.FileSystemLoader(HERE / "templates"),
            autoescape=True,
            undefined=jinja2.StrictUndefined,
        )
        self.templates.filters["fmt"] = _fmt
        self.templates.filters["duration"] = _duration
        self.exporter = Exporter(self._open_connections, self._models)
        self.app = self.build()

    def build(self) -> web.Application:
        app = web.Application(middlewares=[self._errors])
        app.add_routes(
            [
                web.get("/", self.index),
                web.get("/projects/{id}", self.project),
                web.post("/projects/{id}/deploy", self.deploy),
                web.get("/models/{id}", self.model),
                web.get("/jobs", self.jobs),
                web.post("/jobs/{id}/cancel", self.cancel),
                web.get("/metrics", self.metrics),
                web.static("/static", HERE / "static"),
            ]
        )
        return app

    async def start(self, host: str, port: int) -> None:
        self.runner = web.AppRunner(self.app, access_log=None)
        await self.runner.setup()
        site = web.TCPSite(self.runner, host, port)
        await site.start()
        server = site._server
        sockets = getattr(server, "sockets", None) or []
        self.port = sockets[0].getsockname()[1] if sockets else port
        log.info("dashboard on http://%s:%d/", host, self.port)

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()
            self.runner = None

    # --- helpers -------------------------------------------------------------------

    def _open_connections(self) -> int:
        return len(self.proxy.sessions)

    def _models(self) -> dict[Any, Any]:
        services = self.proxy._services
        return {} if services is None else dict(services._models)

    def _database(self, request: web.Request) -> str:
        return request.query.get("database") or self.database

    def _suffix(self, request: web.Request) -> str:
        """The query string that keeps a ``?database=`` override on links and forms."""
        chosen = request.query.get("database")
        return "" if not chosen else "?" + urlencode({"database": chosen})

    async def _catalog(self, request: web.Request) -> Catalog:
        services = self.proxy.services
        database = self._database(request)
        await services.ensure_catalog(database)
        return await services.catalog(database)

    def _page(
        self, request: web.Request, template: str, status: int = 200, **values: Any
    ) -> web.Response:
        html = self.templates.get_template(template).render(
            database=self._database(request), q=self._suffix(request), **values
        )
        return web.Response(text=html, status=status, content_type="text/html")

    @staticmethod
    def _id(request: web.Request) -> int:
        raw = request.match_info["id"]
        if not raw.isdigit() or len(raw) > 18:
            raise NotFound(raw)
        return int(raw)

    @web.middleware
    async def _errors(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path == "/metrics" or request.path.startswith("/static/"):
            return await handler(request)
        try:
            async with asyncio.timeout(REQUEST_TIMEOUT):
                return await handler(request)
        except NotFound:
            return self._page(request, "error.html", 404, title="Not found", message="")
        except web.HTTPException:
            raise
        except PgmlError as error:
            return self._page(request, "error.html", 409, title="Refused", message=error.message)
        except Exception as error:
            if isinstance(error, _database_errors()):
                database = self._database(request)
                log.warning("dashboard: database %s unavailable: %s", database, error)
                return self._page(
                    request,
                    "error.html",
                    503,
                    title="Database unavailable",
                    message=f"The database {self._database(request)!r} cannot be reached "
                    "right now; this page will work again once it is back.",
                )
            log.exception("dashboard: error on %s", request.path)
            return self._page(request, "error.html", 500, title="Internal error", message="")

    # --- pages ---------------------------------------------------------------------

    async def index(self, request: web.Request) -> web.StreamResponse:
        catalog = await self._catalog(request)
        found = await queries.projects(catalog.pool)
        return self._page(request, "index.html", projects=found)

    async def project(self, request: web.Request) -> web.StreamResponse:
        project_id = self._id(request)
        catalog = await self._catalog(request)
        found = await queries.project(catalog.pool, project_id)
        if found is None:
            raise NotFound(project_id)
        models = await queries.project_models(catalog.pool, project_id)
        history = await queries.deployments(catalog.pool, project_id)
        return self._page(
            request, "project.html", project=found, models=models, deployments=history
        )

    async def deploy(self, request: web.Request) -> web.StreamResponse:
        project_id = self._id(request)
        form = await request.post()
        raw = str(form.get("model_id", ""))
        if not raw.isdigit():
            raise NotFound(raw)
        catalog = await self._catalog(request)
        model = await queries.model(catalog.pool, int(raw))
        if model is None or model.project_id != project_id:
            raise NotFound(raw)
        await catalog.deploy_model(model.id, await catalog.model_project(model.id))
        raise web.HTTPSeeOther(f"/projects/{project_id}{self._suffix(request)}")

    async def model(self, request: web.Request) -> web.StreamResponse:
        model_id = self._id(request)
        catalog = await self._catalog(request)
        found = await queries.model(catalog.pool, model_id)
        if found is None:
            raise NotFound(model_id)
        snapshot = await queries.snapshot(catalog.pool, found.snapshot_id)
        curves = await queries.curves(catalog.pool, model_id)
        svgs = [
            (name, Markup(charts.line_chart(name, points)))
            for name, points in curves.series.items()
        ]
        names = sorted(set(found.before) | set(found.after))
        return self._page(
            request,
            "model.html",
            model=found,
            snapshot=snapshot,
            curves=curves,
            charts=svgs,
            metric_names=names,
        )

    async def jobs(self, request: web.Request) -> web.StreamResponse:
        catalog = await self._catalog(request)
        running = await queries.jobs(catalog.pool)
        here = {
            model_id
            for database, model_id in self.proxy.services.trainings
            if database == self._database(request)
        }
        return self._page(request, "jobs.html", jobs=running, here=here)

    async def cancel(self, request: web.Request) -> web.StreamResponse:
        model_id = self._id(request)
        if not self.proxy.services.cancel_training(self._database(request), model_id):
            return self._page(
                request,
                "error.html",
                409,
                title="Not cancelled",
                message=f"Model {model_id} is not being trained by this proxy; only this "
                "proxy's own trainings can be cancelled here.",
            )
        raise web.HTTPSeeOther(f"/jobs{self._suffix(request)}")

    async def metrics(self, request: web.Request) -> web.StreamResponse:
        body = self.exporter.render()
        return web.Response(
            body=body, headers={"Content-Type": "text/plain; version=0.0.4; charset=utf-8"}
        )
