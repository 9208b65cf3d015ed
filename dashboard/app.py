"""The dashboard's aiohttp application: HTML pages over the catalog, forms, ``/metrics``.

Every page but the login (and ``/metrics``, unless configured otherwise) needs a logged-in
PostgreSQL role (see :mod:`dashboard.logins`) and reads the catalog as that role. Every
POST must come from the dashboard's own origin and carry its session's CSRF token; Deploy
and Cancel are then checked as the same calls from SQL are (:mod:`handlers.access`).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import datetime
import hmac
import json
import logging
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode, urlsplit

import jinja2
from aiohttp import web
from markupsafe import Markup

from dashboard import charts, queries
from dashboard.logins import (
    FREE_SLOTS_SQL,
    SESSION_COOKIE,
    Limits,
    LoginFailed,
    Logins,
    RoleConnection,
    Session,
    Unavailable,
)
from dashboard.metrics import Exporter
from dashboard.throttle import Throttled
from handlers.access import require_cancel, require_deploy
from handlers.errors import PgmlError
from handlers.modelcache import LoadedModel

if TYPE_CHECKING:
    from handlers.modelcache import ModelCache
    from handlers.projects import Catalog
    from proxy.relay.server import Proxy

log = logging.getLogger("pgml_proxy.dashboard")

HERE = Path(__file__).parent
REQUEST_TIMEOUT = 15.0
"""Seconds a page may wait for the database before it is reported down."""

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class NotFound(Exception):
    """An id in the URL that the catalog does not have, or a database the role may not
    connect to (``message`` then says so, the same way for both)."""

    def __init__(self, what: object, message: str = "") -> None:
        super().__init__(str(what))
        self.message = message


LOGIN_COOKIE = "pgml_login"
"""The login form's CSRF token, also sent as a cookie (there is no session yet)."""


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


def _bytes(size: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} GiB"


def _when(value: Any) -> str:
    """A timestamp (a datetime, or seconds since the epoch) to the second, in UTC."""
    if isinstance(value, int | float):
        value = datetime.datetime.fromtimestamp(value, datetime.UTC)
    if not isinstance(value, datetime.datetime):
        return "—" if value is None else str(value)
    moment = value if value.tzinfo is None else value.astimezone(datetime.UTC)
    return moment.strftime("%Y-%m-%d %H:%M:%S UTC")


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "—"
    minutes, secs = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h {minutes:02d}m {secs:02d}s" if hours else f"{minutes}m {secs:02d}s"


class Dashboard:
    """The web app bound to one proxy; started next to it, stopped before it."""

    def __init__(
        self,
        proxy: Proxy,
        database: str,
        metrics_login: bool = False,
        limits: Limits | None = None,
        *,
        name: str,
    ) -> None:
        self.proxy = proxy
        self.database = database
        self.metrics_login = metrics_login
        """Whether ``/metrics`` needs a login too (a session, or HTTP Basic for scrapers)."""
        self.logins = Logins(
            proxy.hub.upstream,
            limits or Limits(),
            self._free_slots,
            f"pgml-proxy dashboard ({name})",
        )
        self.runner: web.AppRunner | None = None
        self.port = 0
        self.templates = jinja2.Environment(
            loader=jinja2.FileSystemLoader(HERE / "templates"),
            autoescape=True,
            undefined=jinja2.StrictUndefined,
        )
        self.templates.filters["fmt"] = _fmt
        self.templates.filters["duration"] = _duration
        self.templates.filters["bytes"] = _bytes
        self.templates.filters["when"] = _when
        self.exporter = Exporter(self._models, name_models=metrics_login)
        self.app = self.build()

    def build(self) -> web.Application:
        app = web.Application(middlewares=[self._errors, self._guard])
        app.add_routes(
            [
                web.get("/login", self.login_form),
                web.post("/login", self.login),
                web.post("/logout", self.logout),
                web.get("/", self.index),
                web.get("/projects/{id}", self.project),
                web.post("/projects/{id}/deploy", self.deploy),
                web.get("/models/{id}", self.model),
                web.get("/jobs", self.jobs),
                web.get("/loaded", self.loaded),
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
        self.logins.start()
        server = site._server
        sockets = getattr(server, "sockets", None) or []
        self.port = sockets[0].getsockname()[1] if sockets else port
        log.info("dashboard on http://%s:%d/", host, self.port)

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()
            self.runner = None
        await self.logins.close()

    # --- helpers -------------------------------------------------------------------

    def _models(self) -> ModelCache | None:
        return self.proxy.models

    def _database(self, request: web.Request) -> str:
        return request.query.get("database") or self.database

    def _suffix(self, request: web.Request) -> str:
        """The query string that keeps a ``?database=`` override on links and forms."""
        chosen = request.query.get("database")
        return "" if not chosen else "?" + urlencode({"database": chosen})

    async def _free_slots(self) -> int:
        """The server's connection slots any role may still take (asked through the
        service connection, before the dashboard opens one as a role)."""
        catalog = await self.proxy.services.catalog(self.database)
        return int(await catalog.pool.fetchval(FREE_SLOTS_SQL))

    async def _catalog(self, request: web.Request) -> Catalog:
        """The catalog through the service connection: for writes checked beforehand (a
        page never creates or migrates it)."""
        return await self.proxy.services.catalog(self._database(request))

    async def _lease(self, request: web.Request, database: str) -> RoleConnection:
        """A connection as the logged-in role, given back when the page is done."""
        connection = await self.logins.connection(request["session"], database)
        request.setdefault("leases", []).append(connection)
        return connection

    async def _release(self, request: web.Request) -> None:
        for connection in request.get("leases", ()):
            await self.logins.connections.release(connection)
        request["leases"] = []

    async def _may_connect(self, request: web.Request, database: str) -> None:
        """NotFound unless ``database`` exists and the logged-in role may connect to it,
        asked as that role in the dashboard's own database before anything touches it."""
        home = await self.logins.connection(request["session"], self.database)
        try:
            row = await home.fetchrow(
                "SELECT has_database_privilege(current_user, d.oid, 'CONNECT') AS ok "
                "FROM pg_database AS d WHERE d.datname = $1",
                database,
            )
        finally:
            await self.logins.connections.release(home)
        if row is None or not row["ok"]:
            raise NotFound(
                database,
                f"The database {database!r} does not exist or this role may not connect to it.",
            )

    async def _reader_if_catalog(self, request: web.Request) -> RoleConnection | None:
        """A connection as the logged-in role to the page's database, or None when that
        database has no catalog (the page then shows an empty dashboard)."""
        if "reader" not in request:
            database = self._database(request)
            if database != self.database:
                await self._may_connect(request, database)
            reader = await self._lease(request, database)
            request["reader"] = reader if await queries.has_catalog(reader) else None
        found: RoleConnection | None = request["reader"]
        return found

    async def _reader(self, request: web.Request) -> RoleConnection:
        """As :meth:`_reader_if_catalog`, for pages about one catalog row: NotFound when
        there is no catalog."""
        reader = await self._reader_if_catalog(request)
        if reader is None:
            raise NotFound(self._database(request))
        return reader

    def _page(
        self, request: web.Request, template: str, status: int = 200, **values: Any
    ) -> web.Response:
        session: Session | None = request.get("session")
        html = self.templates.get_template(template).render(
            database=self._database(request),
            q=self._suffix(request),
            role=None if session is None else session.role,
            csrf="" if session is None else session.csrf,
            **values,
        )
        response = web.Response(text=html, status=status, content_type="text/html")
        response.headers["Cache-Control"] = "no-store"
        response.headers["X-Frame-Options"] = "DENY"
        response.headers["Content-Security-Policy"] = (
            "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; "
            "frame-ancestors 'none'"
        )
        return response

    def _forbidden(self, request: web.Request, message: str) -> web.Response:
        return self._page(request, "error.html", 403, title="Forbidden", message=message)

    def _to_login(self, request: web.Request) -> web.HTTPSeeOther:
        query = {"next": request.path_qs}
        if request.query.get("database"):
            query["database"] = request.query["database"]
        return web.HTTPSeeOther("/login?" + urlencode(query))

    @staticmethod
    def _same_origin(request: web.Request) -> bool:
        """Whether a POST comes from the dashboard's own pages (Origin, else Referer)."""
        own = f"{request.scheme}://{request.host}"
        origin = request.headers.get("Origin")
        if origin is not None:
            return origin == own
        referer = request.headers.get("Referer", "")
        return referer == own or referer.startswith(own + "/")

    async def _basic_login(self, request: web.Request) -> bool:
        """HTTP Basic credentials of a role the server accepts (for metrics scrapers)."""
        scheme, _, encoded = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "basic":
            return False
        try:
            role, sep, password = base64.b64decode(encoded, validate=True).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError):
            return False
        return bool(sep and role) and await self.logins.check(
            role, password, self.database, request.remote or ""
        )

    @web.middleware
    async def _guard(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """Logins, and the Origin and CSRF checks of every POST."""
        if request.path.startswith("/static/"):
            return await handler(request)
        if request.method == "POST" and not self._same_origin(request):
            return self._forbidden(request, "The form was not sent from this dashboard.")
        session = self.logins.session(request.cookies.get(SESSION_COOKIE))
        request["session"] = session
        if request.path == "/metrics":
            if self.metrics_login and session is None:
                try:
                    allowed = await self._basic_login(request)
                except Throttled as wait:
                    raise web.HTTPTooManyRequests(
                        headers={"Retry-After": str(wait.seconds)}
                    ) from None
                except Unavailable:
                    raise web.HTTPServiceUnavailable(headers={"Retry-After": "5"}) from None
                if not allowed:
                    raise web.HTTPUnauthorized(
                        headers={"WWW-Authenticate": 'Basic realm="pgml-proxy metrics"'}
                    )
            return await handler(request)
        if request.path == "/login":
            return await handler(request)
        if session is None:
            if request.method == "POST":
                return self._forbidden(request, "Log in first: the session has ended.")
            raise self._to_login(request)
        if request.method == "POST":
            form = await request.post()
            if not session.csrf_ok(str(form.get("csrf", ""))):
                return self._forbidden(
                    request, "The form's CSRF token is not valid: reload the page."
                )
        try:
            return await handler(request)
        except LoginFailed:  # the server no longer lets the role in
            raise self._to_login(request) from None

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
        except NotFound as missing:
            return self._page(
                request, "error.html", 404, title="Not found", message=missing.message
            )
        except web.HTTPException:
            raise
        except Unavailable:
            response = self._page(
                request,
                "error.html",
                503,
                title="Busy",
                message="The dashboard has no database connection free for this page right "
                "now: try again in a few seconds.",
            )
            response.headers["Retry-After"] = "5"
            return response
        except PgmlError as error:
            status = 403 if error.sqlstate == "42501" else 409
            message = error.message + (f" {error.hint}" if error.hint else "")
            return self._page(request, "error.html", status, title="Refused", message=message)
        except Exception as error:
            import asyncpg

            if isinstance(error, asyncpg.InsufficientPrivilegeError):
                return self._forbidden(request, str(error))
            if isinstance(error, asyncpg.InvalidCatalogNameError):
                message = f"The database {self._database(request)!r} does not exist."
                return self._page(request, "error.html", 404, title="Not found", message=message)
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
        finally:
            await self._release(request)

    # --- logging in ----------------------------------------------------------------

    @staticmethod
    def _next(raw: str) -> str:
        """Where to go after the login: a path of this dashboard, never another site. A
        value with a control character, a space or a backslash (browsers drop or turn
        them into ``/``, which can make ``//host``), a scheme or an authority is ``/``."""
        if any(c == "\\" or c.isspace() or not c.isprintable() for c in raw):
            return "/"
        parts = urlsplit(raw)
        if parts.scheme or parts.netloc or not raw.startswith("/") or raw.startswith("//"):
            return "/"
        return raw

    def _login_page(
        self,
        request: web.Request,
        status: int = 200,
        error: str = "",
        role: str = "",
        next_path: str | None = None,
    ) -> web.Response:
        # One token per browser: a page loaded meanwhile (a favicon) must not void the form.
        token = request.cookies.get(LOGIN_COOKIE) or secrets.token_urlsafe(32)
        response = self._page(
            request,
            "login.html",
            status,
            login_csrf=token,
            next=self._next(next_path or request.query.get("next", "/")),
            error=error,
            login_role=role,
        )
        response.set_cookie(
            LOGIN_COOKIE, token, path="/login", httponly=True, samesite="Strict", max_age=3600
        )
        return response

    async def login_form(self, request: web.Request) -> web.StreamResponse:
        if request["session"] is not None:
            raise web.HTTPSeeOther(self._next(request.query.get("next", "/")))
        return self._login_page(request)

    async def login(self, request: web.Request) -> web.StreamResponse:
        form = await request.post()
        sent, expected = str(form.get("csrf", "")), request.cookies.get(LOGIN_COOKIE, "")
        if not expected or not hmac.compare_digest(sent.encode(), expected.encode()):
            return self._forbidden(request, "The login form expired: reload it and try again.")
        role, password = str(form.get("role", "")), str(form.get("password", ""))
        next_path = self._next(str(form.get("next", "/")))
        if not role:
            return self._login_page(request, 400, "Enter a role.", next_path=next_path)
        try:
            session_id, _ = await self.logins.log_in(
                role, password, self.database, request.remote or ""
            )
        except Throttled as wait:
            response = self._login_page(
                request,
                429,
                f"Too many failed logins: wait {wait.seconds} s and try again.",
                role,
                next_path,
            )
            response.headers["Retry-After"] = str(wait.seconds)
            return response
        except LoginFailed:
            return self._login_page(
                request,
                401,
                "Login failed: the role or password is wrong, or the server does not let "
                "this role log in.",
                role,
                next_path,
            )
        response = web.HTTPSeeOther(next_path)
        response.set_cookie(SESSION_COOKIE, session_id, path="/", httponly=True, samesite="Strict")
        response.del_cookie(LOGIN_COOKIE, path="/login")
        raise response

    async def logout(self, request: web.Request) -> web.StreamResponse:
        await self.logins.log_out(request["session"])
        response = web.HTTPSeeOther("/login" + self._suffix(request))
        response.del_cookie(SESSION_COOKIE, path="/")
        raise response

    # --- pages ---------------------------------------------------------------------

    async def index(self, request: web.Request) -> web.StreamResponse:
        reader = await self._reader_if_catalog(request)
        found = [] if reader is None else await queries.projects(reader)
        return self._page(request, "index.html", projects=found)

    async def project(self, request: web.Request) -> web.StreamResponse:
        project_id = self._id(request)
        reader = await self._reader(request)
        found = await queries.project(reader, project_id)
        if found is None:
            raise NotFound(project_id)
        models = await queries.project_models(reader, project_id)
        history = await queries.deployments(reader, project_id)
        try:
            await require_deploy(reader, found.record)
            refusal = ""
        except PgmlError as error:
            refusal = error.message
        return self._page(
            request,
            "project.html",
            project=found,
            models=models,
            deployments=history,
            refusal=refusal,
        )

    async def deploy(self, request: web.Request) -> web.StreamResponse:
        project_id = self._id(request)
        form = await request.post()
        raw = str(form.get("model_id", ""))
        if not raw.isdigit() or len(raw) > 18:
            raise NotFound(raw)
        reader = await self._reader(request)
        model = await queries.model(reader, int(raw))
        if model is None or model.project_id != project_id:
            raise NotFound(raw)
        catalog = await self._catalog(request)
        project = await catalog.model_project(model.id)
        await require_deploy(reader, project)
        await catalog.deploy_model(model.id, project)
        raise web.HTTPSeeOther(f"/projects/{project_id}{self._suffix(request)}")

    async def model(self, request: web.Request) -> web.StreamResponse:
        model_id = self._id(request)
        reader = await self._reader(request)
        found = await queries.model(reader, model_id)
        if found is None:
            raise NotFound(model_id)
        snapshot = await queries.snapshot(reader, found.snapshot_id)
        curves = await queries.curves(reader, model_id)
        parameters = await queries.parameters(reader, model_id)
        svgs = [
            (name, Markup(charts.line_chart(name, chart)))
            for name, chart in charts.grouped(curves.series)
        ]
        names = sorted(set(found.before) | set(found.after))
        return self._page(
            request,
            "model.html",
            model=found,
            snapshot=snapshot,
            parameters=parameters,
            curves=curves,
            charts=svgs,
            metric_names=names,
        )

    async def jobs(self, request: web.Request) -> web.StreamResponse:
        """The trainings in progress, whichever proxy runs them (those whose proxy is
        gone are marked failed first)."""
        reader = await self._reader_if_catalog(request)
        if reader is None:
            return self._page(request, "jobs.html", jobs=[])
        trainings = self.proxy.services.trainings
        if trainings is not None:
            await trainings.reap(self._database(request))
        return self._page(request, "jobs.html", jobs=await queries.jobs(reader))

    async def loaded(self, request: web.Request) -> web.StreamResponse:
        """The models this proxy holds in memory, their sizes and last use, and the budget."""
        cache = self._models()
        return self._page(
            request,
            "loaded.html",
            models=[] if cache is None else await self._known(request, cache.loaded()),
            budget=None if cache is None else cache.known_budget,
            used=0 if cache is None else cache.used,
            counts=None
            if cache is None
            else {
                "evictions": cache.evictions,
                "refusals": cache.refusals,
                "out of memory": cache.out_of_memory,
            },
        )

    async def _known(self, request: web.Request, loaded: list[LoadedModel]) -> list[LoadedModel]:
        """The loaded models the role may know of: a project's only when it can see the
        project; a model named by a path on the server's disk without its path."""
        visible: set[str] = set()
        if any(model.kind == "project" for model in loaded):  # else no connection is needed
            visible = {p.name for p in await queries.projects(await self._reader(request))}
        shown = []
        for model in loaded:
            if model.kind == "project":
                if model.project() in visible:
                    shown.append(model)
            elif model.name.startswith(("/", ".", "~")):
                shown.append(replace(model, name="(a model folder on the proxy's disk)"))
            else:
                shown.append(model)
        return shown

    async def cancel(self, request: web.Request) -> web.StreamResponse:
        model_id = self._id(request)
        if await queries.model(await self._reader(request), model_id) is None:
            raise NotFound(model_id)
        catalog = await self._catalog(request)
        await require_cancel(await self._reader(request), await catalog.model_project(model_id))
        trainings = self.proxy.services.trainings
        if trainings is None or not await trainings.cancel(self._database(request), model_id):
            return self._page(
                request,
                "error.html",
                409,
                title="Not cancelled",
                message=f"Model {model_id} is not being trained.",
            )
        raise web.HTTPSeeOther(f"/jobs{self._suffix(request)}")

    async def metrics(self, request: web.Request) -> web.StreamResponse:
        body = self.exporter.render(await self.proxy.counters())
        return web.Response(
            body=body, headers={"Content-Type": "text/plain; version=0.0.4; charset=utf-8"}
        )
