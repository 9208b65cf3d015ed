"""``--workers 2``: two relay processes accept on one port.  The kernel spreads the
clients over both; a client's cancel reaches its statement whichever process the cancel
lands on; ``/metrics`` adds both up; killing one leaves the other's clients working and
it is started again; SIGTERM drains both; the client suites pass through them."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from tests.support import procs
from tests.support.pgserver import PostgresCluster, free_port
from tests.support.proxyproc import ROOT, ProxyProcess

SUITES = (
    "test_psql.py",
    "test_psycopg.py",
    "test_asyncpg.py",
    "test_sqlalchemy.py",
    "test_datasets_copy.py",
    "test_smoke.py",
    "test_auth.py",
    "test_pgml_smoke.py",
)
"""The client suites run again with every proxy they start at ``--workers 2``."""


DASHBOARD = free_port()


@pytest.fixture
def relays(cluster: PostgresCluster) -> Iterator[ProxyProcess]:
    process = ProxyProcess(
        "--upstream", cluster.dsn(), "--workers", "2", "--dashboard-port", str(DASHBOARD)
    )
    yield process.start()
    process.stop()


def _relay_pids(proxy: ProxyProcess) -> list[int]:
    """The relay processes the proxy started (not multiprocessing's resource tracker)."""
    assert proxy.process is not None
    found = subprocess.run(
        ["pgrep", "-P", str(proxy.process.pid)], capture_output=True, text=True, check=False
    ).stdout.split()
    return sorted(int(pid) for pid in found if b"spawn_main" in procs.command(int(pid)))


def _relay_of(
    direct: psycopg.Connection[Any], conn: psycopg.Connection[Any], pids: list[int]
) -> int:
    """The relay process that holds ``conn``'s upstream connection: the one whose socket
    has the local port PostgreSQL sees as the backend's client port."""
    backend = conn.execute("SELECT pg_backend_pid()").fetchone()
    assert backend is not None
    row = direct.execute(
        "SELECT client_port FROM pg_stat_activity WHERE pid = %s", [backend[0]]
    ).fetchone()
    assert row is not None
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if int(fields[1].rsplit(":", 1)[1], 16) == row[0]:
                inodes.add(fields[9])
    for pid in pids:
        try:
            descriptors = list(Path(f"/proc/{pid}/fd").iterdir())
        except OSError:  # it has just ended
            continue
        for fd in descriptors:
            try:
                target = os.readlink(fd)
            except OSError:
                continue
            if target.startswith("socket:[") and target[8:-1] in inodes:
                return pid
    raise AssertionError(f"no relay process holds the upstream port {row[0]}")


def _metric(name: str, timeout: float = 10) -> float:
    url = f"http://127.0.0.1:{DASHBOARD}/metrics"
    text = urllib.request.urlopen(url, timeout=timeout).read().decode()
    found = re.search(rf"^{name} (\S+)$", text, re.MULTILINE)
    assert found is not None, text
    return float(found.group(1))


def _spread(
    proxy: ProxyProcess, cluster: PostgresCluster, count: int
) -> tuple[list[psycopg.Connection[Any]], dict[int, int]]:
    """``count`` sessions, and which relay process holds each (by index); at least one
    on each process (more are opened until then)."""
    pids = _relay_pids(proxy)
    assert len(pids) == 2
    sessions: list[psycopg.Connection[Any]] = []
    holders: dict[int, int] = {}
    with psycopg.connect(cluster.dsn(), autocommit=True) as direct:
        while len(sessions) < count or len(set(holders.values())) < 2:
            assert len(sessions) < 64, "the kernel sent every client to one relay process"
            conn = psycopg.connect(proxy.dsn(), autocommit=True)
            holders[len(sessions)] = _relay_of(direct, conn, pids)
            sessions.append(conn)
    return sessions, holders


def test_clients_spread_over_both_and_metrics_add_up(
    relays: ProxyProcess, cluster: PostgresCluster
) -> None:
    sessions, holders = _spread(relays, cluster, 8)
    try:
        assert set(holders.values()) == set(_relay_pids(relays))
        for conn in sessions:
            assert conn.execute("SELECT 1").fetchall() == [(1,)]
        assert _metric("pgml_proxy_connections_open") == len(sessions)
        assert _metric("pgml_proxy_connections_total") >= len(sessions)
        assert _metric("pgml_proxy_statements_relayed_total") >= len(sessions)
    finally:
        for conn in sessions:
            conn.close()


def test_a_cancel_reaches_its_statement_whichever_process_it_lands_on(
    relays: ProxyProcess, cluster: PostgresCluster
) -> None:
    """Each cancel is a new connection the kernel sends to either process: over a dozen
    cancels, about half land on the process that does not hold the statement."""
    sessions, _ = _spread(relays, cluster, 12)
    try:
        for conn in sessions:
            timer = threading.Timer(0.3, conn.cancel_safe)
            timer.start()
            began = time.monotonic()
            with pytest.raises(psycopg.errors.QueryCanceled):
                conn.execute("SELECT pg_sleep(30)")
            assert time.monotonic() - began < 5
            timer.join()
            assert conn.execute("SELECT 1").fetchall() == [(1,)]
    finally:
        for conn in sessions:
            conn.close()


def test_a_killed_relay_process_is_started_again_and_the_other_goes_on(
    relays: ProxyProcess, cluster: PostgresCluster
) -> None:
    sessions, holders = _spread(relays, cluster, 6)
    try:
        killed = _relay_pids(relays)[0]
        os.kill(killed, signal.SIGKILL)
        deadline = time.monotonic() + 20
        while killed in _relay_pids(relays) or len(_relay_pids(relays)) < 2:
            assert time.monotonic() < deadline, "the relay process was not started again"
            time.sleep(0.1)
        for index, conn in enumerate(sessions):
            if holders[index] == killed:
                with pytest.raises(psycopg.OperationalError):
                    conn.execute("SELECT 1")
            else:
                assert conn.execute("SELECT 1").fetchall() == [(1,)]
        deadline = time.monotonic() + 20
        while True:  # the new process listens a moment after it starts
            fresh, fresh_holders = _spread(relays, cluster, 4)
            for conn in fresh:
                assert conn.execute("SELECT 1").fetchall() == [(1,)]
                conn.close()
            if set(fresh_holders.values()) == set(_relay_pids(relays)):
                break
            assert time.monotonic() < deadline
        assert "relay process 0 ended (exit code -9): starting it again" in relays.log()
    finally:
        for conn in sessions:
            conn.close()


def test_sigterm_drains_both_processes(relays: ProxyProcess, cluster: PostgresCluster) -> None:
    """Each process lets its statement in flight finish, then every process exits."""
    sessions, _ = _spread(relays, cluster, 4)
    pids = _relay_pids(relays)
    results: list[Any] = []

    def run(conn: psycopg.Connection[Any]) -> None:
        results.append(conn.execute("SELECT pg_sleep(1.5), 'done'").fetchone())

    threads = [threading.Thread(target=run, args=(conn,)) for conn in sessions]
    for thread in threads:
        thread.start()
    time.sleep(0.5)
    relays.signal(signal.SIGTERM)
    for thread in threads:
        thread.join(30)
    assert results == [("", "done")] * len(sessions)
    assert relays.wait(30) == 0
    for pid in pids:
        assert procs.state(pid) in ("", "Z")
    for conn in sessions:
        conn.close()


def test_the_client_suites_pass_through_two_relay_processes() -> None:
    """Every proxy these suites start takes ``--workers 2`` from the environment."""
    env = {**os.environ, "PGML_PROXY_WORKERS": "2"}
    paths = [str(ROOT / "tests" / "integration" / name) for name in SUITES]
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *paths],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-8000:] + done.stderr[-4000:]
    assert re.search(r"\d+ passed", done.stdout)


def test_a_relay_process_that_cannot_listen_fails_the_start(cluster: PostgresCluster) -> None:
    """No ready line, the relay process's reason and exit status 1, as one process gives."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = subprocess.run(
            [
                *(sys.executable, "-m", "proxy", "--workers", "2"),
                *("--port", str(port), "--upstream", cluster.dsn()),
            ],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    assert done.returncode == 1
    assert "pgml-proxy ready" not in done.stdout
    assert "cannot start" in done.stderr and "address already in use" in done.stderr


def test_relay_processes_end_when_the_supervisor_is_killed(
    relays: ProxyProcess, cluster: PostgresCluster
) -> None:
    """Orphaned relay processes drain and exit: none keeps the port beside a proxy started
    again."""
    pids = _relay_pids(relays)
    relays.signal(signal.SIGKILL)
    relays.wait(10)
    deadline = time.monotonic() + 15
    while any(Path(f"/proc/{pid}").exists() for pid in pids):
        assert time.monotonic() < deadline, "a relay process outlived its supervisor"
        time.sleep(0.1)
    assert "the supervisor is gone: shutting down" in relays.log()


def test_port_zero_gives_every_relay_process_the_same_port(cluster: PostgresCluster) -> None:
    """``--port 0``: the supervisor picks one port for all and the ready line names it."""
    process = ProxyProcess("--upstream", cluster.dsn(), "--workers", "2", "--port", "0").start()
    try:
        named = re.search(r":(\d+)/", process.ready_line)
        assert named is not None, process.ready_line
        port = int(named.group(1))
        assert port != process.port
        process.port = port
        sessions, holders = _spread(process, cluster, 4)
        assert len(set(holders.values())) == 2
        for conn in sessions:
            assert conn.execute("SELECT 1").fetchall() == [(1,)]
            conn.close()
    finally:
        process.stop()


def test_a_temporary_folder_too_deep_for_unix_sockets(
    cluster: PostgresCluster, tmp_path: Path
) -> None:
    """Under a ``TMPDIR`` whose paths are too long for a Unix socket, the relay processes
    talk through a folder in ``/tmp``: ``/metrics`` still adds up both."""
    deep = tmp_path / ("d" * 100)
    deep.mkdir()
    process = ProxyProcess(
        "--upstream",
        cluster.dsn(),
        "--workers",
        "2",
        "--dashboard-port",
        str(DASHBOARD),
        env={"TMPDIR": str(deep)},
    ).start()
    try:
        sessions, _ = _spread(process, cluster, 2)
        assert _metric("pgml_proxy_connections_open") == len(sessions)
        for conn in sessions:
            conn.close()
    finally:
        process.stop()


def test_metrics_leave_out_a_relay_process_that_does_not_answer(
    relays: ProxyProcess, cluster: PostgresCluster
) -> None:
    """With the other relay process stopped (SIGSTOP), ``/metrics`` answers after its
    wait of 2 s with this process's counters alone; with the dashboard's own process
    stopped nothing answers, as with any stopped server."""
    sessions, holders = _spread(relays, cluster, 4)
    answered = []
    try:
        for pid in _relay_pids(relays):
            os.kill(pid, signal.SIGSTOP)
            began = time.monotonic()
            try:
                open_now = _metric("pgml_proxy_connections_open", timeout=5)
                answered.append((pid, open_now, time.monotonic() - began))
            except OSError:
                pass
            finally:
                os.kill(pid, signal.SIGCONT)
        assert len(answered) == 1, answered
        stopped, open_now, took = answered[0]
        assert open_now == sum(1 for pid in holders.values() if pid != stopped)
        assert 1.5 < took < 4.5
        assert _metric("pgml_proxy_connections_open") == len(sessions)
    finally:
        for conn in sessions:
            conn.close()
