"""pgml.train_joint and pgml.predict_joint through the proxy on PostgresML's linnerud table:
several labels fitted together, predictions equal to the same scikit-learn (or xgboost)
estimator's on the same split, and the calls that mix joint and single-label projects
refused with nothing recorded."""

from __future__ import annotations

import importlib.util
from collections.abc import Iterator
from typing import Any

import numpy as np
import psycopg
import pytest
from psycopg import errors
from sklearn import linear_model, multioutput, svm

from handlers.tuning.split import split_rows
from tests.integration._pgml import unique
from tests.support.proxyproc import ProxyProcess

FEATURES = ["chins", "situps", "jumps"]
LABELS = ["weight", "waist", "pulse"]


@pytest.fixture(scope="module")
def db(proxy: ProxyProcess) -> Iterator[psycopg.Connection[Any]]:
    with psycopg.connect(proxy.dsn(), autocommit=True) as connection:
        connection.execute("SELECT pgml.load_dataset('linnerud')")
        yield connection


def data(db: psycopg.Connection[Any]) -> tuple[Any, Any]:
    rows = db.execute(f"SELECT {', '.join(FEATURES + LABELS)} FROM pgml.linnerud").fetchall()
    found = np.array(rows, dtype=float)
    return found[:, :3], found[:, 3:]


def predictions(db: psycopg.Connection[Any], project: str) -> tuple[Any, Any]:
    """Each row's features and its prediction (the rows in the order the query gives)."""
    rows = db.execute(
        "SELECT ARRAY[chins, situps, jumps], "
        "pgml.predict_joint(%s, ARRAY[chins, situps, jumps]) FROM pgml.linnerud",
        [project],
    ).fetchall()
    return np.array([r[0] for r in rows], dtype=float), np.array([r[1] for r in rows], dtype=float)


def train_joint(db: psycopg.Connection[Any], project: str, **named: Any) -> Any:
    args = "".join(f", {k} => %({k})s" for k in named)
    return db.execute(
        f"SELECT * FROM pgml.train_joint(%(project)s{args})", {"project": project} | named
    ).fetchall()


def check(db: psycopg.Connection[Any], project: str, estimator: Any) -> None:
    """The project's predictions equal ``estimator``'s fitted on the same split (the
    first three quarters of the table's rows)."""
    x, y = data(db)
    train, _ = split_rows(len(x), 0.25, "last", 42, None)
    estimator.fit(x[train], y[train])
    inputs, predicted = predictions(db, project)
    np.testing.assert_allclose(predicted, estimator.predict(inputs), rtol=1e-4)


def test_postgresml_example(db: psycopg.Connection[Any]) -> None:
    project = unique("exercise")
    found = db.execute(
        "SELECT * FROM pgml.train_joint(%s, 'regression', 'pgml.linnerud', "
        "ARRAY['weight', 'waist', 'pulse'], test_sampling => 'last')",
        [project],
    ).fetchall()
    assert found == [(project, "regression", "linear", True)]
    check(db, project, linear_model.LinearRegression())
    (labels, metrics) = db.execute(
        "SELECT s.y_column_name, m.metrics FROM pgml.models AS m "
        "JOIN pgml.snapshots AS s ON s.id = m.snapshot_id JOIN pgml.projects AS p "
        "ON p.id = m.project_id WHERE p.name = %s",
        [project],
    ).fetchone() or (None, None)
    assert labels == LABELS
    assert {"r2", "mean_squared_error", "max_error"} <= metrics.keys()

    # a later call trains another algorithm on the same labels; svm fits one label at a time
    (found,) = train_joint(
        db, project, algorithm="svm", hyperparams='{"max_iter": 100}', test_sampling="last"
    )
    assert found[:3] == (project, "regression", "svm")
    db.execute("SELECT * FROM pgml.deploy(%s, 'most_recent')", [project])
    check(db, project, multioutput.MultiOutputRegressor(svm.SVR(max_iter=100)))


def test_search_over_a_wrapped_estimator(db: psycopg.Connection[Any]) -> None:
    project = unique("exercise_search")
    train_joint(
        db,
        project,
        task="regression",
        relation_name="pgml.linnerud",
        y_column_name=LABELS,
        algorithm="svm",
        search="grid",
        search_params='{"C": [0.5, 2.0]}',
        search_args='{"cv": 2}',
        test_sampling="last",
    )
    (hyperparams,) = db.execute(
        "SELECT m.hyperparams FROM pgml.models AS m JOIN pgml.projects AS p "
        "ON p.id = m.project_id WHERE p.name = %s",
        [project],
    ).fetchone() or (None,)
    assert hyperparams["C"] in (0.5, 2.0)


@pytest.mark.skipif(importlib.util.find_spec("xgboost") is None, reason="xgboost missing")
def test_xgboost_fits_the_labels_itself(db: psycopg.Connection[Any]) -> None:
    import xgboost

    project = unique("exercise_xgb")
    train_joint(
        db,
        project,
        task="regression",
        relation_name="pgml.linnerud",
        y_column_name=LABELS,
        algorithm="xgboost",
        hyperparams='{"n_estimators": 5, "random_state": 0}',
        test_sampling="last",
    )
    check(db, project, xgboost.XGBRegressor(n_estimators=5, random_state=0))


def models_of(db: psycopg.Connection[Any], project: str) -> int:
    (count,) = db.execute(
        "SELECT count(*) FROM pgml.models AS m JOIN pgml.projects AS p ON p.id = m.project_id "
        "WHERE p.name = %s",
        [project],
    ).fetchone() or (None,)
    return int(count)


def test_bad_input(db: psycopg.Connection[Any]) -> None:
    project = unique("exercise_bad")
    cases: list[tuple[dict[str, Any], type[Exception], str]] = [
        ({"y_column_name": ["weight", "girth"]}, errors.UndefinedColumn, '"girth"'),
        ({"y_column_name": ["weight", None]}, errors.NullValueNotAllowed, "NULL"),
        ({"y_column_name": ["weight", "weight"]}, errors.InvalidParameterValue, "distinct"),
        ({"task": "classification"}, errors.InvalidParameterValue, "regression projects"),
        ({"algorithm": "lightgbm"}, errors.FeatureNotSupported, "lightgbm"),
    ]
    for change, error, message in cases:
        named = {
            "task": "regression",
            "relation_name": "pgml.linnerud",
            "y_column_name": LABELS,
        } | change
        with pytest.raises(error, match=message):
            train_joint(db, project, **named)
        assert models_of(db, project) == 0

    train_joint(db, project, task="regression", relation_name="pgml.linnerud", y_column_name=LABELS)
    with pytest.raises(errors.FeatureNotSupported, match=r"use pgml\.predict_joint"):
        db.execute("SELECT pgml.predict(%s, ARRAY[1, 2, 3])", [project])
    with pytest.raises(errors.InvalidParameterValue, match="3 features, not 2"):
        db.execute("SELECT pgml.predict_joint(%s, ARRAY[1, 2])", [project])
    with pytest.raises(errors.InvalidParameterValue, match=r"train it with pgml\.train_joint"):
        db.execute("SELECT * FROM pgml.train(%s, algorithm => 'ridge')", [project])
    single = unique("exercise_single")
    db.execute("SELECT * FROM pgml.train(%s, 'regression', 'pgml.linnerud', 'weight')", [single])
    with pytest.raises(errors.FeatureNotSupported, match=r"use pgml\.predict$"):
        db.execute("SELECT pgml.predict_joint(%s, ARRAY[1, 2, 3, 4, 5])", [single])
    assert db.execute("SELECT 1").fetchone() == (1,)
