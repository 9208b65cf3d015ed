"""``pgml.tune`` on a Ray cluster: a local cluster started by the test (``ray start --head
--num-cpus 2``) and a proxy with ``--ray-address`` and ``--train-processes 2`` train
through Ray Train's ``TorchTrainer`` (two CPU workers).  It trains, reports progress and
deploys; a cancel ends the Ray workers; a killed worker fails the call cleanly; a
cluster that is not there fails it with 58000 and nothing trained."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import errors

from tests.conftest import missing_tool
from tests.integration.conftest import dropped_afterwards, tuning_proxy
from tests.integration.test_tune_distributed import train_on_two_processes
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
from tests.support.pgserver import PostgresCluster, free_port
from tests.support.proxyproc import ProxyProcess

RAY = Path(sys.executable).parent / "ray"
WORKER = b"ray::RayTrainWorker"
LONG_RUN = '{"num_train_epochs": 20, "per_device_train_batch_size": 2}'


@pytest.fixture(scope="module")
def ray_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A local Ray cluster of this machine's two CPUs; its GCS address."""
    if not RAY.exists():
        missing_tool("Ray is not installed (pip install '.[ray]')")
    port = free_port()
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    subprocess.run(
        [
            str(RAY),
            "start",
            "--head",
            "--num-cpus",
            "2",
            "--port",
            str(port),
            "--include-dashboard",
            "false",
            "--disable-usage-stats",
        ],
        check=True,
        capture_output=True,
        env=env,
        timeout=120,
    )
    try:
        yield f"127.0.0.1:{port}"
    finally:
        subprocess.run([str(RAY), "stop", "--force"], capture_output=True, timeout=120, env=env)


@pytest.fixture(scope="module")
def on_ray(
    cluster: PostgresCluster,
    models_dir: Path,
    guide_datasets_dir: Path,
    tmp_path_factory: pytest.TempPathFactory,
    ray_cluster: str,
) -> Iterator[ProxyProcess]:
    proxy = tuning_proxy(
        cluster,
        models_dir,
        guide_datasets_dir,
        tmp_path_factory.mktemp("ray-cache"),
        "--ray-address",
        ray_cluster,
        "--train-processes",
        "2",
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


def ray_workers() -> list[int]:
    """The live processes of Ray Train's training workers."""
    return [p.pid for p in procs.running() if p.command.startswith(WORKER)]


def wait_for_workers(count: int, timeout: float = 180) -> list[int]:
    deadline = time.monotonic() + timeout
    while len(found := ray_workers()) < count:
        assert time.monotonic() < deadline, f"expected {count} Ray workers, found {found}"
        time.sleep(0.2)
    return found


def wait_for_no_workers(timeout: float = 60) -> list[int]:
    deadline = time.monotonic() + timeout
    while (found := ray_workers()) and time.monotonic() < deadline:
        time.sleep(0.2)
    return found


def test_trains_on_the_cluster_reports_progress_and_deploys(
    on_ray: ProxyProcess,
    direct: psycopg.Connection[Any],
    tables: Callable[[str], str],
    cluster: PostgresCluster,
) -> None:
    train_on_two_processes(on_ray, direct, tables("ray"), cluster)
    assert "on the Ray cluster at" in on_ray.log()
    assert wait_for_no_workers() == []


def _long_tune(
    on_ray: ProxyProcess,
    direct: psycopg.Connection[Any],
    table: str,
    cluster: PostgresCluster,
) -> tuple[Background, str, int]:
    """A long tune under way on both Ray workers: the call, its project and model id."""
    create_table(cluster, table, "(text text, label int)", TWO_CLASSES, count=400)
    project = f"{table}_p"
    call = Background(on_ray.dsn(), tune_sql(project, table, hyperparams=lit(LONG_RUN)))
    try:
        model_id = wait_until_training(direct, project, call.thread.is_alive)
        assert len(wait_for_workers(2)) == 2
    except BaseException:
        call.close()
        raise
    return call, project, model_id


def test_a_cancel_ends_the_ray_workers(
    on_ray: ProxyProcess,
    direct: psycopg.Connection[Any],
    tables: Callable[[str], str],
    cluster: PostgresCluster,
) -> None:
    call, project, model_id = _long_tune(on_ray, direct, tables("ray_cancel"), cluster)
    try:
        cancelled_at = time.monotonic()
        call.conn.cancel_safe()
        call.join(60)
        assert isinstance(call.error, errors.QueryCanceled), call.error
        assert call.finished_at - cancelled_at < 5.0
    finally:
        call.close()
    assert wait_for_no_workers() == []
    assert models_of(direct, project) == [(model_id, "cancelled", "cancelled by the client")]


def test_a_killed_worker_fails_the_call_cleanly(
    on_ray: ProxyProcess,
    direct: psycopg.Connection[Any],
    tables: Callable[[str], str],
    cluster: PostgresCluster,
) -> None:
    call, project, model_id = _long_tune(on_ray, direct, tables("ray_killed"), cluster)
    try:
        os.kill(max(ray_workers()), signal.SIGKILL)
        call.join(120)
        assert isinstance(call.error, psycopg.Error), call.error
        assert call.error.sqlstate == "58000", (call.error.sqlstate, str(call.error))
        assert call.conn.execute("SELECT 1").fetchone() == (1,)
    finally:
        call.close()
    assert wait_for_no_workers() == []
    [(found, status, _)] = models_of(direct, project)
    assert (found, status) == (model_id, "failed")


def test_a_cluster_that_is_not_there_fails_the_call(
    cluster: PostgresCluster,
    models_dir: Path,
    guide_datasets_dir: Path,
    tmp_path_factory: pytest.TempPathFactory,
    direct: psycopg.Connection[Any],
    tables: Callable[[str], str],
) -> None:
    if not RAY.exists():
        missing_tool("Ray is not installed (pip install '.[ray]')")
    proxy = tuning_proxy(
        cluster,
        models_dir,
        guide_datasets_dir,
        tmp_path_factory.mktemp("no-ray"),
        "--ray-address",
        f"127.0.0.1:{free_port()}",
    )
    try:
        table = tables("ray_missing")
        create_table(cluster, table, "(text text, label int)", TWO_CLASSES, count=40)
        project = f"{table}_p"
        with psycopg.connect(proxy.dsn(), autocommit=True) as conn:
            with pytest.raises(psycopg.Error) as raised:
                conn.execute(tune_sql(project, table))
            assert raised.value.sqlstate == "58000"
            assert "could not reach the Ray cluster at" in str(raised.value)
            assert conn.execute("SELECT 1").fetchone() == (1,)
        [(_, status, _)] = models_of(direct, project)
        assert status == "failed"
    finally:
        proxy.stop()
