"""Serving tuned models: predict, predict_proba and generate with TEXT and TEXT[] inputs,
through psql and drivers (text and binary results), deployments by every strategy, and a
model restored from pgml.files by a proxy that has never seen it."""

from __future__ import annotations

import json
import random
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import psycopg
import pytest

from tests.integration.conftest import tuning_proxy
from tests.support.guide_data import review
from tests.support.pgserver import BIN, PostgresCluster
from tests.support.proxyproc import ProxyProcess

TUNE = (
    "SELECT deployed FROM pgml.tune(%s, task => 'text-classification', relation_name => %s, "
    "y_column_name => 'label', model_name => 'distilbert-base-uncased', "
    """hyperparams => '{"num_train_epochs": 1, "per_device_train_batch_size": 8}', """
    "test_size => 0.25, automatic_deploy => %s)"
)


def psql(proxy: ProxyProcess, sql: str) -> str:
    out = subprocess.run(
        [str(BIN / "psql"), "-X", "-A", "-t", "-v", "ON_ERROR_STOP=1", proxy.dsn(), "-c", sql],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


def make_reviews(
    cluster: PostgresCluster, table: str, labels: tuple[str, str] = ("0", "1")
) -> None:
    rng = random.Random(3)
    kind = "int" if labels == ("0", "1") else "text"
    rows = ", ".join(f"({i}, '{review(rng, i % 2 == 1)}', '{labels[i % 2]}')" for i in range(40))
    cluster.psql(f"CREATE TABLE {table} (id int, text text, label {kind})")
    cluster.psql(f"INSERT INTO {table} VALUES {rows}")


@pytest.fixture(scope="module")
def project(cluster: PostgresCluster, tuner: ProxyProcess) -> Iterator[str]:
    """A deployed text-classification project over a table of reviews (numeric labels)."""
    name = f"serve_{uuid.uuid4().hex[:8]}"
    make_reviews(cluster, name)
    with psycopg.connect(tuner.dsn(), autocommit=True) as conn:
        conn.execute(f"CREATE VIEW {name}_in AS SELECT text, label FROM {name}")
        assert conn.execute(TUNE, (name, f"{name}_in", True)).fetchone() == (True,)
    yield name
    cluster.psql(f"DROP TABLE {name} CASCADE")


def test_predict_types_and_arrays(tuner: ProxyProcess, project: str) -> None:
    assert psql(tuner, f"SELECT pg_typeof(pgml.predict('{project}', 'great'))") == "real"
    assert psql(tuner, f"SELECT pgml.predict('{project}', 'great')") in ("0", "1")
    labels = psql(tuner, f"SELECT pgml.predict('{project}', ARRAY['great', NULL, 'dull'])")
    assert labels.startswith("{") and labels.split(",")[1] == "NULL"
    assert psql(tuner, f"SELECT pg_typeof(pgml.predict('{project}', ARRAY['a']))") == "real[]"
    batch = json.loads(psql(tuner, f"SELECT pgml.predict_proba('{project}', ARRAY['a', 'b'])"))
    assert len(batch) == 2 and all(abs(sum(p) - 1) < 1e-5 for p in batch)
    assert psql(tuner, f"SELECT pgml.predict('{project}', NULL::text) IS NULL") == "t"


def test_per_row_predictions_match_single_calls(tuner: ProxyProcess, project: str) -> None:
    rows = psql(
        tuner,
        f"SELECT id, pgml.predict('{project}', text), text FROM {project} ORDER BY id LIMIT 6",
    ).splitlines()
    for row in rows:
        _, label, text = row.split("|")
        assert psql(tuner, f"SELECT pgml.predict('{project}', '{text}')") == label
    assert (
        psql(
            tuner,
            f"SELECT count(*) FROM {project} WHERE pgml.predict('{project}', text) IN (0, 1)",
        )
        == "40"
    )


def test_drivers_get_real_types_in_binary(tuner: ProxyProcess, project: str) -> None:
    with psycopg.connect(tuner.dsn(), autocommit=True) as conn:
        cur = conn.cursor(binary=True)
        cur.execute(f"SELECT pgml.predict('{project}', %s)", ("great",), prepare=True)
        (label,) = cur.fetchone() or (None,)
        assert label in (0.0, 1.0) and isinstance(label, float)
        cur.execute(f"SELECT pgml.predict_proba('{project}', %s)", ("dull",))
        (probabilities,) = cur.fetchone() or (None,)
        assert len(probabilities) == 2
        cur.execute(f"SELECT id, pgml.predict('{project}', text) FROM {project} ORDER BY id")
        assert {type(r[1]) for r in cur.fetchall()} == {float}

    async def with_asyncpg() -> float:
        conn = await asyncpg.connect(tuner.dsn())
        try:
            return float(await conn.fetchval(f"SELECT pgml.predict('{project}', $1)", "great"))
        finally:
            await conn.close()

    import asyncio

    assert asyncio.run(with_asyncpg()) in (0.0, 1.0)


def test_text_labels_come_back_as_text(
    cluster: PostgresCluster, tuner: ProxyProcess, scratch: object
) -> None:
    name = f"textlabels_{uuid.uuid4().hex[:8]}"
    make_reviews(cluster, name, ("negative", "positive"))
    try:
        with psycopg.connect(tuner.dsn(), autocommit=True) as conn:
            conn.execute(f"CREATE VIEW {name}_in AS SELECT text, label FROM {name}")
            conn.execute(TUNE, (name, f"{name}_in", True))
            cur = conn.cursor(binary=True)
            cur.execute(f"SELECT pgml.predict('{name}', 'great')")
            assert (cur.fetchone() or [None])[0] in ("negative", "positive")
        assert psql(tuner, f"SELECT pg_typeof(pgml.predict('{name}', 'x'))") == "text"
    finally:
        cluster.psql(f"DROP TABLE {name} CASCADE")


def deployed_model(tuner: ProxyProcess, project: str) -> str:
    return psql(tuner, f"SELECT id FROM pgml.deployed_models WHERE name = '{project}'")


def test_deploy_strategies_and_retune(tuner: ProxyProcess, project: str) -> None:
    first = deployed_model(tuner, project)
    # Re-tuning may leave out task, relation and label: they come from the last snapshot.
    assert (
        psql(
            tuner,
            f"SELECT deployed FROM pgml.tune('{project}', automatic_deploy => false)",
        )
        == "f"
    )
    second = psql(
        tuner,
        f"SELECT max(m.id) FROM pgml.models m JOIN pgml.projects p ON p.id = m.project_id "
        f"WHERE p.name = '{project}'",
    )
    assert second != first and deployed_model(tuner, project) == first
    assert psql(tuner, f"SELECT * FROM pgml.deploy('{project}', 'most_recent')") == (
        f"{project}|most_recent|distilbert-base-uncased"
    )
    assert deployed_model(tuner, project) == second
    psql(tuner, f"SELECT pgml.predict('{project}', 'great')")  # serves the new model
    assert "switched to model" in tuner.log()
    psql(tuner, f"SELECT * FROM pgml.deploy('{project}', 'rollback')")
    assert deployed_model(tuner, project) == first
    psql(tuner, f"SELECT * FROM pgml.deploy({second})")
    assert deployed_model(tuner, project) == second
    best = psql(tuner, f"SELECT * FROM pgml.deploy('{project}', 'best_score')")
    assert best.startswith(f"{project}|best_score|")
    scores = psql(
        tuner,
        "SELECT m.id, (m.metrics->>'f1')::float8 FROM pgml.models m JOIN pgml.projects p "
        f"ON p.id = m.project_id WHERE p.name = '{project}' ORDER BY 2 DESC, 1 DESC LIMIT 1",
    )
    assert deployed_model(tuner, project) == scores.split("|")[0]
    strategies = psql(
        tuner,
        "SELECT string_agg(strategy, ',' ORDER BY d.id) FROM pgml.deployments d "
        f"JOIN pgml.projects p ON p.id = d.project_id WHERE p.name = '{project}'",
    )
    assert strategies == "new_score,most_recent,rollback,specific,best_score"


def test_a_new_proxy_restores_the_model_from_the_catalog(
    cluster: PostgresCluster,
    tuner: ProxyProcess,
    project: str,
    models_dir: Path,
    guide_datasets_dir: Path,
    tmp_path: Path,
) -> None:
    sql = f"SELECT pgml.predict_proba('{project}', 'The film was brilliant and moving.')"
    before = json.loads(psql(tuner, sql))
    fresh = tuning_proxy(cluster, models_dir, guide_datasets_dir, tmp_path / "empty-cache")
    try:
        after = json.loads(psql(fresh, sql))
        assert "restored model" in fresh.log()
        assert after == pytest.approx(before, abs=1e-6)
    finally:
        fresh.stop()
    restarted = tuning_proxy(cluster, models_dir, guide_datasets_dir, tmp_path / "empty-cache")
    try:  # the same cache folder: served from local disk, not restored again
        assert json.loads(psql(restarted, sql)) == pytest.approx(before, abs=1e-6)
        assert "restored model" not in restarted.log()
    finally:
        restarted.stop()


def test_a_deploy_through_one_proxy_switches_another(
    cluster: PostgresCluster,
    tuner: ProxyProcess,
    project: str,
    models_dir: Path,
    guide_datasets_dir: Path,
    tmp_path: Path,
) -> None:
    """Proxies cache what is deployed; the catalog's notifications keep them right."""
    other = tuning_proxy(cluster, models_dir, guide_datasets_dir, tmp_path / "cache")
    try:
        psql(other, f"SELECT pgml.predict('{project}', 'great')")
        current = deployed_model(tuner, project)
        psql(tuner, f"SELECT * FROM pgml.tune('{project}', automatic_deploy => false)")
        newest = psql(
            tuner,
            "SELECT max(m.id) FROM pgml.models m JOIN pgml.projects p ON p.id = m.project_id "
            f"WHERE p.name = '{project}'",
        )
        assert newest != current
        psql(tuner, f"SELECT * FROM pgml.deploy({newest})")
        psql(other, f"SELECT pgml.predict('{project}', 'great')")
        assert f"switched to model {newest}" in other.log()
    finally:
        other.stop()
