"""pgml.train, predictions over feature arrays and PostgresML's bundled datasets, through
the proxy with psycopg: every family of algorithms on scikit-learn's toy datasets, the
predictions equal to the same estimator's fitted on the same split, searches equal to
GridSearchCV's, and bad input refused with its SQLSTATE and nothing recorded."""

from __future__ import annotations

import importlib.util
import json
import threading
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import psycopg
import pytest
from psycopg import errors
from sklearn import cluster, decomposition, ensemble, linear_model, model_selection, svm
from sklearn.tree import DecisionTreeClassifier

from handlers.classic.algorithms import (
    CLASSIFICATION,
    CLUSTERING,
    DEFAULTS,
    ESTIMATORS,
    REGRESSION,
    estimator_class,
)
from handlers.classic.boosters import FILES
from tests.integration._pgml import psql_answer, unique
from tests.support.pgserver import PostgresCluster
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
INSTALLED = {task: [a for a in names if a not in FILES] for task, names in ESTIMATORS.items()}
"""The scikit-learn algorithms (the boosting libraries' are tested on their own)."""
BOOSTING = {
    "xgboost": {"n_estimators": 5, "random_state": 0},
    "xgboost_random_forest": {"n_estimators": 5, "random_state": 0},
    "lightgbm": {"n_estimators": 5, "random_state": 0},
    "catboost": {"iterations": 5, "random_state": 0},
}
"""The boosting libraries' algorithms, with quick settings."""

FLOAT4_ARRAY_OID = 1021


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


def library_estimator(task: str, algorithm: str, params: dict[str, Any]) -> Any:
    """The library's own estimator as the proxy builds it (with the proxy's quiet defaults)."""
    return estimator_class(task, algorithm)(**(DEFAULTS.get(algorithm, {}) | params))


@pytest.mark.parametrize("algorithm", list(BOOSTING))
@pytest.mark.parametrize(
    ("task", "table", "columns", "label"),
    [
        (REGRESSION, "pgml.diabetes", DIABETES, "target"),
        (CLASSIFICATION, SHUFFLED, IRIS, "target"),
    ],
)
def test_boosting_libraries_predict_as_themselves(
    db: psycopg.Connection[Any],
    algorithm: str,
    task: str,
    table: str,
    columns: list[str],
    label: str,
) -> None:
    """Stored in the library's own format and read back, the model predicts as the library's
    estimator fitted here on the same split."""
    pytest.importorskip(ESTIMATORS[task][algorithm].partition(".")[0])
    x, y = features(db, table, columns, label)
    train_x, train_y, _ = _split(x, y)
    project = unique(f"{algorithm}_{task}")
    params = BOOSTING[algorithm]
    found = train(
        db,
        project,
        task=task,
        relation_name=table,
        y_column_name=label,
        algorithm=algorithm,
        hyperparams=params,
        test_sampling="last",
    )
    assert found == (project, task, algorithm, True)
    reference = library_estimator(task, algorithm, params).fit(train_x, train_y)
    inputs, predicted = per_row(db, project, table, columns)
    expected = np.ravel(reference.predict(inputs)).astype(np.float32)
    np.testing.assert_allclose(predicted, expected, rtol=1e-4, atol=1e-4)
    assert rows(
        db,
        "SELECT m.hyperparams, m.algorithm FROM pgml.models AS m JOIN pgml.projects AS p "
        "ON p.id = m.project_id WHERE p.name = %s",
        project,
    ) == [(params, algorithm)]
    if task == CLASSIFICATION:
        array = ", ".join(columns)
        answer = rows(db, f"SELECT pgml.predict_proba('{project}', ARRAY[{array}]) FROM {table}")
        np.testing.assert_allclose(
            [row[0] for row in answer], reference.predict_proba(inputs), rtol=1e-4, atol=1e-6
        )
        assert {"f1", "accuracy", "log_loss"} <= metrics(db, project).keys()
    else:
        assert metrics(db, project)["r2"] is not None


def test_xgboost_takes_any_labels_and_preprocessing(db: psycopg.Connection[Any]) -> None:
    """xgboost fits the classes' indexes; the proxy answers with the labels.  Preprocessing
    is stored with skops beside the model's own file."""
    pytest.importorskip("xgboost")
    from sklearn.compose import ColumnTransformer
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import StandardScaler

    view = unique("iris_odd_labels")
    db.execute(
        f"CREATE VIEW {view} AS SELECT {', '.join(IRIS)}, target * 2 + 1 AS kind FROM {SHUFFLED}"
    )
    try:
        project = unique("xgboost_labels")
        params = {"n_estimators": 5, "random_state": 0}
        train(
            db,
            project,
            task="classification",
            relation_name=view,
            y_column_name="kind",
            algorithm="xgboost",
            hyperparams=params,
            test_sampling="last",
            preprocess={"sepal_length": {"scale": "standard"}},
        )
        x, y = features(db, view, IRIS, "kind")
        train_x, train_y, _ = _split(x, y)
        prepare = ColumnTransformer([("s", StandardScaler(), [0])], remainder="passthrough")
        reference = Pipeline(
            [("p", prepare), ("m", library_estimator(CLASSIFICATION, "xgboost", params))]
        )
        reference.fit(train_x, (train_y - 1) / 2)
        inputs, predicted = per_row(db, project, view, IRIS)
        np.testing.assert_array_equal(predicted, reference.predict(inputs) * 2 + 1)
        assert set(predicted) == {1.0, 3.0, 5.0}
        cursor = db.execute(f"SELECT pgml.predict_proba('{project}', ARRAY[5.1, 3.5, 1.4, 0.2])")
        assert [c.type_code for c in cursor.description or []] == [FLOAT4_ARRAY_OID]  # REAL[]
        (proba,) = cursor.fetchone() or (None,)
        point = np.array([[5.1, 3.5, 1.4, 0.2]], dtype=np.float32).astype(float)
        np.testing.assert_allclose(proba, reference.predict_proba(point)[0], rtol=1e-5)
    finally:
        db.execute(f"DROP VIEW {view}")


@pytest.mark.parametrize(
    ("algorithm", "params", "message"),
    [
        ("xgboost", {"max_depth": -1}, "xgboost refused to train"),
        ("xgboost_random_forest", {"subsample": 2.0}, "xgboost_random_forest refused to train"),
        ("lightgbm", {"num_leaves": 1}, "lightgbm refused to train"),
        ("catboost", {"depth": 100}, "catboost refused to train"),
        ("catboost", {"no_such_option": 1}, "bad hyperparameters for catboost"),
        ("catboost", {"train_dir": "/tmp/elsewhere"}, 'hyperparameter "train_dir"'),
        ("lightgbm", {"output_model": "/tmp/model.txt"}, 'hyperparameter "output_model"'),
    ],
)
def test_boosting_hyperparameters_refused_record_nothing(
    db: psycopg.Connection[Any], algorithm: str, params: dict[str, Any], message: str
) -> None:
    pytest.importorskip(ESTIMATORS[REGRESSION][algorithm].partition(".")[0])
    before = model_count(db)
    with pytest.raises(errors.InvalidParameterValue, match=message):
        train(
            db,
            unique("refused"),
            task="regression",
            relation_name="pgml.diabetes",
            y_column_name="target",
            algorithm=algorithm,
            hyperparams=params,
        )
    assert model_count(db) == before


def test_grid_search_equals_grid_search_cv(db: psycopg.Connection[Any]) -> None:
    x, y = features(db, SHUFFLED, IRIS, "target")
    train_x, train_y, _ = _split(x, y)
    project = unique("search")
    grid = {"C": [0.01, 0.1, 1.0, 10.0], "kernel": ["linear", "rbf"]}
    train(
        db,
        project,
        task="classification",
        relation_name=SHUFFLED,
        y_column_name="target",
        algorithm="svm",
        search="grid",
        search_params=grid,
        search_args={"cv": 3},
        test_sampling="last",
    )
    reference = model_selection.GridSearchCV(svm.SVC(), grid, cv=3).fit(train_x, train_y)
    (recorded,) = db.execute(
        "SELECT m.hyperparams FROM pgml.models AS m JOIN pgml.projects AS p "
        "ON p.id = m.project_id WHERE p.name = %s",
        [project],
    ).fetchone() or (None,)
    assert recorded == reference.best_params_
    assert rows(
        db,
        "SELECT m.search, m.search_params, m.search_args FROM pgml.models AS m "
        "JOIN pgml.projects AS p ON p.id = m.project_id WHERE p.name = %s",
        project,
    ) == [("grid", grid, {"cv": 3})]
    found = metrics(db, project)["search_results"]
    assert found["params"] == reference.cv_results_["params"]
    np.testing.assert_allclose(found["mean_test_score"], reference.cv_results_["mean_test_score"])
    inputs, predicted = per_row(db, project, SHUFFLED, IRIS)
    np.testing.assert_array_equal(predicted, reference.predict(inputs))


def test_random_search_takes_its_arguments(db: psycopg.Connection[Any]) -> None:
    project = unique("random_search")
    train(
        db,
        project,
        task="regression",
        relation_name="pgml.diabetes",
        y_column_name="target",
        algorithm="ridge",
        search="random",
        search_params={"alpha": [0.01, 0.1, 1.0, 10.0]},
        search_args={"n_iter": 2, "cv": 2, "random_state": 0},
    )
    assert len(metrics(db, project)["search_results"]["params"]) == 2


@pytest.fixture(scope="module")
def iris_model(db: psycopg.Connection[Any]) -> tuple[str, Any]:
    """A logistic regression of iris, deployed, and the same estimator fitted here."""
    project = unique("iris_linear")
    train(
        db,
        project,
        task="classification",
        relation_name=SHUFFLED,
        y_column_name="target",
        hyperparams={"max_iter": 500},
        test_sampling="last",
    )
    x, y = features(db, SHUFFLED, IRIS, "target")
    train_x, train_y, _ = _split(x, y)
    return project, linear_model.LogisticRegression(max_iter=500).fit(train_x, train_y)


@pytest.mark.parametrize(
    ("array", "values"),
    [
        ("ARRAY[5.1, 3.5, 1.4, 0.2]::real[]", [5.1, 3.5, 1.4, 0.2]),
        ("ARRAY[6.7, 3.0, 5.2, 2.3]::float8[]", [6.7, 3.0, 5.2, 2.3]),
        ("ARRAY[6, 3, 4, 1]::int[]", [6, 3, 4, 1]),
        ("ARRAY[7, 3, 6, 2]::bigint[]", [7, 3, 6, 2]),
        ("ARRAY[true, false, true, true]", [1, 0, 1, 1]),
        ("'{5.9,3.0,5.1,1.8}'::numeric[]", [5.9, 3.0, 5.1, 1.8]),
    ],
)
def test_predict_takes_every_numeric_array(
    db: psycopg.Connection[Any], iris_model: tuple[str, Any], array: str, values: list[float]
) -> None:
    project, reference = iris_model
    point = np.array([values], dtype=np.float32).astype(float)
    (label,) = db.execute(f"SELECT pgml.predict('{project}', {array})").fetchone() or (None,)
    assert label == reference.predict(point)[0]
    (proba,) = db.execute(f"SELECT pgml.predict_proba('{project}', {array})").fetchone() or (None,)
    np.testing.assert_allclose(proba, reference.predict_proba(point)[0], rtol=1e-5)


def test_predict_takes_a_whole_row(
    db: psycopg.Connection[Any], iris_model: tuple[str, Any]
) -> None:
    """A table's row gives its feature columns by name (the label left out), an anonymous
    row its fields in the snapshot's order; per row and as a constant."""
    project, reference = iris_model
    array = ", ".join(IRIS)
    found = rows(db, f"SELECT {array}, pgml.predict('{project}', i) FROM {SHUFFLED} AS i")
    inputs = np.array([[float(v) for v in row[:-1]] for row in found])
    np.testing.assert_array_equal([row[-1] for row in found], reference.predict(inputs))
    found = rows(db, f"SELECT {array}, pgml.predict('{project}', ({array})) FROM {SHUFFLED}")
    inputs = np.array([[float(v) for v in row[:-1]] for row in found])
    np.testing.assert_array_equal([row[-1] for row in found], reference.predict(inputs))
    point = np.array([[6.7, 3.0, 5.2, 2.3]], dtype=np.float32).astype(float)
    assert rows(db, f"SELECT pgml.predict('{project}', (6.7::real, 3.0, 5.2, 2.3))") == [
        (reference.predict(point)[0],)
    ]
    with pytest.raises(errors.InvalidParameterValue, match="takes rows of 4 columns"):
        db.execute(f"SELECT pgml.predict('{project}', (1, 2, 3))")
    with pytest.raises(errors.NullValueNotAllowed, match='column "petal_width" of the row'):
        db.execute(f"SELECT pgml.predict('{project}', (1, 2, 3, NULL::real))")


def test_predict_batch_takes_many_rows_flattened(
    db: psycopg.Connection[Any], iris_model: tuple[str, Any]
) -> None:
    project, reference = iris_model
    points = [[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3], [5.9, 3.0, 5.1, 1.8]]
    flat = ", ".join(str(v) for row in points for v in row)
    found = rows(db, f"SELECT * FROM pgml.predict_batch('{project}', ARRAY[{flat}])")
    expected = reference.predict(np.array(points, dtype=np.float32).astype(float))
    assert [row[0] for row in found] == list(expected)
    inputs, _ = features(db, SHUFFLED, IRIS, "target")
    found = rows(
        db, "SELECT * FROM pgml.predict_batch(%s, %s::real[])", project, inputs.ravel().tolist()
    )
    assert [row[0] for row in found] == list(reference.predict(inputs))
    with pytest.raises(errors.InvalidParameterValue, match="not a whole number of rows"):
        db.execute(f"SELECT * FROM pgml.predict_batch('{project}', ARRAY[1, 2, 3, 4, 5])")


def test_predict_proba_per_row(db: psycopg.Connection[Any], iris_model: tuple[str, Any]) -> None:
    project, reference = iris_model
    array = ", ".join(IRIS)
    found = rows(
        db, f"SELECT {array}, pgml.predict_proba('{project}', ARRAY[{array}]) FROM {SHUFFLED}"
    )
    inputs = np.array([[float(v) for v in row[:-1]] for row in found])
    np.testing.assert_allclose(
        [row[-1] for row in found], reference.predict_proba(inputs), rtol=1e-4, atol=1e-6
    )


def test_a_model_is_served_by_its_id_deployed_or_not(db: psycopg.Connection[Any]) -> None:
    """PostgresML's overloads that name a model by its id: that model answers, whichever
    one its project has deployed, in every statement shape, with per-row ids too."""
    project = unique("iris_by_id")
    common = {"hyperparams": {"max_iter": 500}, "test_sampling": "last"}
    train(
        db, project, task="classification", relation_name=SHUFFLED, y_column_name="target", **common
    )
    tree_params = {"random_state": 0, "max_depth": 2}
    assert train(
        db,
        project,
        algorithm="decision_tree",
        hyperparams=tree_params,
        automatic_deploy=False,
        test_sampling="last",
    ) == (project, "classification", "decision_tree", False)
    linear, tree = (
        row[0]
        for row in rows(
            db,
            "SELECT m.id FROM pgml.models AS m JOIN pgml.projects AS p ON p.id = m.project_id "
            "WHERE p.name = %s ORDER BY m.id",
            project,
        )
    )
    x, y = features(db, SHUFFLED, IRIS, "target")
    train_x, train_y, _ = _split(x, y)
    fitted = {
        linear: linear_model.LogisticRegression(max_iter=500).fit(train_x, train_y),
        tree: DecisionTreeClassifier(**tree_params).fit(train_x, train_y),
    }
    array = ", ".join(IRIS)
    for model_id, reference in fitted.items():
        found = rows(
            db, f"SELECT {array}, pgml.predict(%s, ARRAY[{array}]) FROM {SHUFFLED}", model_id
        )
        inputs = np.array([[float(v) for v in row[:-1]] for row in found])
        assert [row[-1] for row in found] == list(reference.predict(inputs))
        whole = rows(db, f"SELECT pgml.predict(%s::bigint, i) FROM {SHUFFLED} AS i", model_id)
        assert [row[0] for row in whole] == [row[-1] for row in found]
        (proba,) = db.execute(
            "SELECT pgml.predict_proba(%s, ARRAY[5.9, 3.0, 5.1, 1.8])", [model_id]
        ).fetchone() or (None,)
        np.testing.assert_allclose(
            proba, reference.predict_proba([[5.9, 3.0, 5.1, 1.8]])[0], rtol=1e-5
        )
        batch = rows(
            db,
            "SELECT * FROM pgml.predict_batch(%s, %s::real[])",
            model_id,
            inputs.ravel().tolist(),
        )
        assert [row[0] for row in batch] == list(
            reference.predict(inputs.astype(np.float32).astype(float))
        )
    assert list(fitted[linear].predict(inputs)) != list(fitted[tree].predict(inputs))
    # the project's name still means its deployed model; ids read from rows, each its own
    assert rows(db, f"SELECT pgml.predict(%s, ARRAY[{array}]) FROM {SHUFFLED}", project) == rows(
        db, f"SELECT pgml.predict(%s, ARRAY[{array}]) FROM {SHUFFLED}", linear
    )
    mixed = rows(
        db,
        f"SELECT m, {array}, pgml.predict(m, ARRAY[{array}]) FROM {SHUFFLED} CROSS JOIN "
        f"(VALUES ({linear}), ({tree})) AS v(m)",
    )
    assert len(mixed) == 2 * len(inputs)
    for model_id, *point, label in mixed:
        assert label == fitted[model_id].predict([[float(v) for v in point]])[0]
    bound = rows(  # bound parameters (the extended protocol): described as PostgreSQL types m
        db,
        f"SELECT m, {array}, pgml.predict(m, ARRAY[{array}]) FROM {SHUFFLED} "
        "CROSS JOIN (VALUES (%s), (%s)) AS v(m)",
        linear,
        tree,
    )
    assert sorted(bound) == sorted(mixed)
    with pytest.raises(errors.FeatureNotSupported, match=r"has one label: use pgml\.predict$"):
        db.execute("SELECT pgml.predict_joint(%s, ARRAY[1, 2, 3, 4])", [tree])
    missing = tree + 1000
    with pytest.raises(errors.UndefinedObject) as raised:
        db.execute(f"SELECT pgml.predict({missing}, ARRAY[1, 2, 3, 4])")
    assert raised.value.diag.message_primary == f"model {missing} does not exist"


def model_count(db: psycopg.Connection[Any]) -> tuple[int, int]:
    (models, projects) = db.execute(
        "SELECT (SELECT count(*) FROM pgml.models), (SELECT count(*) FROM pgml.projects)"
    ).fetchone() or (0, 0)
    return models, projects


@pytest.mark.parametrize(
    ("args", "sqlstate", "message"),
    [
        ({"algorithm": "no_such_algorithm"}, "22023", 'unknown algorithm "no_such_algorithm"'),
        ({"y_column_name": "nope"}, "42703", 'column "nope" does not exist'),
        ({"hyperparams": {"no_such_option": 1}}, "22023", "bad hyperparameters for linear"),
        ({"algorithm": "ridge", "hyperparams": {"alpha": -1}}, "22023", "ridge refused"),
        ({"algorithm": "ridge", "hyperparams": {"solver": "nope"}}, "22023", "ridge refused"),
        ({"task": "clustering_soon"}, "22023", 'unknown task "clustering_soon"'),
        ({"relation_name": "no_such_table"}, "42P01", '"no_such_table" does not exist'),
        ({"search": "grid", "search_params": {"nope": [1]}}, "22023", "linear refused"),
        ({"test_sampling": "sideways"}, "22023", 'test_sampling "sideways"'),
    ],
)
def test_bad_arguments_record_nothing(
    db: psycopg.Connection[Any], args: dict[str, Any], sqlstate: str, message: str
) -> None:
    before = model_count(db)
    base = {"task": "regression", "relation_name": "pgml.diabetes", "y_column_name": "target"}
    with pytest.raises(psycopg.Error) as raised:
        train(db, unique("bad"), **(base | args))
    assert raised.value.sqlstate == sqlstate, raised.value
    assert message in str(raised.value)
    assert model_count(db) == before


def test_null_labels_and_features(db: psycopg.Connection[Any]) -> None:
    table = unique("nulls")
    db.execute(
        f"CREATE TABLE {table} AS SELECT g::real AS x, CASE WHEN g % 7 = 0 THEN NULL "
        "ELSE (g % 5)::real END AS f, NULL::real AS empty, (2 * g)::real AS y "
        "FROM generate_series(1, 40) AS g"
    )
    try:
        before = model_count(db)
        for label, fragment in (("empty", "only NULL values"), ("y", 'feature column "f"')):
            with pytest.raises(errors.NullValueNotAllowed, match=fragment):
                train(
                    db, unique("nulls"), task="regression", relation_name=table, y_column_name=label
                )
        assert model_count(db) == before
        db.execute(f"ALTER TABLE {table} DROP COLUMN empty")
        project = unique("imputed")
        found = train(
            db,
            project,
            task="regression",
            relation_name=table,
            y_column_name="y",
            preprocess={"f": {"impute": "mean", "scale": "standard"}, "x": {"scale": "min_max"}},
        )
        assert found[3] is True
        (value,) = db.execute(f"SELECT pgml.predict('{project}', ARRAY[10, 0])").fetchone() or (0,)
        assert value == pytest.approx(20, abs=1e-3)
    finally:
        db.execute(f"DROP TABLE {table}")


def test_every_row_of_one_nullable_column_is_read(db: psycopg.Connection[Any]) -> None:
    """A relation of one feature column (clustering: no label), NULL in every fourth row:
    every row is read (a NULL row is an empty line of COPY's CSV) and imputed."""
    table = unique("one_column")
    db.execute(
        f"CREATE TABLE {table} AS SELECT CASE WHEN g % 4 = 0 THEN NULL ELSE g % 7 END::real AS f "
        "FROM generate_series(1, 40) AS g"
    )
    try:
        project = unique("one_column")
        found = train(
            db,
            project,
            task="clustering",
            relation_name=table,
            algorithm="kmeans",
            hyperparams={"n_clusters": 2, "random_state": 0, "n_init": 2},
            preprocess={"f": {"impute": "mean"}},
        )
        assert found[:3] == (project, CLUSTERING, "kmeans")
        (analysis,) = db.execute(
            "SELECT s.analysis FROM pgml.snapshots AS s JOIN pgml.models AS m "
            "ON m.snapshot_id = s.id JOIN pgml.projects AS p ON p.id = m.project_id "
            "WHERE p.name = %s",
            [project],
        ).fetchone() or (None,)
        assert analysis["rows"] == 40
        assert analysis["train_rows"] + analysis["test_rows"] == 40
    finally:
        db.execute(f"DROP TABLE {table}")


def test_boolean_labels_and_features_train_a_classifier(db: psycopg.Connection[Any]) -> None:
    """Booleans, NULL among them, are features of 0 and 1 and a label of two classes."""
    table = unique("booleans")
    db.execute(
        f"CREATE TABLE {table} AS SELECT g % 2 = 0 AS even, CASE WHEN g % 9 = 0 THEN NULL "
        "ELSE g % 2 = 0 END AS hint, (g % 3)::int AS noise FROM generate_series(1, 90) AS g"
    )
    try:
        project = unique("booleans")
        train(
            db,
            project,
            task="classification",
            relation_name=table,
            y_column_name="even",
            algorithm="decision_tree",
            preprocess={"hint": {"impute": "mode"}},
        )
        predicted = db.execute(
            f"SELECT pgml.predict('{project}', ARRAY[1, 1]::real[]), "
            f"pgml.predict('{project}', ARRAY[0, 1]::real[])"
        ).fetchone()
        assert predicted == (1.0, 0.0)
    finally:
        db.execute(f"DROP TABLE {table}")


def test_impute_min_and_max_take_the_training_extremes(db: psycopg.Connection[Any]) -> None:
    """A NULL feature becomes the column's least (``min``) or greatest (``max``) training
    value, each per feature, in training and at prediction."""
    table = unique("extremes")
    db.execute(
        f"CREATE TABLE {table} AS SELECT f, 2 * coalesce(f, 0) AS y_min, "
        "2 * coalesce(f, 10) AS y_max FROM (SELECT CASE g % 3 WHEN 0 THEN 0 WHEN 1 THEN 10 "
        "END::real AS f FROM generate_series(1, 60) AS g) AS s"
    )
    try:
        for impute, label in (("min", "y_min"), ("max", "y_max")):
            project = unique(f"impute_{impute}")
            db.execute(f"CREATE VIEW {table}_{impute} AS SELECT f, {label} FROM {table}")
            found = train(
                db,
                project,
                task="regression",
                relation_name=f"{table}_{impute}",
                y_column_name=label,
                preprocess={"f": {"impute": impute}},
            )
            assert found == (project, "regression", "linear", True)
            for point in (0, 10):
                (value,) = db.execute(
                    f"SELECT pgml.predict('{project}', ARRAY[{point}])"
                ).fetchone() or (None,)
                assert value == pytest.approx(2 * point, abs=1e-3), (impute, point)
            # A NULL at prediction is imputed as training imputed it, in an array, a
            # batch and a row.
            extreme = 0 if impute == "min" else 10
            (array, row), *_ = db.execute(
                f"SELECT pgml.predict('{project}', ARRAY[NULL]::real[]), "
                f"pgml.predict('{project}', r) FROM (SELECT NULL::real AS f) AS r"
            ).fetchall()
            batch = db.execute(
                f"SELECT * FROM pgml.predict_batch('{project}', ARRAY[NULL, 10, NULL]::real[])"
            ).fetchall()
            assert [array, row] == pytest.approx([2 * extreme] * 2, abs=1e-3), impute
            assert [v for (v,) in batch] == pytest.approx([2 * extreme, 20, 2 * extreme], abs=1e-3)
    finally:
        db.execute(f"DROP TABLE {table} CASCADE")


def test_a_null_feature_without_an_imputer_is_refused(db: psycopg.Connection[Any]) -> None:
    """At prediction, and in training with ``impute => 'error'`` (PostgresML's default)."""
    table = unique("no_imputer")
    db.execute(
        f"CREATE TABLE {table} AS SELECT g::real AS f, 2 * g AS y FROM generate_series(1, 30) AS g"
    )
    try:
        project = unique("impute_none")
        train(db, project, task="regression", relation_name=table, y_column_name="y")
        with pytest.raises(errors.NullValueNotAllowed, match="features must not contain NULL"):
            db.execute(f"SELECT pgml.predict('{project}', ARRAY[NULL]::real[])")
        with pytest.raises(errors.NullValueNotAllowed, match='column "f" of the row is NULL'):
            db.execute(f"SELECT pgml.predict('{project}', r) FROM (SELECT NULL::real AS f) AS r")
        db.execute(f"INSERT INTO {table} VALUES (NULL, 0)")
        with pytest.raises(errors.NullValueNotAllowed, match='feature column "f"'):
            train(
                db,
                unique("impute_error"),
                task="regression",
                relation_name=table,
                y_column_name="y",
                preprocess={"f": {"impute": "error"}},
            )
    finally:
        db.execute(f"DROP TABLE {table} CASCADE")


def test_wrong_feature_count_is_refused(
    db: psycopg.Connection[Any], iris_model: tuple[str, Any]
) -> None:
    project, _ = iris_model
    with pytest.raises(errors.InvalidParameterValue, match="takes 4 features, not 3"):
        db.execute(f"SELECT pgml.predict('{project}', ARRAY[1, 2, 3])")
    with pytest.raises(errors.InvalidParameterValue, match="takes 4 features, not 5"):
        db.execute(f"SELECT pgml.predict_proba('{project}', ARRAY[1, 2, 3, 4, 5])")


def test_later_trainings_reuse_the_snapshot_and_deploy_by_algorithm(
    db: psycopg.Connection[Any],
) -> None:
    project = unique("later")
    first = train(
        db,
        project,
        task="regression",
        relation_name="pgml.diabetes",
        y_column_name="target",
        algorithm="lasso",
        hyperparams={"alpha": 5.0},
    )
    assert first == (project, "regression", "lasso", True)
    second = train(db, project, algorithm="linear", runtime="rust")
    assert second == (project, "regression", "linear", True)  # a better r2 than lasso's
    third = train(db, project, algorithm="lasso", hyperparams={"alpha": 50.0})
    assert third == (project, "regression", "lasso", False)
    recorded = rows(
        db,
        "SELECT m.runtime, m.num_features FROM pgml.models AS m JOIN pgml.projects AS p "
        "ON p.id = m.project_id WHERE p.name = %s ORDER BY m.id",
        project,
    )
    assert recorded == [("python", 10)] * 3  # runtime => 'rust' trains with Python
    found = rows(db, "SELECT * FROM pgml.deploy(%s, 'best_score', 'lasso')", project)
    assert found == [(project, "best_score", "lasso")]
    deployed = rows(db, "SELECT algorithm FROM pgml.deployed_models WHERE name = %s", project)
    assert deployed == [("lasso",)]
    relations = rows(
        db,
        "SELECT DISTINCT s.relation_name FROM pgml.snapshots AS s JOIN pgml.projects AS p "
        "ON p.id = s.project_id WHERE p.name = %s",
        project,
    )
    assert relations == [("pgml.diabetes",)]


def test_array_and_text_columns_are_features(db: psycopg.Connection[Any]) -> None:
    db.execute("SELECT pgml.load_dataset('digits', \"limit\" => 300)")
    project = unique("digits")
    train(
        db,
        project,
        task="classification",
        relation_name="pgml.digits",
        y_column_name="target",
        algorithm="random_forest",
        hyperparams={"n_estimators": 10, "random_state": 0},
        test_sampling="last",
    )
    stored = rows(db, "SELECT image, target FROM pgml.digits")
    x = np.array([np.array(row[0], dtype=float).ravel() for row in stored])
    y = np.array([row[1] for row in stored], dtype=float)
    reference = ensemble.RandomForestClassifier(n_estimators=10, random_state=0)
    reference.fit(x[:225], y[:225])
    found = rows(db, f"SELECT image, pgml.predict('{project}', image) FROM pgml.digits")
    x = np.array([np.array(row[0], dtype=float).ravel() for row in found])
    np.testing.assert_array_equal([row[1] for row in found], reference.predict(x))
    table = unique("colors")
    db.execute(
        f"CREATE TABLE {table} AS SELECT (ARRAY['red', 'green', 'blue'])[g % 3 + 1] AS color, "
        "g % 2 = 0 AS even, (g % 3)::float8 + (g % 2) * 10 AS y FROM generate_series(1, 60) AS g"
    )
    try:
        ordinal = unique("colors")
        train(
            db,
            ordinal,
            task="regression",
            relation_name=table,
            y_column_name="y",
            algorithm="decision_tree",
        )
        # y is 0 for red, 1 for green, 2 for blue, plus 10 when odd; codes in sorted order:
        # blue 0, green 1, red 2
        (value,) = db.execute(f"SELECT pgml.predict('{ordinal}', ARRAY[1, 0])").fetchone() or (0,)
        assert value == pytest.approx(11)
        found = rows(db, f"SELECT y, pgml.predict('{ordinal}', c) FROM {table} AS c")
        assert [v for _, v in found] == pytest.approx([y for y, _ in found])  # text encoded
        hot = unique("colors_one_hot")
        train(
            db,
            hot,
            task="regression",
            relation_name=table,
            y_column_name="y",
            algorithm="decision_tree",
            preprocess={"color": {"encode": "one_hot"}},
        )
        (value,) = db.execute(f"SELECT pgml.predict('{hot}', ARRAY[0, 0, 1, 0])").fetchone() or (0,)
        assert value == pytest.approx(10)
        found = rows(db, f"SELECT y, pgml.predict('{hot}', (color, even)) FROM {table}")
        assert [v for _, v in found] == pytest.approx([y for y, _ in found])
        with pytest.raises(errors.InvalidParameterValue, match="a value training never saw"):
            db.execute(f"SELECT pgml.predict('{hot}', ('purple'::text, true))")
    finally:
        db.execute(f"DROP TABLE {table}")


def test_text_and_feature_projects_keep_their_own_inputs(
    db: psycopg.Connection[Any], iris_model: tuple[str, Any]
) -> None:
    project, _ = iris_model
    with pytest.raises(errors.FeatureNotSupported, match="features as an array of numbers"):
        db.execute(f"SELECT pgml.predict('{project}', 'a sentence')")
    with pytest.raises(errors.InvalidParameterValue, match="is a classification project"):
        train(db, project, task="regression")
    with pytest.raises(errors.InvalidParameterValue, match="is a classification project"):
        db.execute(f"SELECT * FROM pgml.tune('{project}')")
    text = unique("text_project")
    db.execute("INSERT INTO pgml.projects (name, task) VALUES (%s, 'text-classification')", [text])
    with pytest.raises(errors.InvalidParameterValue, match="is a text-classification project"):
        train(db, text, algorithm="ridge")


@pytest.mark.skipif(importlib.util.find_spec("xgboost") is not None, reason="xgboost installed")
def test_an_algorithm_whose_library_is_missing(db: psycopg.Connection[Any]) -> None:
    before = model_count(db)
    with pytest.raises(errors.FeatureNotSupported, match="needs the Python package xgboost"):
        train(
            db,
            unique("xgb"),
            task="regression",
            relation_name="pgml.diabetes",
            y_column_name="target",
            algorithm="xgboost",
        )
    assert model_count(db) == before


def test_training_needs_the_projects_owner(
    db: psycopg.Connection[Any], cluster: PostgresCluster, proxy: ProxyProcess
) -> None:
    project = unique("owned")
    train(db, project, task="regression", relation_name="pgml.diabetes", y_column_name="target")
    role = unique("outsider")
    cluster.psql(
        f"CREATE ROLE {role} LOGIN; GRANT SELECT ON pgml.diabetes TO {role}; "
        f"GRANT INSERT ON pgml.projects, pgml.models, pgml.deployments TO {role}"
    )
    try:
        with psycopg.connect(proxy.dsn(user=role), autocommit=True) as other:
            before = model_count(db)
            with pytest.raises(errors.InsufficientPrivilege, match="permission denied for project"):
                train(other, project, algorithm="ridge")
            assert model_count(db) == before
    finally:
        cluster.psql(f"DROP OWNED BY {role}; DROP ROLE {role}")


def test_materialized_snapshot(db: psycopg.Connection[Any]) -> None:
    """A materialized snapshot keeps the rows; later trainings without a relation use them."""
    table = unique("diabetes_copy")
    db.execute(f"CREATE TABLE {table} AS SELECT * FROM pgml.diabetes")
    project = unique("materialized")
    try:
        train(
            db,
            project,
            task="regression",
            relation_name=table,
            y_column_name="target",
            materialize_snapshot=True,
        )
        db.execute(f"DELETE FROM {table} WHERE age > 0")
        train(db, project, algorithm="ridge")
        found = rows(
            db,
            "SELECT s.id, s.materialized, s.rows, s.relation_name FROM pgml.snapshots AS s "
            "JOIN pgml.projects AS p ON p.id = s.project_id WHERE p.name = %s ORDER BY s.id",
            project,
        )
        assert [row[1:] for row in found] == [(True, 442, table), (False, 442, table)]
        assert rows(db, f"SELECT count(*) FROM pgml.snapshot_{found[0][0]}") == [(442,)]
        train(db, project, relation_name=table, algorithm="lasso")  # the relation as it is now
        (now,) = rows(
            db,
            "SELECT s.rows FROM pgml.snapshots AS s JOIN pgml.projects AS p "
            "ON p.id = s.project_id WHERE p.name = %s ORDER BY s.id DESC LIMIT 1",
            project,
        )
        assert now[0] < 442
        db.execute(f"DROP TABLE pgml.snapshot_{found[0][0]}")
    finally:
        db.execute(f"DROP TABLE {table}")


def test_psql_runs_the_documented_calls(
    db: psycopg.Connection[Any], iris_model: tuple[str, Any], proxy: ProxyProcess
) -> None:
    """The simple protocol, as psql sends PostgresML's examples: per row and with literals."""
    project, reference = iris_model
    array = ", ".join(IRIS)
    answer = psql_answer(
        proxy.dsn(), f"SELECT {array}, pgml.predict('{project}', ARRAY[{array}]) FROM {SHUFFLED}"
    )
    inputs = np.array([[float(v) for v in row[:-1]] for row in answer.rows])
    np.testing.assert_array_equal([float(r[-1]) for r in answer.rows], reference.predict(inputs))
    stratified = unique("stratified")
    answer = psql_answer(
        proxy.dsn(),
        f"SELECT * FROM pgml.train('{stratified}', 'classification', '{SHUFFLED}', 'target', "
        "'decision_tree', test_size => 0.2, test_sampling => 'stratified')",
    )
    assert answer.rows == [(stratified, "classification", "decision_tree", "t")]
    analysis = rows(
        db,
        "SELECT s.analysis->>'test_rows' FROM pgml.snapshots AS s JOIN pgml.projects AS p "
        "ON p.id = s.project_id WHERE p.name = %s",
        stratified,
    )
    assert analysis == [("30",)]


def test_clustering_assigns_rows_as_scikit_learn(db: psycopg.Connection[Any]) -> None:
    view = unique("iris_features")
    db.execute(f"CREATE VIEW {view} AS SELECT {', '.join(IRIS)} FROM {SHUFFLED}")
    try:
        x = np.array([[float(v) for v in row] for row in rows(db, f"SELECT * FROM {view}")])
        project = unique("clusters")
        params = {"n_clusters": 3, "random_state": 0, "n_init": 3}
        found = train(
            db,
            project,
            task="clustering",
            relation_name=view,
            algorithm="kmeans",
            hyperparams=params,
            test_sampling="last",
        )
        assert found == (project, CLUSTERING, "kmeans", True)
        reference = cluster.KMeans(**params).fit(x[: len(x) - round(len(x) / 4)])
        inputs, predicted = per_row(db, project, view, IRIS)
        np.testing.assert_array_equal(predicted, reference.predict(inputs))
        assert metrics(db, project)["silhouette"] > 0.3
        later = train(
            db,
            project,
            algorithm="mini_batch_kmeans",
            hyperparams={"n_clusters": 3, "random_state": 0},
        )
        assert later[:3] == (project, CLUSTERING, "mini_batch_kmeans")
        default = train(db, project, hyperparams={"n_clusters": 3, "random_state": 0})
        assert default[:3] == (project, CLUSTERING, "kmeans")  # PostgresML's for "linear"
        birch = train(
            db, project, algorithm="birch", hyperparams={"n_clusters": 3}, test_sampling="last"
        )
        assert birch[:3] == (project, CLUSTERING, "birch")
        db.execute("SELECT * FROM pgml.deploy(%s, 'most_recent', 'birch')", [project])
        reference = cluster.Birch(n_clusters=3).fit(x[: len(x) - round(len(x) / 4)])
        inputs, predicted = per_row(db, project, view, IRIS)
        np.testing.assert_array_equal(predicted, reference.predict(inputs))
        with pytest.raises(errors.FeatureNotSupported, match="needs a classification model"):
            db.execute(f"SELECT pgml.predict_proba('{project}', ARRAY[5.1, 3.5, 1.4, 0.2])")
    finally:
        db.execute(f"DROP VIEW {view}")


def test_training_leaves_other_clients_served(
    db: psycopg.Connection[Any], proxy: ProxyProcess
) -> None:
    """A fit runs off the event loop: another session's statements answer meanwhile."""
    db.execute("SELECT pgml.load_dataset('digits')")
    project = unique("busy")
    failures: list[BaseException] = []

    def long_training() -> None:
        try:
            with psycopg.connect(proxy.dsn(), autocommit=True) as trainer:
                train(
                    trainer,
                    project,
                    task="classification",
                    relation_name="pgml.digits",
                    y_column_name="target",
                    algorithm="random_forest",
                    hyperparams={"n_estimators": 300, "random_state": 0},
                )
        except BaseException as exc:
            failures.append(exc)

    worker = threading.Thread(target=long_training)
    worker.start()
    try:
        deadline = time.monotonic() + 30
        while not rows(  # reading the relation, or held in a statement while it fits
            db,
            "SELECT 1 FROM pg_stat_activity WHERE pid <> pg_backend_pid() AND ("
            "query LIKE 'COPY (SELECT json%%' OR query LIKE 'SELECT pg_sleep(%%' "
            "OR query LIKE 'SELECT set_config(''lock_timeout'', ''0'', true), "
            "pg_advisory_lock(%%')",
        ):
            assert time.monotonic() < deadline, "the training never read its relation"
            time.sleep(0.05)
        time.sleep(1.0)  # the rows are read: the fit is under way
        slowest = 0.0
        for _ in range(10):
            started = time.monotonic()
            rows(db, "SELECT 1")
            slowest = max(slowest, time.monotonic() - started)
            time.sleep(0.05)
        assert worker.is_alive(), "the training ended before the other session was measured"
        assert slowest < 0.5
    finally:
        worker.join(120)
    assert not failures, failures


@pytest.mark.parametrize(
    ("dataset", "task", "label", "key"),
    [
        ("breast_cancer", CLASSIFICATION, "malignant", "f1"),
        ("wine", CLASSIFICATION, "target", "f1"),
        ("linnerud", REGRESSION, "weight", "r2"),
    ],
)
def test_the_other_bundled_datasets_train(
    db: psycopg.Connection[Any], dataset: str, task: str, label: str, key: str
) -> None:
    """Boolean labels, quoted column names with spaces and slashes, small tables."""
    db.execute("SELECT pgml.load_dataset(%s)", [dataset])
    project = unique(dataset)
    found = train(
        db,
        project,
        task=task,
        relation_name=f"pgml.{dataset}",
        y_column_name=label,
        algorithm="random_forest",
        hyperparams={"n_estimators": 10, "random_state": 0},
    )
    assert found == (project, task, "random_forest", True)
    assert metrics(db, project)[key] is not None
    (width,) = db.execute(
        "SELECT num_features FROM pgml.models AS m JOIN pgml.projects AS p "
        "ON p.id = m.project_id WHERE p.name = %s",
        [project],
    ).fetchone() or (0,)
    zeros = "ARRAY[" + ", ".join(["0"] * width) + "]"
    (value,) = db.execute(f"SELECT pgml.predict('{project}', {zeros})").fetchone() or (None,)
    assert isinstance(value, float)


def test_decomposition_transforms_as_scikit_learn(db: psycopg.Connection[Any]) -> None:
    view = unique("iris_measures")
    db.execute(f"CREATE VIEW {view} AS SELECT {', '.join(IRIS)} FROM {SHUFFLED}")
    try:
        x = np.array([[float(v) for v in row] for row in rows(db, f"SELECT * FROM {view}")])
        project = unique("components")
        found = train(  # no algorithm: PostgresML's "linear" means pca here
            db,
            project,
            task="decomposition",
            relation_name=view,
            hyperparams={"n_components": 2},
            test_sampling="last",
        )
        assert found == (project, "decomposition", "pca", True)
        reference = decomposition.PCA(n_components=2).fit(x[: len(x) - round(len(x) / 4)])
        array = ", ".join(IRIS)
        answer = rows(
            db, f"SELECT {array}, pgml.decompose('{project}', ARRAY[{array}]) FROM {view}"
        )
        inputs = np.array([[float(v) for v in row[:-1]] for row in answer])
        np.testing.assert_allclose(
            [row[-1] for row in answer], reference.transform(inputs), rtol=1e-4, atol=1e-4
        )
        assert metrics(db, project)["cumulative_explained_variance"] == pytest.approx(
            sum(reference.explained_variance_ratio_), rel=1e-4
        )
        (first,) = db.execute(f"SELECT pgml.predict('{project}', ARRAY[1, 2, 3, 4])").fetchone()
        assert first == pytest.approx(reference.transform([[1, 2, 3, 4]])[0][0], rel=1e-4)
        with pytest.raises(errors.FeatureNotSupported, match=r"use pgml\.decompose"):
            db.execute(f"SELECT pgml.predict_proba('{project}', ARRAY[1, 2, 3, 4])")
    finally:
        db.execute(f"DROP VIEW {view}")


def test_decompose_needs_a_decomposition_project(
    db: psycopg.Connection[Any], iris_model: tuple[str, Any]
) -> None:
    project, _ = iris_model
    with pytest.raises(errors.FeatureNotSupported, match="needs a decomposition project"):
        db.execute(f"SELECT pgml.decompose('{project}', ARRAY[1, 2, 3, 4])")


def test_target_encoding_equals_scikit_learns(db: psycopg.Connection[Any]) -> None:
    """``encode: target`` is scikit-learn's TargetEncoder over the text's codes."""
    from sklearn.compose import ColumnTransformer
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import TargetEncoder

    view = unique("iris_species")
    species = "(ARRAY['setosa', 'versicolor', 'virginica'])[target + 1]"
    db.execute(
        f"CREATE VIEW {view} AS SELECT sepal_width, {species} AS species, sepal_length "
        f"FROM {SHUFFLED}"
    )
    try:
        project = unique("target_encoded")
        train(
            db,
            project,
            task="regression",
            relation_name=view,
            y_column_name="sepal_length",
            test_sampling="last",
            preprocess={"species": {"encode": "target"}},
        )
        found = rows(db, f"SELECT sepal_width, species, sepal_length FROM {view}")
        codes = {"setosa": 0.0, "versicolor": 1.0, "virginica": 2.0}
        x = np.array([[float(w), codes[s]] for w, s, _ in found])
        y = np.array([float(v) for *_, v in found])
        train_x, train_y, _ = _split(x, y)
        prepare = ColumnTransformer(
            [("t", TargetEncoder(random_state=0), [1])], remainder="passthrough"
        )
        reference = Pipeline([("p", prepare), ("m", linear_model.LinearRegression())])
        reference.fit(train_x, train_y)
        predicted = [
            v
            for (v,) in rows(
                db, f"SELECT pgml.predict('{project}', (sepal_width, species)) FROM {view}"
            )
        ]
        np.testing.assert_allclose(predicted, reference.predict(x), rtol=1e-4, atol=1e-4)
    finally:
        db.execute(f"DROP VIEW {view}")
