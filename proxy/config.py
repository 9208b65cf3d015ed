"""Command-line flags, each also settable as ``PGML_PROXY_<FLAG>`` in the environment."""

from __future__ import annotations

import argparse
import dataclasses
import os
import socket
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import platformdirs

from handlers.capacity import Limits
from proxy.embedded import DEFAULT_DATA_DIR

ENV_PREFIX = "PGML_PROXY_"
DEFAULT_CACHE_DIR = Path(platformdirs.user_cache_dir("pgml-proxy"))
LIMIT_FLAGS = {
    "max-new-tokens": "tokens one generation may ask for and make",
    "max-inputs": "inputs (texts, documents) in one pgml call",
    "max-input-chars": "characters of one input of a pgml call",
    "max-stream-rows": "rows one pgml.transform_stream may send",
    "inference-threads": "threads that run models; one caller (login role) may hold all but "
    "one of them",
    "max-carried-mb": "megabytes of rows and results that one caller's statements carry "
    "through the proxy at once where they may not write (read-only, a standby)",
}
"""The flags of :class:`handlers.capacity.Limits`, one per field."""
MAX_WORKERS = 256


@dataclass(frozen=True, slots=True)
class Settings:
    host: str
    port: int
    upstream: str | None
    data_dir: Path
    tls_cert: Path | None
    tls_key: Path | None
    log_level: str
    log_format: str
    connect_timeout: float
    shutdown_grace: float
    models_dir: Path | None
    datasets_dir: Path | None
    cache_dir: Path
    device: str
    batch_size: int
    limits: Limits
    train_processes: int | None = None
    ray_address: str | None = None
    dashboard_port: int = 0
    dashboard_database: str | None = None
    model_memory: str | None = None
    allow_models: tuple[str, ...] = ()
    trust_remote_code: tuple[str, ...] = ()
    dashboard_metrics_login: bool = False
    dashboard_connections: int = 10
    dashboard_connections_per_role: int = 2
    dashboard_connection_idle: float = 60.0
    dashboard_connection_wait: float = 5.0
    dashboard_login_delay: float = 1.0
    dashboard_login_max_delay: float = 300.0
    workers: int = 1
    """Relay processes accepting on ``port`` (``SO_REUSEPORT``)."""
    name: str = ""
    """How this proxy is named to the others and to the DBA (``trained_by``,
    ``application_name``); :func:`parse_settings` fills in host and port."""


def _boolean(text: str) -> bool:
    value = text.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"{text!r} is not a boolean: use true or false")


def _env(flag: str) -> str | None:
    return os.environ.get(ENV_PREFIX + flag.upper().replace("-", "_"))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pgml-proxy",
        description="PostgreSQL wire-protocol proxy that runs pgml.* functions itself.",
        epilog=f"Every flag can also be set as an environment variable {ENV_PREFIX}<FLAG>, "
        f"e.g. {ENV_PREFIX}UPSTREAM.",
    )

    def add(flag: str, help_text: str, default: str | None, **kwargs: Any) -> None:
        parser.add_argument(f"--{flag}", default=_env(flag) or default, help=help_text, **kwargs)

    add("host", "address to listen on (default %(default)s)", "127.0.0.1")
    add("port", "port to listen on (default %(default)s)", "6432", type=int)
    add(
        "workers",
        "relay processes accepting clients on --port, the kernel spreading connections "
        "over them; each runs the models of its own statements (default %(default)s)",
        "1",
        type=int,
        metavar="N",
    )
    add(
        "name",
        "this proxy's name, in the application_name of its own connections and in the "
        "record of the trainings it runs (default: <hostname>:<port>)",
        None,
    )
    add(
        "upstream",
        "connection string of the real PostgreSQL; without it an embedded "
        "PostgreSQL is started in --data-dir",
        None,
        metavar="DSN",
    )
    add(
        "data-dir",
        "data folder of the embedded PostgreSQL (default %(default)s)",
        str(DEFAULT_DATA_DIR),
        type=Path,
    )
    add("tls-cert", "PEM certificate for TLS from clients", None, type=Path)
    add("tls-key", "PEM private key for --tls-cert", None, type=Path)
    add(
        "log-level",
        "debug, info, warning or error (default %(default)s)",
        "info",
        choices=["debug", "info", "warning", "error"],
    )
    add(
        "log-format",
        "text, or json for one JSON object a line (default %(default)s)",
        "text",
        choices=["text", "json"],
    )
    add(
        "connect-timeout",
        "seconds to wait for the upstream server (default %(default)s)",
        "10",
        type=float,
    )
    add(
        "shutdown-grace",
        "seconds in-flight statements get on SIGINT/SIGTERM (default %(default)s)",
        "5",
        type=float,
    )
    add(
        "models-dir",
        "folder of local models laid out as <org>/<name>/, looked in first for model names",
        None,
        type=Path,
    )
    add(
        "datasets-dir",
        "folder of local datasets, looked in first by pgml.load_dataset (a name's folder or file)",
        None,
        type=Path,
    )
    add(
        "cache-dir",
        "local copies of trained models, restored from pgml.files when missing "
        "(default %(default)s)",
        str(DEFAULT_CACHE_DIR),
        type=Path,
    )
    add("device", "where models run: auto, cpu, cuda, cuda:N or mps (default %(default)s)", "auto")
    for field in dataclasses.fields(Limits):
        flag = field.name.replace("_", "-")
        help_text = LIMIT_FLAGS[flag]
        add(flag, f"{help_text} (default %(default)s)", str(field.default), type=int)
    add(
        "batch-size",
        "rows per model call when a pgml function reads a column (default %(default)s)",
        "256",
        type=int,
    )
    add(
        "train-processes",
        "training processes per pgml.tune, data-parallel (default: one per GPU with "
        "--device cuda, else 1)",
        None,
        type=int,
        metavar="N",
    )
    add(
        "ray-address",
        "the Ray cluster pgml.tune trains on (ray://host:10001, host:6379, auto), with "
        "--train-processes workers; default: local processes",
        None,
        metavar="ADDRESS",
    )
    add(
        "dashboard-port",
        "port of the web dashboard and /metrics, on --host; 0 turns it off (default %(default)s)",
        "0",
        type=int,
    )
    add(
        "dashboard-database",
        "database whose catalog the dashboard shows (default: the database of --upstream, "
        "else postgres)",
        None,
    )
    add(
        "model-memory",
        "memory all loaded models share: bytes (8GiB, 500MB) or a share of the GPU's memory "
        "(0.5, 50%%); idle models are evicted least recently used (default 0.8 of the GPU, "
        "0.5 of RAM on the CPU)",
        None,
    )
    add(
        "allow-models",
        "comma-separated glob patterns of the model names that may be loaded (default: any)",
        None,
    )
    add(
        "trust-remote-code",
        "comma-separated glob patterns of the models that may use trust_remote_code "
        "(default: none)",
        None,
    )
    add(
        "dashboard-metrics-login",
        "true: /metrics needs a login too, a dashboard session or HTTP Basic credentials of a "
        "PostgreSQL role (default %(default)s)",
        "false",
        type=_boolean,
        metavar="BOOL",
    )
    add(
        "dashboard-connections",
        "most connections the dashboard holds to PostgreSQL, all roles together "
        "(default %(default)s)",
        "10",
        type=int,
        metavar="N",
    )
    add(
        "dashboard-connections-per-role",
        "most connections the dashboard holds as one role, shared by its logins "
        "(default %(default)s)",
        "2",
        type=int,
        metavar="N",
    )
    add(
        "dashboard-connection-idle",
        "seconds an unused dashboard connection stays open (default %(default)s)",
        "60",
        type=float,
        metavar="SECONDS",
    )
    add(
        "dashboard-connection-wait",
        "seconds a page waits for a dashboard connection before it answers 503 "
        "(default %(default)s)",
        "5",
        type=float,
        metavar="SECONDS",
    )
    add(
        "dashboard-login-delay",
        "seconds a role must wait after its third failed login from one address; each "
        "further failure doubles it (default %(default)s)",
        "1",
        type=float,
        metavar="SECONDS",
    )
    add(
        "dashboard-login-max-delay",
        "the longest wait after failed logins (default %(default)s)",
        "300",
        type=float,
        metavar="SECONDS",
    )
    return parser


def _patterns(value: str | None) -> tuple[str, ...]:
    return tuple(p.strip() for p in (value or "").split(",") if p.strip())


def parse_settings(argv: Sequence[str] | None = None) -> Settings:
    parser = build_parser()
    args = parser.parse_args(argv)
    if (args.tls_cert is None) != (args.tls_key is None):
        parser.error("--tls-cert and --tls-key go together")
    for flag in ("batch-size", *LIMIT_FLAGS):
        if int(getattr(args, flag.replace("-", "_"))) < 1:
            parser.error(f"--{flag} must be at least 1")
    if not 1 <= int(args.workers) <= MAX_WORKERS:
        parser.error(f"--workers must be between 1 and {MAX_WORKERS}")
    if args.train_processes is not None and int(args.train_processes) < 1:
        parser.error("--train-processes must be at least 1")
    if not 0 <= int(args.dashboard_port) <= 65535:
        parser.error("--dashboard-port must be between 0 and 65535")
    if int(args.dashboard_connections_per_role) < 1:
        parser.error("--dashboard-connections-per-role must be at least 1")
    if int(args.dashboard_connections) < int(args.dashboard_connections_per_role):
        parser.error("--dashboard-connections must be at least --dashboard-connections-per-role")
    for flag in (
        "dashboard_connection_idle",
        "dashboard_connection_wait",
        "dashboard_login_delay",
        "dashboard_login_max_delay",
    ):
        if float(getattr(args, flag)) < 0:
            parser.error(f"--{flag.replace('_', '-')} must not be negative")
    from handlers.modelcache import parse_memory

    try:
        parse_memory(args.model_memory)
    except ValueError as exc:
        parser.error(str(exc))
    return Settings(
        host=args.host,
        port=int(args.port),
        upstream=args.upstream,
        data_dir=Path(args.data_dir),
        tls_cert=Path(args.tls_cert) if args.tls_cert else None,
        tls_key=Path(args.tls_key) if args.tls_key else None,
        log_level=args.log_level,
        log_format=args.log_format,
        connect_timeout=float(args.connect_timeout),
        shutdown_grace=float(args.shutdown_grace),
        models_dir=Path(args.models_dir) if args.models_dir else None,
        datasets_dir=Path(args.datasets_dir) if args.datasets_dir else None,
        cache_dir=Path(args.cache_dir).expanduser(),
        device=args.device,
        batch_size=int(args.batch_size),
        limits=Limits(**{f.name: int(getattr(args, f.name)) for f in dataclasses.fields(Limits)}),
        train_processes=None if args.train_processes is None else int(args.train_processes),
        ray_address=args.ray_address or None,
        dashboard_port=int(args.dashboard_port),
        dashboard_database=args.dashboard_database,
        model_memory=args.model_memory,
        allow_models=_patterns(args.allow_models),
        trust_remote_code=_patterns(args.trust_remote_code),
        dashboard_metrics_login=bool(args.dashboard_metrics_login),
        dashboard_connections=int(args.dashboard_connections),
        dashboard_connections_per_role=int(args.dashboard_connections_per_role),
        dashboard_connection_idle=float(args.dashboard_connection_idle),
        dashboard_connection_wait=float(args.dashboard_connection_wait),
        dashboard_login_delay=float(args.dashboard_login_delay),
        dashboard_login_max_delay=float(args.dashboard_login_max_delay),
        workers=int(args.workers),
        name=args.name or f"{socket.gethostname()}:{int(args.port)}",
    )
