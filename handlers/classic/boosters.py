"""xgboost, lightgbm and catboost models in their libraries' own file formats (JSON, text and
CatBoost's binary format): none of them can hold code, so a file put into ``pgml.files`` by
hand cannot make the proxy run any."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from handlers.classic.algorithms import CLASSIFICATION, estimator_class

FILES = {
    "xgboost": "model.xgboost.json",
    "xgboost_random_forest": "model.xgboost.json",
    "lightgbm": "model.lightgbm.txt",
    "catboost": "model.catboost.cbm",
}
"""Each algorithm's model file."""

ENCODED_LABELS = frozenset({"xgboost", "xgboost_random_forest"})
"""Classifiers that need the classes as 0 .. n-1: they are fitted on the classes' indexes."""


def save(estimator: Any, folder: Path, algorithm: str) -> None:
    path = folder / FILES[algorithm]
    if algorithm == "lightgbm":
        estimator.booster_.save_model(path)
    elif algorithm == "catboost":
        estimator.save_model(str(path), format="cbm")
    else:
        estimator.save_model(path)


def load(folder: Path, task: str, algorithm: str, classes: list[float]) -> Any:
    """The fitted estimator, as the library restores it (a lightgbm booster wrapped to
    predict as its scikit-learn estimator does).  xgboost and lightgbm predict on one
    thread: their OpenMP threads spin for a while after every batch, taking the cores from
    the event loop and PostgreSQL."""
    path = folder / FILES[algorithm]
    if algorithm == "lightgbm":
        import lightgbm

        return LightGBMModel(lightgbm.Booster(model_file=path), task, classes)
    if algorithm == "catboost":
        estimator = estimator_class(task, algorithm)()
        estimator.load_model(str(path), format="cbm")
        return estimator
    estimator = estimator_class(task, algorithm)(n_jobs=1)
    estimator.load_model(path)
    return estimator


class LightGBMModel:
    """A lightgbm booster read from its text file, predicting as ``LGBMRegressor`` and
    ``LGBMClassifier`` do (a classifier's classes are the sorted labels)."""

    def __init__(self, booster: Any, task: str, classes: list[float]) -> None:
        self.booster = booster
        self.task = task
        self.classes = classes

    def predict(self, x: Any) -> Any:
        import numpy as np

        if self.task != CLASSIFICATION:
            return self.booster.predict(x, num_threads=1)
        return np.array(self.classes)[np.argmax(self.predict_proba(x), axis=1)]

    def predict_proba(self, x: Any) -> Any:
        import numpy as np

        found = self.booster.predict(x, num_threads=1)
        return np.vstack((1.0 - found, found)).T if found.ndim == 1 else found
