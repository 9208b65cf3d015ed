"""Two proxies in front of one database behave as one: a training started through either
is listed with the proxy that runs it and cancelled through the other (the dashboard, or
``pg_cancel_backend`` from a session of the other), a NOTIFY alone cancels nothing, a
training whose proxy is killed is marked failed by the other proxy unasked, and every
connection a proxy opens for itself names it in ``application_name``."""

from __future__ import annotations

import signal
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest

from handlers.trainings import REAP_SECONDS
from tests.integration.conftest import tuning_proxy
from tests.integration.test_tune_errors import (
    LONG_ROWS,
    TWO_CLASSES,
    Background,
    create_table,
    long_tune,
    models_of,
    wait_until_training,
)
from tests.support.pgserver import PostgresCluster, free_port
from tests.support.proxyproc import ProxyProcess
from tests.support.webclient import Client, logged_in


@dataclass
class Pair:
    alpha: ProxyProcess
    """Runs the trainings."""
    beta: ProxyProcess
    """Its dashboard lists and cancels them."""
    beta_site: Client
    table: str


@pytest.fixture(scope="module")
def pair(
    cluster: PostgresCluster,
    models_dir: Path,
    guide_datasets_dir: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Pair]:
    table = f"many_{uuid.uuid4().hex[:8]}"
    create_table(cluster, table, "(text text, label int)", TWO_CLASSES, count=LONG_ROWS)
    port = free_port()
    alpha = tuning_proxy(
        cluster, models_dir, guide_datasets_dir, tmp_path_factory.mktemp("a"), "--name", "alpha"
    )
    beta = None
    try:
        beta = tuning_proxy(
            cluster,
            models_dir,
            guide_datasets_dir,
            tmp_path_factory.mktemp("b"),
            "--name",
            "beta",
            "--dashboard-port",
            str(port),
        )
        yield Pair(alpha, beta, logged_in(f"http://127.0.0.1:{port}"), table)
    finally:
        for proxy in (alpha, beta):
            if proxy is not None:
                proxy.stop()
        cluster.psql(f"DROP TABLE IF EXISTS {table}")


def application_names(direct: psycopg.Connection[Any]) -> set[str]:
    rows = direct.execute(
        "SELECT application_name FROM pg_stat_activity WHERE application_name LIKE 'pgml-proxy %'"
    ).fetchall()
    return {r[0] for r in rows}


def trained_by(direct: psycopg.Connection[Any], model_id: int) -> str | None:
    row = direct.execute("SELECT trained_by FROM pgml.models WHERE id = %s", [model_id])
    found = row.fetchone()
    assert found is not None
    return found[0]  # type: ignore[no-any-return]


def cancel_through(site: Client, model_id: int) -> int:
    return site.post(f"/jobs/{model_id}/cancel", {"csrf": site.csrf("/jobs")}).status


def test_the_other_proxys_dashboard_lists_and_cancels(
    pair: Pair, direct: psycopg.Connection[Any]
) -> None:
    project = f"many_cancel_{uuid.uuid4().hex[:8]}"
    call = Background(pair.alpha.dsn(), long_tune(project, pair.table))
    try:
        model_id = wait_until_training(direct, project, call.thread.is_alive)
        assert trained_by(direct, model_id) == "alpha"
        names = application_names(direct)
        assert {"pgml-proxy catalog (alpha)", "pgml-proxy training (alpha)"} <= names, names
        jobs = pair.beta_site.get("/jobs")
        assert jobs.status == 200 and f'id="cancel-{model_id}"' in jobs.body
        assert "<td>alpha</td>" in jobs.body
        assert "pgml-proxy dashboard (beta)" in application_names(direct)
        # A NOTIFY on the channel, which any role may send, cancels nothing by itself.
        direct.execute(f"NOTIFY pgml_proxy_cancel, '{model_id}'")
        time.sleep(2)
        assert call.thread.is_alive() and models_of(direct, project)[-1][1] == "in_progress"
        assert cancel_through(pair.beta_site, model_id) == 200
        call.join(60)
    finally:
        call.close()
    assert isinstance(call.error, psycopg.Error), call.error
    assert call.error.sqlstate == "57014"
    assert models_of(direct, project) == [(model_id, "cancelled", "cancelled from the dashboard")]
    assert "pgml-proxy training (alpha)" not in application_names(direct)
    assert cancel_through(pair.beta_site, model_id) == 409  # nothing to cancel now


def test_pg_cancel_backend_through_the_other_proxy(
    pair: Pair, direct: psycopg.Connection[Any]
) -> None:
    project = f"many_backend_{uuid.uuid4().hex[:8]}"
    tuner = f"tuner_{uuid.uuid4().hex[:6]}"
    call = Background(pair.alpha.dsn(application_name=tuner), long_tune(project, pair.table))
    try:
        model_id = wait_until_training(direct, project, call.thread.is_alive)
        with psycopg.connect(pair.beta.dsn(), autocommit=True) as other:
            row = other.execute(
                "SELECT pg_cancel_backend(pid) FROM pg_stat_activity WHERE application_name = %s",
                [tuner],
            ).fetchone()
        assert row == (True,)
        call.join(60)
    finally:
        call.close()
    assert isinstance(call.error, psycopg.Error) and call.error.sqlstate == "57014", call.error
    assert models_of(direct, project)[-1][:2] == (model_id, "cancelled")


def test_a_training_whose_proxy_is_gone_is_marked_failed(
    cluster: PostgresCluster,
    models_dir: Path,
    guide_datasets_dir: Path,
    tmp_path: Path,
    pair: Pair,
    direct: psycopg.Connection[Any],
) -> None:
    doomed = tuning_proxy(cluster, models_dir, guide_datasets_dir, tmp_path, "--name", "doomed")
    project = f"many_gone_{uuid.uuid4().hex[:8]}"
    call = Background(doomed.dsn(), long_tune(project, pair.table))
    try:
        model_id = wait_until_training(direct, project, call.thread.is_alive)
        assert trained_by(direct, model_id) == "doomed"
        # alive: the other proxy's listing leaves it alone
        assert f'id="cancel-{model_id}"' in pair.beta_site.get("/jobs").body
        assert models_of(direct, project)[-1][1] == "in_progress"
        doomed.signal(signal.SIGKILL)
        doomed.wait(30)
        call.join(30)
        deadline = time.monotonic() + 30
        while "pgml-proxy training (doomed)" in application_names(direct):
            assert time.monotonic() < deadline, "the killed proxy's connection lingers"
            time.sleep(0.2)
        # the other proxy notices by itself (no page asked), within its reaping period
        deadline = time.monotonic() + REAP_SECONDS * 2 + 5
        while models_of(direct, project)[-1][1] == "in_progress":
            assert time.monotonic() < deadline, "the training of the killed proxy is still listed"
            time.sleep(0.5)
        jobs = pair.beta_site.get("/jobs")
        assert jobs.status == 200 and f'id="cancel-{model_id}"' not in jobs.body
    finally:
        call.close()
        doomed.stop()
    assert models_of(direct, project) == [
        (model_id, "failed", "the proxy doomed that was training it is gone")
    ]
