"""The ``python -m proxy`` command: ready line, flags and environment, signals, embedded mode."""

from __future__ import annotations

import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import psutil
import psycopg
import pytest

from tests.integration._wire import wait_for
from tests.support.pgserver import BIN, PostgresCluster, free_port
from tests.support.proxyproc import ROOT, ProxyProcess

FLAGS = (
    "--host",
    "--port",
    "--upstream",
    "--data-dir",
    "--tls-cert",
    "--tls-key",
    "--log-level",
    "--connect-timeout",
    "--shutdown-grace",
)
SIGNALS = pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["TERM", "INT"])


@pytest.fixture
def spawn() -> Iterator[Callable[..., ProxyProcess]]:
    """Build (not start) proxies that are stopped at teardown whatever happens."""
    made: list[ProxyProcess] = []

    def make(*args: str, env: dict[str, str] | None = None) -> ProxyProcess:
        made.append(ProxyProcess(*args, env=env))
        return made[-1]

    yield make
    for process in made:
        process.stop()


@pytest.fixture
def direct(cluster: PostgresCluster) -> Iterator[psycopg.Connection[tuple[object, ...]]]:
    with psycopg.connect(cluster.dsn(), autocommit=True) as conn:
        yield conn


def ready_url(process: ProxyProcess) -> str:
    prefix = "pgml-proxy ready: "
    assert process.ready_line.startswith(prefix), process.ready_line
    return process.ready_line.removeprefix(prefix)


def psql(url: str, sql: str) -> str:
    result = subprocess.run(
        [str(BIN / "psql"), "-X", "-At", "-v", "ON_ERROR_STOP=1", "-d", url, "-c", sql],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def assert_exits_cleanly(process: ProxyProcess, within: float) -> float:
    """Wait for exit status 0; return how long it took."""
    began = time.monotonic()
    try:
        code = process.wait(within)
    except subprocess.TimeoutExpired:
        pytest.fail(f"proxy still running {within} s after the signal:\n{process.log()}")
    assert code == 0, process.log()
    assert "Traceback" not in process.log()
    return time.monotonic() - began


# --- ready line, flags, environment ----------------------------------------------------


def test_ready_line_is_a_working_connection_string(
    cluster: PostgresCluster, spawn: Callable[..., ProxyProcess]
) -> None:
    proxy = spawn("--upstream", cluster.dsn()).start()
    url = ready_url(proxy)
    assert f":{proxy.port}/" in url
    with psycopg.connect(url, autocommit=True, connect_timeout=5) as conn:
        assert conn.execute("SELECT current_user, 6 * 7").fetchone() == ("postgres", 42)
    assert psql(url, "SELECT 'via psql'") == "via psql"


def test_flags_from_environment(
    cluster: PostgresCluster, spawn: Callable[..., ProxyProcess]
) -> None:
    """PGML_PROXY_UPSTREAM and PGML_PROXY_PORT stand in for --upstream and --port."""
    port = free_port()
    proxy = spawn(env={"PGML_PROXY_UPSTREAM": cluster.dsn(), "PGML_PROXY_PORT": str(port)})
    proxy.args = []  # no flags at all: everything comes from the environment
    proxy.port = port
    proxy.start()
    assert f"127.0.0.1:{port}/" in ready_url(proxy)
    with psycopg.connect(proxy.dsn(), autocommit=True, connect_timeout=5) as conn:
        assert conn.execute("SELECT inet_server_port()").fetchone() == (cluster.port,)


def test_flag_overrides_environment(
    cluster: PostgresCluster, spawn: Callable[..., ProxyProcess]
) -> None:
    ignored = free_port()
    proxy = spawn("--upstream", cluster.dsn(), env={"PGML_PROXY_PORT": str(ignored)}).start()
    assert f":{proxy.port}/" in ready_url(proxy)
    assert f":{ignored}/" not in ready_url(proxy)


def test_help_lists_every_flag() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "proxy", "--help"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 0, result.stderr
    missing = [flag for flag in FLAGS if flag not in result.stdout]
    assert not missing, result.stdout
    assert "PGML_PROXY_" in result.stdout


def test_start_time_with_upstream(
    cluster: PostgresCluster, spawn: Callable[..., ProxyProcess]
) -> None:
    """Median time from exec to the ready line, over three starts, is under a second."""
    times = []
    for _ in range(3):
        proxy = spawn("--upstream", cluster.dsn()).start()
        times.append(proxy.started_in)
        proxy.stop()
    assert statistics.median(times) < 1.0, times


# --- signals ---------------------------------------------------------------------------


@SIGNALS
def test_signal_with_idle_client(
    cluster: PostgresCluster, spawn: Callable[..., ProxyProcess], sig: signal.Signals
) -> None:
    """An idle session does not delay shutdown; its next statement fails."""
    proxy = spawn("--upstream", cluster.dsn(), "--shutdown-grace", "5").start()
    with psycopg.connect(proxy.dsn(), autocommit=True, connect_timeout=5) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)
        proxy.signal(sig)
        assert assert_exits_cleanly(proxy, within=5) < 2
        with pytest.raises(psycopg.OperationalError) as caught:
            conn.execute("SELECT 1")
        assert caught.value.sqlstate == "57P01", caught.value
    log = proxy.log()
    assert "unexpectedly" not in log, f"a clean shutdown logged an upstream failure:\n{log}"


@SIGNALS
def test_signal_lets_running_statement_finish(
    cluster: PostgresCluster,
    spawn: Callable[..., ProxyProcess],
    direct: psycopg.Connection[tuple[object, ...]],
    sig: signal.Signals,
) -> None:
    """A statement in flight at the signal completes within --shutdown-grace; new clients
    are refused meanwhile; the proxy exits 0 as soon as the statement is done."""
    proxy = spawn("--upstream", cluster.dsn(), "--shutdown-grace", "5").start()
    with (
        psycopg.connect(proxy.dsn(), autocommit=True, connect_timeout=5) as conn,
        ThreadPoolExecutor(1) as pool,
    ):
        pid = conn.info.backend_pid
        running = pool.submit(lambda: conn.execute("SELECT pg_sleep(1), 'done'").fetchone())
        assert wait_for(
            lambda: (
                direct.execute(
                    "SELECT 1 FROM pg_stat_activity WHERE pid = %s AND state = 'active'", (pid,)
                ).fetchone()
                is not None
            ),
            timeout=3,
        )
        signalled = time.monotonic()
        proxy.signal(sig)
        time.sleep(0.2)
        with pytest.raises(psycopg.OperationalError):
            psycopg.connect(proxy.dsn(), connect_timeout=2)
        assert running.result(timeout=6) == ("", "done")
        assert_exits_cleanly(proxy, within=6)
        assert time.monotonic() - signalled < 3.5, "shutdown waited out the whole grace period"
        with pytest.raises(psycopg.OperationalError):
            conn.execute("SELECT 1")


# --- embedded PostgreSQL -----------------------------------------------------------------


def postgres_processes(data_dir: Path) -> list[psutil.Process]:
    """Live ``postgres`` processes whose command line names ``data_dir``."""
    found = []
    for proc in psutil.process_iter(["name", "cmdline"]):
        cmdline = proc.info["cmdline"] or []
        if proc.info["name"] == "postgres" and any(str(data_dir) in arg for arg in cmdline):
            found.append(proc)
    return found


@pytest.fixture
def data_dir(tmp_path: Path) -> Iterator[Path]:
    path = (tmp_path / "pgdata").resolve()
    yield path
    for proc in postgres_processes(path):  # never leave a server behind, even on failure
        proc.kill()


def test_embedded_mode_keeps_data_across_restarts(
    spawn: Callable[..., ProxyProcess], data_dir: Path
) -> None:
    """Without --upstream the proxy runs its own PostgreSQL in --data-dir, stops it on
    exit, and finds the same data on the next start."""
    first = spawn("--data-dir", str(data_dir)).start(timeout=120)
    url = ready_url(first)
    assert postgres_processes(data_dir)
    psql(url, "CREATE TABLE cli_embedded_kept (v text)")
    psql(url, "INSERT INTO cli_embedded_kept VALUES ('survives restart')")
    first.signal(signal.SIGTERM)
    assert_exits_cleanly(first, within=30)
    assert not (data_dir / "postmaster.pid").exists()
    assert not postgres_processes(data_dir)

    second = spawn("--data-dir", str(data_dir)).start(timeout=60)
    assert psql(ready_url(second), "SELECT v FROM cli_embedded_kept") == "survives restart"
    second.signal(signal.SIGTERM)
    assert_exits_cleanly(second, within=30)
    assert not postgres_processes(data_dir)
