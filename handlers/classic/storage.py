"""A fitted model's files.  Scikit-learn's estimators (and the preprocessing before any
model) go into skops' format, written only when every type in it is one the proxy trusts
and read back trusting those types alone (nothing is unpickled); xgboost, lightgbm and
catboost models into their libraries' own formats (:mod:`handlers.classic.boosters`).  So
a file put into ``pgml.files`` by hand cannot make the proxy run code."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from handlers.classic import boosters
from handlers.errors import PgmlError

MODEL_FILE = "model.skops"
TRUSTED_MODULES = ("sklearn.", "numpy.", "scipy.")


class Prepared:
    """A booster behind the preprocessing it was fitted after, as their pipeline was."""

    def __init__(self, prepare: Any, estimator: Any) -> None:
        self.prepare = prepare
        self.estimator = estimator

    def predict(self, x: Any) -> Any:
        return self.estimator.predict(self.prepare.transform(x))

    def predict_proba(self, x: Any) -> Any:
        return self.estimator.predict_proba(self.prepare.transform(x))


def _untrusted(path: Path) -> tuple[list[str], list[str]]:
    """The types skops does not trust by default in the file, and those of them the proxy
    does not trust either."""
    import skops.io

    found: list[str] = skops.io.get_untrusted_types(file=path)
    return found, [t for t in found if not t.startswith(TRUSTED_MODULES)]


def save(model: Any, folder: Path, algorithm: str) -> None:
    """Write ``model`` into ``folder``; 0A000 when it holds a type that could not be read
    back."""
    if algorithm in boosters.FILES:
        prepare, estimator = (model[0], model[-1]) if hasattr(model, "steps") else (None, model)
        boosters.save(estimator, folder, algorithm)
        if prepare is not None:
            _dump(prepare, folder / MODEL_FILE, algorithm)
    else:
        _dump(_storable(model), folder / MODEL_FILE, algorithm)


def _storable(model: Any) -> Any:
    """``model``, with a fitted ``Birch`` (whose tree of nodes skops cannot store) replaced
    by what its ``predict`` consults: a one-nearest-neighbour classifier over its subcluster
    centres and their labels, which assigns every row as ``Birch.predict`` does."""
    from sklearn.cluster import Birch
    from sklearn.neighbors import KNeighborsClassifier

    estimator = model[-1] if hasattr(model, "steps") else model
    if not isinstance(estimator, Birch):
        return model
    nearest = KNeighborsClassifier(n_neighbors=1, algorithm="brute")
    nearest.fit(estimator.subcluster_centers_, estimator.subcluster_labels_)
    if hasattr(model, "steps"):
        model.steps[-1] = (model.steps[-1][0], nearest)
        return model
    return nearest


def _dump(model: Any, path: Path, algorithm: str) -> None:
    import skops.io

    try:
        skops.io.dump(model, path)
    except skops.io.exceptions.UnsupportedTypeException as exc:
        refused = [str(exc)]
    else:
        refused = _untrusted(path)[1]
    if refused:
        raise PgmlError(
            "0A000",
            f"models of algorithm {algorithm} cannot be stored safely yet",
            detail="Not stored: " + ", ".join(refused) + ".",
            hint="Choose another algorithm.",
        )


def load(folder: Path, task: str, algorithm: str, classes: list[float]) -> Any:
    """The model in ``folder``; XX001 when a skops file holds a type the proxy does not
    trust."""
    path = folder / MODEL_FILE
    if algorithm not in boosters.FILES:
        return _load(path)
    estimator = boosters.load(folder, task, algorithm, classes)
    return Prepared(_load(path), estimator) if path.is_file() else estimator


def _load(path: Path) -> Any:
    import skops.io

    found, refused = _untrusted(path)
    if refused:
        raise PgmlError(
            "XX001",
            f"the model file {path.parent.name}/{path.name} holds types the proxy does not load",
            detail="Untrusted: " + ", ".join(refused) + ".",
        )
    return skops.io.load(path, trusted=found)
