"""Data-parallel training on the CPU: a proxy with ``--train-processes 2`` trains through
PyTorch's launcher with two processes on the gloo backend.  It trains, records metrics
and deploys, with progress from rank 0 only; a cancel, a killed rank or a killed launcher
ends every process of the training and marks the model as a one-process training would."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import errors

from handlers.tuning.launch import rank_log
from handlers.tuning.runner import _last_error_lines
from tests.integration.conftest import dropped_afterwards, tuning_proxy
from tests.integration.test_tune_errors import (
    TWO_CLASSES,
    Background,
    create_table,
    lit,
    models_of,
    tune_sql,
    wait_until_training,
)
from tests.support import procs
from tests.support.pgserver import PostgresCluster
from tests.support.proxyproc import ProxyProcess

PROCESSES = 2
LONG_RUN = '{"num_train_epochs": 20, "per_device_train_batch_size": 2}'


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("parallel-cache")


@pytest.fixture(scope="module")
def parallel(
    cluster: PostgresCluster, models_dir: Path, guide_datasets_dir: Path, cache: Path
) -> Iterator[ProxyProcess]:
    proxy = tuning_proxy(
        cluster, models_dir, guide_datasets_dir, cache, "--train-processes", str(PROCESSES)
    )
    yield proxy
    proxy.stop()


@pytest.fixture(scope="module")
def direct(cluster: PostgresCluster) -> Iterator[psycopg.Connection[Any]]:
    with psycopg.connect(cluster.dsn(), autocommit=True) as conn:
        yield conn


@pytest.fixture(scope="module")
def tables(cluster: PostgresCluster) -> Iterator[Callable[[str], str]]:
    yield from dropped_afterwards(cluster)


def training_processes(cache: Path) -> dict[int, str]:
    """Every live process of this proxy's trainings (the launcher and its workers, found by
    their job file in the cache folder), with its rank (``launcher`` for the launcher)."""
    marker = str(cache / "training").encode()  # the job files; the proxy names only cache
    found: dict[int, str] = {}
    for process in procs.running():
        if marker not in process.command:
            continue
        if b"handlers.tuning.launch" in process.command.split(b"\0"):
            found[process.pid] = "launcher"
        else:
            found[process.pid] = procs.environment(process.pid).get("RANK", "?")
    return found


def wait_for_processes(cache: Path, count: int, timeout: float = 120) -> dict[int, str]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = training_processes(cache)
        if len(found) >= count:
            return found
        time.sleep(0.1)
    raise AssertionError(f"expected {count} training processes, found {training_processes(cache)}")


def wait_for_none(cache: Path, timeout: float = 10) -> dict[int, str]:
    deadline = time.monotonic() + timeout
    while (left := training_processes(cache)) and time.monotonic() < deadline:
        time.sleep(0.1)
    return left


def train_on_two_processes(
    proxy: ProxyProcess,
    direct: psycopg.Connection[Any],
    table: str,
    cluster: PostgresCluster,
) -> None:
    """A short tune through ``proxy`` (two training processes) trains, records, deploys
    and serves, with progress from rank 0 only."""
    create_table(cluster, table, "(text text, label int)", TWO_CLASSES, count=40)
    project = f"{table}_p"
    sql = tune_sql(
        project, table, hyperparams=lit('{"num_train_epochs": 2, "per_device_train_batch_size": 3}')
    )
    notices: list[str] = []
    with psycopg.connect(proxy.dsn(), autocommit=True) as conn:
        conn.add_notice_handler(lambda n: notices.append(n.message_primary or ""))
        row = conn.execute(sql).fetchone()
        assert row == (project, "text-classification", "distilbert-base-uncased", True)
        label = conn.execute(f"SELECT pgml.predict({lit(project)}, 'great fun')").fetchone()
    assert label is not None and label[0] in (0.0, 1.0)
    [(model_id, status, _)] = models_of(direct, project)
    assert status == "successful"
    metrics = direct.execute("SELECT metrics FROM pgml.models WHERE id = %s", [model_id]).fetchone()
    assert metrics is not None
    assert {"f1", "accuracy", "eval_loss", "train_samples_per_second"} <= metrics[0].keys()
    assert "f1" in metrics[0]["before_tuning"]
    # 30 training rows, 3 a process and step, 2 processes: 5 steps an epoch (10 with one)
    logged = [
        r[0]
        for r in direct.execute(
            "SELECT logs FROM pgml.logs WHERE model_id = %s ORDER BY id", [model_id]
        ).fetchall()
    ]
    assert {entry["max_steps"] for entry in logged if "max_steps" in entry} == {10}
    assert "training 10 steps over 2 epochs" in notices
    # progress from rank 0 only: each record once
    assert sum(1 for n in notices if n.startswith("before tuning:")) == 1
    assert sum(1 for entry in logged if "before_tuning" in entry) == 1
    steps = [entry["step"] for entry in logged if "loss" in entry]
    assert steps == sorted(set(steps)), steps
    files = direct.execute("SELECT count(*) FROM pgml.files WHERE model_id = %s", [model_id])
    assert (files.fetchone() or (0,))[0] > 0
    assert json.dumps(logged)


def test_two_processes_train_record_and_deploy(
    parallel: ProxyProcess,
    direct: psycopg.Connection[Any],
    tables: Callable[[str], str],
    cluster: PostgresCluster,
    cache: Path,
) -> None:
    train_on_two_processes(parallel, direct, tables("parallel"), cluster)
    assert "started 2 worker(s)" in parallel.log()
    assert wait_for_none(cache) == {}


def test_a_cancel_ends_every_process(
    parallel: ProxyProcess,
    direct: psycopg.Connection[Any],
    tables: Callable[[str], str],
    cluster: PostgresCluster,
    cache: Path,
) -> None:
    table = tables("parallel_cancel")
    create_table(cluster, table, "(text text, label int)", TWO_CLASSES, count=400)
    project = f"{table}_p"
    call = Background(parallel.dsn(), tune_sql(project, table, hyperparams=lit(LONG_RUN)))
    try:
        model_id = wait_until_training(direct, project, call.thread.is_alive)
        running = wait_for_processes(cache, 1 + PROCESSES)
        assert sorted(running.values()) == ["0", "1", "launcher"], running
        cancelled_at = time.monotonic()
        call.conn.cancel_safe()
        call.join(60)
        assert isinstance(call.error, errors.QueryCanceled), call.error
        assert call.finished_at - cancelled_at < 5.0
        assert call.conn.execute("SELECT 1").fetchone() == (1,)
    finally:
        call.close()
    assert wait_for_none(cache, timeout=5) == {}
    assert models_of(direct, project) == [(model_id, "cancelled", "cancelled by the client")]


def stopped_and_read(pid: int) -> list[str]:
    """Stop a training process (SIGSTOP) and read its own log so far: the lines that a
    failure of it must report, as it can print nothing more until it is continued."""
    os.kill(pid, signal.SIGSTOP)
    deadline = time.monotonic() + 10
    while procs.state(pid) != "T":
        assert time.monotonic() < deadline, "the process did not stop"
        time.sleep(0.01)
    job_file = Path(procs.command(pid).split(b"\0")[-2].decode())
    rank = int(procs.environment(pid)["RANK"])
    return rank_log(job_file, rank).read_text().splitlines()


@pytest.mark.parametrize(
    ("victim", "sig"),
    [("1", signal.SIGKILL), ("1", signal.SIGABRT), ("launcher", signal.SIGKILL)],
)
def test_a_killed_process_ends_every_process(
    victim: str,
    sig: signal.Signals,
    parallel: ProxyProcess,
    direct: psycopg.Connection[Any],
    tables: Callable[[str], str],
    cluster: PostgresCluster,
    cache: Path,
) -> None:
    """A process that dies of a signal is named with the signal, a hint that fits it, its
    own last lines as DETAIL (what it printed before, and what it said as it died), and
    SQLSTATE 58000: something outside the proxy's code ended it."""
    table = tables("parallel_kill")
    create_table(cluster, table, "(text text, label int)", TWO_CLASSES, count=400)
    project = f"{table}_p"
    call = Background(parallel.dsn(), tune_sql(project, table, hyperparams=lit(LONG_RUN)))
    printed: list[str] = []
    try:
        model_id = wait_until_training(direct, project, call.thread.is_alive)
        running = wait_for_processes(cache, 1 + PROCESSES)
        [pid] = [p for p, rank in running.items() if rank == victim]
        if victim != "launcher":
            printed = stopped_and_read(pid)
        os.kill(pid, sig)
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGCONT)
        call.join(60)
    finally:
        call.close()
    assert isinstance(call.error, psycopg.Error), call.error
    assert call.error.sqlstate == "58000", call.error
    diag = call.error.diag
    message = diag.message_primary or ""
    who = "training process 1 of 2" if victim == "1" else "the training worker"
    assert message == f"{who} was killed by signal {sig.value} ({sig.name})", message
    hint = diag.message_hint or ""
    assert ("out-of-memory" in hint) == (sig == signal.SIGKILL), hint
    assert ("aborted itself" in hint) == (sig == signal.SIGABRT), hint
    detail = diag.message_detail or ""
    assert 'File "' not in detail, detail
    if victim != "launcher":
        assert printed, "the rank printed nothing before it was stopped"
        if sig == signal.SIGKILL:  # no last words: the lines it printed before
            assert detail == _last_error_lines(printed), (detail, printed)
        else:  # what it said as it aborted ends the DETAIL
            assert "Fatal Python error: Aborted" in detail, detail
    assert wait_for_none(cache) == {}
    [(found, status, error)] = models_of(direct, project)
    assert (found, status, error) == (model_id, "failed", message)
    with psycopg.connect(parallel.dsn(), autocommit=True) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)
