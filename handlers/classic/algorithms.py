"""PostgresML's algorithm names, per task, as scikit-learn estimators.

A name maps to the estimator's import path; the hyperparameters go to its constructor
unchanged.  The libraries are imported only when a model is built.
"""

from __future__ import annotations

import importlib
from typing import Any

from handlers.errors import PgmlError, invalid_argument

REGRESSION, CLASSIFICATION = "regression", "classification"
CLUSTERING, DECOMPOSITION = "clustering", "decomposition"
TASKS = (REGRESSION, CLASSIFICATION, CLUSTERING, DECOMPOSITION)
SUPERVISED = frozenset({REGRESSION, CLASSIFICATION})

_LINEAR = "sklearn.linear_model."
_SVM = "sklearn.svm."
_ENSEMBLE = "sklearn.ensemble."

_BOTH: dict[str, tuple[str, str]] = {
    "ridge": (_LINEAR + "Ridge", _LINEAR + "RidgeClassifier"),
    "stochastic_gradient_descent": (_LINEAR + "SGDRegressor", _LINEAR + "SGDClassifier"),
    "passive_aggressive": (
        _LINEAR + "PassiveAggressiveRegressor",
        _LINEAR + "PassiveAggressiveClassifier",
    ),
    "svm": (_SVM + "SVR", _SVM + "SVC"),
    "nu_svm": (_SVM + "NuSVR", _SVM + "NuSVC"),
    "linear_svm": (_SVM + "LinearSVR", _SVM + "LinearSVC"),
    "gaussian_process": (
        "sklearn.gaussian_process.GaussianProcessRegressor",
        "sklearn.gaussian_process.GaussianProcessClassifier",
    ),
    "decision_tree": ("sklearn.tree.DecisionTreeRegressor", "sklearn.tree.DecisionTreeClassifier"),
    "ada_boost": (_ENSEMBLE + "AdaBoostRegressor", _ENSEMBLE + "AdaBoostClassifier"),
    "bagging": (_ENSEMBLE + "BaggingRegressor", _ENSEMBLE + "BaggingClassifier"),
    "extra_trees": (_ENSEMBLE + "ExtraTreesRegressor", _ENSEMBLE + "ExtraTreesClassifier"),
    "gradient_boosting_trees": (
        _ENSEMBLE + "GradientBoostingRegressor",
        _ENSEMBLE + "GradientBoostingClassifier",
    ),
    "random_forest": (_ENSEMBLE + "RandomForestRegressor", _ENSEMBLE + "RandomForestClassifier"),
    "hist_gradient_boosting": (
        _ENSEMBLE + "HistGradientBoostingRegressor",
        _ENSEMBLE + "HistGradientBoostingClassifier",
    ),
    "xgboost": ("xgboost.XGBRegressor", "xgboost.XGBClassifier"),
    "xgboost_random_forest": ("xgboost.XGBRFRegressor", "xgboost.XGBRFClassifier"),
    "lightgbm": ("lightgbm.LGBMRegressor", "lightgbm.LGBMClassifier"),
    "catboost": ("catboost.CatBoostRegressor", "catboost.CatBoostClassifier"),
}

ESTIMATORS: dict[str, dict[str, str]] = {
    REGRESSION: {
        "linear": _LINEAR + "LinearRegression",
        "lasso": _LINEAR + "Lasso",
        "elastic_net": _LINEAR + "ElasticNet",
        "least_angle": _LINEAR + "Lars",
        "lasso_least_angle": _LINEAR + "LassoLars",
        "orthogonal_matching_pursuit": _LINEAR + "OrthogonalMatchingPursuit",
        "bayesian_ridge": _LINEAR + "BayesianRidge",
        "automatic_relevance_determination": _LINEAR + "ARDRegression",
        "ransac": _LINEAR + "RANSACRegressor",
        "theil_sen": _LINEAR + "TheilSenRegressor",
        "huber": _LINEAR + "HuberRegressor",
        "quantile": _LINEAR + "QuantileRegressor",
        "kernel_ridge": "sklearn.kernel_ridge.KernelRidge",
    }
    | {name: paths[0] for name, paths in _BOTH.items()},
    CLASSIFICATION: {
        "linear": _LINEAR + "LogisticRegression",
        "perceptron": _LINEAR + "Perceptron",
    }
    | {name: paths[1] for name, paths in _BOTH.items()},
    CLUSTERING: {
        "affinity_propagation": "sklearn.cluster.AffinityPropagation",
        "birch": "sklearn.cluster.Birch",
        "kmeans": "sklearn.cluster.KMeans",
        "mini_batch_kmeans": "sklearn.cluster.MiniBatchKMeans",
        "mean_shift": "sklearn.cluster.MeanShift",
    },
    DECOMPOSITION: {"pca": "sklearn.decomposition.PCA"},
}
"""Import paths of the estimators, by task and PostgresML algorithm name (the clustering
algorithms that can assign new rows to their clusters)."""

LINEAR_STANDS_FOR = {CLUSTERING: "kmeans", DECOMPOSITION: "pca"}
"""What PostgresML trains for ``linear`` (``pgml.train``'s default algorithm) in the tasks
that have no linear model."""

DEFAULTS: dict[str, dict[str, Any]] = {
    "lightgbm": {"verbose": -1},
    "catboost": {"verbose": False, "allow_writing_files": False},
}
"""Settings under the caller's hyperparameters: the libraries stay quiet and catboost writes
no files into the proxy's working directory."""

FILE_OPTIONS: dict[str, frozenset[str]] = {
    "lightgbm": frozenset(
        {"input_model", "output_model", "forcedsplits_filename", "forcedbins_filename"}
    ),
    "catboost": frozenset({"train_dir", "allow_writing_files", "save_snapshot", "snapshot_file"}),
}
"""Hyperparameters that would make the library read or write files on the proxy's machine:
refused unless false."""

LIBRARY_ERRORS = {"lightgbm": "lightgbm.basic.LightGBMError", "catboost": "catboost.CatBoostError"}
"""What the libraries raise for settings they refuse (xgboost's error is a ValueError)."""


def normalise_task(task: str) -> str:
    name = task.strip().lower()
    if name not in TASKS:
        raise invalid_argument(f'unknown task "{task}"', hint="Tasks: " + ", ".join(TASKS) + ".")
    return name


def check_algorithm(task: str, algorithm: str) -> str:
    """The algorithm's name as recorded (``linear`` read as :data:`LINEAR_STANDS_FOR` says);
    22023 when the task has no such algorithm."""
    name = algorithm.strip().lower()
    if name == "linear":
        name = LINEAR_STANDS_FOR.get(task, name)
    if name not in ESTIMATORS[task]:
        raise invalid_argument(
            f'unknown algorithm "{algorithm}" for {task}',
            hint="Algorithms: " + ", ".join(sorted(ESTIMATORS[task])) + ".",
        )
    return name


def estimator_class(task: str, algorithm: str) -> Any:
    """The estimator's class (imports its library); 0A000 when that is not installed."""
    module, _, name = ESTIMATORS[task][algorithm].rpartition(".")
    try:
        return getattr(importlib.import_module(module), name)
    except ImportError as exc:
        raise PgmlError(
            "0A000",
            f'algorithm "{algorithm}" needs the Python package {module.split(".")[0]}, '
            "which is not installed",
            hint="Install it where the proxy runs, or choose another algorithm.",
        ) from exc


def refusals(algorithm: str) -> tuple[type[Exception], ...]:
    """The exceptions by which the algorithm's library refuses its settings or data."""
    found: list[type[Exception]] = [TypeError, ValueError]
    path = LIBRARY_ERRORS.get(algorithm)
    if path is not None:
        module, _, name = path.rpartition(".")
        found.append(getattr(importlib.import_module(module), name))
    return tuple(found)


def build_estimator(task: str, algorithm: str, hyperparams: dict[str, Any]) -> Any:
    """The estimator with ``hyperparams`` (over the library's :data:`DEFAULTS`); 22023 when
    its constructor refuses them or they name files."""
    cls = estimator_class(task, algorithm)
    for key in FILE_OPTIONS.get(algorithm, frozenset()) & hyperparams.keys():
        if hyperparams[key] not in (None, False):
            raise invalid_argument(
                f'hyperparameter "{key}" of {algorithm} names files on the proxy\'s machine',
                hint="Leave it out: models are stored in pgml.files.",
            )
    try:
        return cls(**(DEFAULTS.get(algorithm, {}) | hyperparams))
    except refusals(algorithm) as exc:
        raise invalid_argument(f"bad hyperparameters for {algorithm}: {exc}") from exc
