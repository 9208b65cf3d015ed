"""Fitting a model on a table read by :mod:`handlers.classic.features` (blocking: run it
off the event loop): the feature matrix, the split, the search, the metrics, the files."""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from handlers.classic import boosters, storage
from handlers.classic.algorithms import (
    CLASSIFICATION,
    CLUSTERING,
    DECOMPOSITION,
    build_estimator,
    refusals,
)
from handlers.classic.features import ARRAY, BOOLEAN, TEXT, Table
from handlers.classic.preprocess import IMPUTERS, ColumnSteps, transformer
from handlers.errors import PgmlError, invalid_argument
from handlers.tuning.split import split_rows

MANIFEST_FILE = "classic.json"
SEARCHES = {"grid": "GridSearchCV", "random": "RandomizedSearchCV"}
JOINT_NATIVE = frozenset({"xgboost", "xgboost_random_forest"})
"""Boosting algorithms whose estimators fit several labels themselves; the other boosting
libraries' are not taken by ``pgml.train_joint``."""


@dataclass(slots=True)
class Job:
    task: str
    algorithm: str
    hyperparams: dict[str, Any]
    search: str | None
    search_params: dict[str, Any]
    search_args: dict[str, Any]
    test_size: float
    sampling: str
    seed: int
    preprocess: dict[str, ColumnSteps] = field(default_factory=dict)


@dataclass(slots=True)
class Fitted:
    metrics: dict[str, Any]
    hyperparams: dict[str, Any]
    train_rows: int
    test_rows: int
    features: int


def matrix(table: Table, steps: dict[str, ColumnSteps]) -> tuple[Any, dict[str, Any]]:
    """The feature matrix (NULLs as NaN) and what serving needs to know of its columns:
    their names, each column's feature positions, and text columns' categories."""
    import numpy as np

    blocks: list[Any] = []
    positions: dict[str, list[int]] = {}
    categories: dict[str, list[str]] = {}
    width = 0
    for index, column in enumerate(table.features):
        values = table.columns[index]
        step = steps.get(column.name, ColumnSteps())
        if column.category == TEXT:
            known = sorted({v for v in values if v is not None})
            categories[column.name] = known
            codes = {v: float(i) for i, v in enumerate(known)}
            ordinal = np.array([math.nan if v is None else codes[v] for v in values])
            if step.encode == "one_hot":
                block = np.array([[float(v == c) for c in known] for v in values])
            else:
                block = ordinal.reshape(-1, 1)
        elif column.category == ARRAY:
            block = _array_block(column.name, values)
        elif isinstance(values, np.ndarray):  # numbers or booleans, NULL as NaN already
            block = values.astype(float).reshape(-1, 1)
        elif column.category == BOOLEAN:
            block = np.array([math.nan if v is None else float(v) for v in values]).reshape(-1, 1)
        else:
            block = np.array([math.nan if v is None else v for v in values], dtype=float)
            block = block.reshape(-1, 1)
        positions[column.name] = list(range(width, width + block.shape[1]))
        width += block.shape[1]
        blocks.append(block)
        missing = int(np.isnan(block).any(axis=1).sum())
        if missing and IMPUTERS[step.impute or "error"] is None:
            raise PgmlError(
                "22004",
                f'feature column "{column.name}" has {missing} row(s) with NULL values',
                hint=f'Impute them: preprocess => \'{{"{column.name}": {{"impute": "mean"}}}}\', '
                "or filter them out in a view.",
            )
    features = np.hstack(blocks) if blocks else np.empty((table.rows, 0))
    return features, {"positions": positions, "categories": categories, "width": width}


def _array_block(name: str, values: list[Any]) -> Any:
    import numpy as np

    flat = [None if v is None else np.array(v, dtype=float).ravel() for v in values]
    sizes = {len(v) for v in flat if v is not None}
    if len(sizes) > 1:
        raise invalid_argument(
            f'array column "{name}" has arrays of different lengths ({min(sizes)} to {max(sizes)})',
            hint="Every row's array must have as many elements.",
        )
    size = sizes.pop() if sizes else 0
    return np.array([np.full(size, math.nan) if v is None else v for v in flat]).reshape(
        len(values), size
    )


def labels(table: Table, task: str) -> tuple[Any, list[float]]:
    """The label vector (None for clustering), and a classification's classes in order."""
    import numpy as np

    if table.label is None:
        return None, []
    if table.joint:
        return _joint_labels(table), []
    nulls = sum(v is None for v in table.y)
    if nulls:
        what = "only NULL values" if nulls == len(table.y) else f"{nulls} NULL value(s)"
        raise PgmlError(
            "22004",
            f'label column "{table.label.name}" has {what}',
            hint=f"Filter them out in a view: WHERE {table.label.name} IS NOT NULL.",
        )
    y = np.array([float(v) for v in table.y])
    if task != CLASSIFICATION:
        return y, []
    classes = sorted(set(y.tolist()))
    if len(classes) < 2:
        raise invalid_argument(
            f'label column "{table.label.name}" has a single class',
            hint="Classification needs at least two labels.",
        )
    return y, classes


def _joint_labels(table: Table) -> Any:
    """A joint model's labels: a row of them for each row."""
    import numpy as np

    for index, column in enumerate(table.joint):
        nulls = sum(row[index] is None for row in table.y)
        if nulls:
            what = "only NULL values" if nulls == len(table.y) else f"{nulls} NULL value(s)"
            raise PgmlError(
                "22004",
                f'label column "{column.name}" has {what}',
                hint=f"Filter them out in a view: WHERE {column.name} IS NOT NULL.",
            )
    return np.array([[float(v) for v in row] for row in table.y]).reshape(
        len(table.y), len(table.joint)
    )


def _several_labels(model: Any, algorithm: str) -> tuple[Any, bool]:
    """An estimator that fits several labels: itself when it can, else scikit-learn's
    ``MultiOutputRegressor`` around it (one fit a label); and whether it was wrapped."""
    from sklearn.multioutput import MultiOutputRegressor
    from sklearn.utils import get_tags

    if algorithm in boosters.FILES:
        if algorithm not in JOINT_NATIVE:
            raise PgmlError(
                "0A000",
                f"pgml.train_joint does not train {algorithm} models",
                hint="Use xgboost or a scikit-learn algorithm.",
            )
        return model, False
    if get_tags(model).target_tags.multi_output:
        return model, False
    return MultiOutputRegressor(model), True


def fit(table: Table, job: Job, folder: Path) -> Fitted:
    """Fit, score and write the model into ``folder``; 22023 for what the library refuses."""
    import numpy as np

    y, classes = labels(table, job.task)
    x, layout = matrix(table, job.preprocess)
    class_ids = [classes.index(v) for v in y.tolist()] if classes else None
    train, test = split_rows(table.rows, job.test_size, job.sampling, job.seed, class_ids)
    encoded = bool(classes) and job.algorithm in boosters.ENCODED_LABELS
    if encoded:  # fitted, scored and served as the classes' indexes
        y, scored = np.array(class_ids, dtype=float), [float(i) for i in range(len(classes))]
    else:
        scored = classes
    train_y = None if y is None else y[train]
    model = build_estimator(job.task, job.algorithm, job.hyperparams)
    prefix = ""
    if table.joint:
        model, wrapped = _several_labels(model, job.algorithm)
        prefix = "estimator__" if wrapped else ""
    prepare = transformer(job.preprocess, layout["positions"], layout["categories"])
    if prepare is not None:
        from sklearn.pipeline import Pipeline

        model = Pipeline([("preprocess", prepare), ("estimator", model)])
        prefix = "estimator__" + prefix
    hyperparams = dict(job.hyperparams)
    search_results: dict[str, Any] | None = None
    started = time.perf_counter()
    try:
        if job.search is not None:
            searched = _searcher(job, model, prefix)
            searched.fit(x[train], train_y)
            model = searched.best_estimator_
            best = {k.removeprefix(prefix): v for k, v in searched.best_params_.items()}
            hyperparams |= best
            search_results = {
                "best_params": best,
                "best_score": float(searched.best_score_),
                "params": [
                    {k.removeprefix(prefix): v for k, v in p.items()}
                    for p in searched.cv_results_["params"]
                ],
                "mean_test_score": [float(s) for s in searched.cv_results_["mean_test_score"]],
            }
        else:
            model.fit(x[train], train_y)
    except refusals(job.algorithm) as exc:
        raise invalid_argument(f"{job.algorithm} refused to train: {exc}") from exc
    fit_time = time.perf_counter() - started
    started = time.perf_counter()
    metrics = _metrics(job.task, model, x[test], None if y is None else y[test], scored)
    metrics |= {"fit_time": fit_time, "score_time": time.perf_counter() - started}
    if search_results is not None:
        metrics["search_results"] = search_results
    _write(folder, model, job, layout, classes, encoded, table)
    return Fitted(metrics, hyperparams, len(train), len(test), int(np.shape(x)[1]))


def _searcher(job: Job, model: Any, prefix: str) -> Any:
    """The search over ``model``, whose estimator's parameters are named with ``prefix``
    (inside a pipeline, or around several labels)."""
    from sklearn import model_selection

    if job.search not in SEARCHES:
        raise invalid_argument(f'unknown search "{job.search}"', hint="Use grid or random.")
    grid = {prefix + k: v for k, v in job.search_params.items()}
    cls = getattr(model_selection, SEARCHES[job.search])
    try:
        return cls(model, grid, **job.search_args)
    except TypeError as exc:
        raise invalid_argument(f"bad search_args: {exc}") from exc


def _metrics(task: str, model: Any, x: Any, y: Any, classes: list[float]) -> dict[str, Any]:
    import numpy as np
    from sklearn import metrics

    if task == DECOMPOSITION:
        ratios = getattr(model, "explained_variance_ratio_", None)
        if ratios is None:  # a pipeline: the estimator is its last step
            ratios = model[-1].explained_variance_ratio_
        return _finite({"cumulative_explained_variance": sum(ratios)})
    predicted = model.predict(x)
    if task == CLUSTERING:
        try:
            return _finite({"silhouette": metrics.silhouette_score(x, predicted)})
        except ValueError:  # one cluster in the test split: no silhouette
            return {"silhouette": None}
    if task != CLASSIFICATION:
        found = {
            "r2": metrics.r2_score(y, predicted),
            "mean_squared_error": metrics.mean_squared_error(y, predicted),
            "mean_absolute_error": metrics.mean_absolute_error(y, predicted),
            "explained_variance": metrics.explained_variance_score(y, predicted),
            # max_error takes one label: a joint model's is the largest of its labels'
            "max_error": float(np.max(np.abs(np.asarray(y) - np.asarray(predicted)))),
        }
        return _finite(found)
    average = "binary" if len(classes) == 2 else "macro"
    options: dict[str, Any] = {"average": average, "zero_division": 0}
    if average == "binary":
        options["pos_label"] = classes[1]
    found = {
        "f1": metrics.f1_score(y, predicted, **options),
        "precision": metrics.precision_score(y, predicted, **options),
        "recall": metrics.recall_score(y, predicted, **options),
        "accuracy": metrics.accuracy_score(y, predicted),
        "mcc": metrics.matthews_corrcoef(y, predicted),
    }
    if hasattr(model, "predict_proba"):
        proba = model.predict_proba(x)
        try:
            found["log_loss"] = metrics.log_loss(y, proba, labels=classes)
            scores = proba[:, 1] if len(classes) == 2 else proba
            found["roc_auc"] = metrics.roc_auc_score(
                y, scores, multi_class="ovr", labels=classes if len(classes) > 2 else None
            )
        except ValueError:  # a test split missing a class has no ROC AUC
            pass
    return _finite(found)


def _finite(found: dict[str, Any]) -> dict[str, float | None]:
    """The metrics as JSON numbers: one that is not finite (NaN) is null."""
    return {k: float(v) if math.isfinite(float(v)) else None for k, v in found.items()}


def _write(
    folder: Path,
    model: Any,
    job: Job,
    layout: dict[str, Any],
    classes: list[float],
    encoded: bool,
    table: Table,
) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    storage.save(model, folder, job.algorithm)
    manifest = {
        "task": job.task,
        "algorithm": job.algorithm,
        "features": layout["width"],
        "columns": [c.name for c in table.features],
        "joint": [c.name for c in table.joint],
        "positions": layout["positions"],
        "categories": layout["categories"],
        "classes": classes,
        "encoded_labels": encoded,
        "one_hot": [c for c, step in job.preprocess.items() if step.encode == "one_hot"],
        "imputed": [c for c, step in job.preprocess.items() if IMPUTERS[step.impute or "error"]],
    }
    (folder / MANIFEST_FILE).write_text(json.dumps(manifest), "utf-8")
