"""pgml.train, predictions over feature arrays and PostgresML's bundled datasets, through
the proxy with psycopg: every family of algorithms on scikit-learn's toy datasets, the
predictions equal to the same estimator's fitted on the same split, searches equal to
GridSearchCV's, and bad input refused with its SQLSTATE and nothing recorded."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import numpy as np
import psycopg
import pytest

from handlers.classic.algorithms import CLASSIFICATION, ESTIMATORS, REGRESSION, estimator_class
from tests.integration._pgml import unique
from tests.support.proxyproc import ProxyProcess

ROWS = {"iris": 150, "diabetes": 442, "digits": 1797, "breast_cancer": 569, "wine": 178}
SHUFFLED = unique("iris_shuffled")
"""Iris in an order that mixes the classes (the dataset lists them one after another)."""
IRIS = ["sepal_length", "sepal_width", "petal_length", "petal_width"]
DIABETES = ["age", "sex", "bmi", "bp", "s1", "s2", "s3", "s4", "s5", "s6"]
QUICK: dict[str, dict[str, Any]] = {
    "ada_boost": {"n_estimators": 5},
    "bagging": {"n_estimators": 5},
    "extra_trees": {"n_estimators": 5},
    "gradient_boosting_trees": {"n_estimators": 5},
    "random_forest": {"n_estimators": 5},
    "hist_gradient_boosting": {"max_iter": 5},
    "quantile": {"solver": "highs"},
    "theil_sen": {"max_subpopulation": 200},
}
"""Hyperparameters that keep the slower algorithms quick on the toy datasets."""
INSTALLED = {
    task: [a for a, path in names.items() if not path.startswith(("xgboost", "lightgbm", "cat"))]
    for task, names in ESTIMATORS.items()
}


@pytest.fixture(scope="module")
def db(proxy: ProxyProcess) -> Iterator[psycopg.Connection[Any]]:
    """One autocommit session through the proxy, with iris and diabetes loaded."""
    with psycopg.connect(proxy.dsn(), autocommit=True) as connection:
        for name in ("iris", "diabetes"):
            connection.execute("SELECT pgml.load_dataset(%s)", [name])
        connection.execute(
            f"CREATE TABLE {SHUFFLED} AS SELECT * FROM pgml.iris AS i ORDER BY md5(i::text)"
        )
        yield connection
        connection.execute(f"DROP TABLE {SHUFFLED}")


def rows(db: psycopg.Connection[Any], sql: str, *params: Any) -> list[tuple[Any, ...]]:
    return db.execute(sql, list(params)).fetchall()


def features(db: psycopg.Connection[Any], table: str, columns: list[str], label: str) -> Any:
    """The table's features and labels as the proxy reads them (REAL values)."""
    names = ", ".join(columns)
    found = rows(db, f"SELECT {names}, {label} FROM {table}")
    data = np.array([[float(v) for v in row] for row in found])
    return data[:, :-1], data[:, -1]


def hyperparams(task: str, algorithm: str) -> dict[str, Any]:
    """QUICK settings, and random_state where the estimator takes one."""
    found = dict(QUICK.get(algorithm, {}))
    if "random_state" in estimator_class(task, algorithm)().get_params():
        found["random_state"] = 0
    return found


def train(db: psycopg.Connection[Any], project: str, **args: Any) -> tuple[Any, ...]:
    named = ", ".join(f"{k} => %({k})s" for k in args)
    values = {k: json.dumps(v) if isinstance(v, dict) else v for k, v in args.items()}
    found = db.execute(
        f"SELECT * FROM pgml.train(%(project)s{', ' if named else ''}{named})",
        {"project": project} | values,
    ).fetchall()
    assert len(found) == 1
    return found[0]


def per_row(db: psycopg.Connection[Any], project: str, table: str, columns: list[str]) -> Any:
    """Each row's features and the prediction of a per-row call on them."""
    array = ", ".join(columns)
    sql = f"SELECT {array}, pgml.predict('{project}', ARRAY[{array}]) FROM {table}"
    found = np.array([[float(v) for v in row] for row in rows(db, sql)])
    return found[:, :-1], found[:, -1]


def metrics(db: psycopg.Connection[Any], project: str) -> dict[str, Any]:
    (found,) = db.execute(
        "SELECT m.metrics FROM pgml.models AS m JOIN pgml.projects AS p ON p.id = m.project_id "
        "WHERE p.name = %s ORDER BY m.id DESC LIMIT 1",
        [project],
    ).fetchone() or (None,)
    assert isinstance(found, dict)
    return found


def test_bundled_datasets_load_with_postgresml_names(db: psycopg.Connection[Any]) -> None:
    for name, count in ROWS.items():
        assert rows(db, "SELECT * FROM pgml.load_dataset(%s)", name) == [(name, count)]
    assert rows(db, "SELECT * FROM pgml.load_dataset('linnerud')") == [("linnerud", 20)]
    columns = rows(
        db,
        "SELECT attname, format_type(atttypid, atttypmod) FROM pg_attribute "
        "WHERE attrelid = 'pgml.breast_cancer'::regclass AND attnum > 0 ORDER BY attnum",
    )
    assert columns[0] == ("mean radius", "real")
    assert columns[-1] == ("malignant", "boolean")
    assert rows(db, "SELECT count(*) FROM pgml.breast_cancer WHERE malignant") == [(212,)]
    assert rows(db, "SELECT array_dims(image), target FROM pgml.digits LIMIT 1") == [
        ("[1:8][1:8]", 0)
    ]
    assert [
        c
        for c, _ in rows(
            db,
            "SELECT column_name, 1 FROM information_schema.columns "
            "WHERE table_schema = 'pgml' AND table_name = 'wine' "
            "ORDER BY ordinal_position",
        )
    ][-3:] == [
        "od280/od315_of_diluted_wines",
        "proline",
        "target",
    ]


def _split(x: Any, y: Any, test_size: float = 0.25) -> tuple[Any, Any, Any]:
    """test_sampling 'last': the first rows train, the last quarter tests."""
    cut = len(y) - round(len(y) * test_size)
    return x[:cut], y[:cut], x[cut:]


@pytest.mark.parametrize(
    ("task", "table", "columns", "label"),
    [
        (REGRESSION, "pgml.diabetes", DIABETES, "target"),
        (CLASSIFICATION, SHUFFLED, IRIS, "target"),
    ],
)
def test_every_algorithm_predicts_as_scikit_learn(
    db: psycopg.Connection[Any], task: str, table: str, columns: list[str], label: str
) -> None:
    x, y = features(db, table, columns, label)
    train_x, train_y, _ = _split(x, y)
    project = unique(f"families_{task}")
    for algorithm in INSTALLED[task]:
        params = hyperparams(task, algorithm)
        first = {"task": task, "relation_name": table, "y_column_name": label}
        found = train(
            db,
            project,
            **(first if algorithm == INSTALLED[task][0] else {}),
            algorithm=algorithm,
            hyperparams=params,
            test_sampling="last",
        )
        assert found[:3] == (project, task, algorithm)
        reference = estimator_class(task, algorithm)(**params).fit(train_x, train_y)
        db.execute("SELECT * FROM pgml.deploy(%s, 'most_recent', %s)", [project, algorithm])
        inputs, predicted = per_row(db, project, table, columns)
        expected = reference.predict(inputs).astype(np.float32)
        np.testing.assert_allclose(predicted, expected, rtol=1e-4, atol=1e-4, err_msg=algorithm)
        recorded = metrics(db, project)
        keys = (
            {"r2", "mean_squared_error", "mean_absolute_error", "explained_variance", "max_error"}
            if task == REGRESSION
            else {"f1", "precision", "recall", "accuracy", "mcc"}
        )
        assert keys <= recorded.keys(), algorithm
    (count,) = db.execute(
        "SELECT count(*) FROM pgml.trained_models WHERE name = %s AND status = 'successful'",
        [project],
    ).fetchone() or (0,)
    assert count == len(INSTALLED[task])
