"""Serving a trained classic model: ``pgml.predict`` and ``pgml.predict_proba`` over
feature arrays, a batch of rows in one call of the estimator (the model file is read as
:mod:`handlers.classic.storage` allows)."""

from __future__ import annotations

import json
import math
import threading
from collections import defaultdict
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from handlers.classic import storage
from handlers.classic.algorithms import CLASSIFICATION, DECOMPOSITION
from handlers.classic.fit import MANIFEST_FILE
from handlers.errors import PgmlError, invalid_argument
from handlers.files import rights_of
from handlers.signatures import Args, CallContext, Handler


def is_classic(folder: Path) -> bool:
    return (folder / MANIFEST_FILE).is_file()


class ClassicPredictor:
    """A fitted estimator and its manifest (methods block: run them off the event loop)."""

    generates_text = False

    def __init__(self, folder: Path) -> None:
        manifest = json.loads((folder / MANIFEST_FILE).read_text("utf-8"))
        self.task: str = manifest["task"]
        self.features: int = manifest["features"]
        classes: list[float] = manifest.get("classes", [])
        self.model: Any = storage.load(folder, self.task, manifest.get("algorithm", ""), classes)
        self.labels = classes if manifest.get("encoded_labels") else None
        """The classes, when the model predicts their indexes."""
        self.columns: list[str] = manifest.get("columns", [])
        self.positions: dict[str, list[int]] = manifest.get("positions", {})
        self.categories: dict[str, list[str]] = manifest.get("categories", {})
        self.one_hot: list[str] = manifest.get("one_hot", [])
        self.joint: list[str] = manifest.get("joint", [])
        """A joint model's label columns (it predicts one value for each)."""
        self.imputed = frozenset(
            position
            for name in manifest.get("imputed", [])
            for position in self.positions.get(name, [])
        )
        """The feature positions whose NULLs the model imputes as it did in training."""
        self.lock = threading.Lock()

    def encode_row(self, project: str, record: Any) -> list[float]:
        """A whole row's features: its fields named as the snapshot's feature columns (a
        label among them left out), or else its fields in their order, encoded as in
        training (text as its category's code, or one feature a category)."""
        if not isinstance(record, dict):
            raise invalid_argument(f"pgml.predict of a row takes a row, not {record!r}")
        if set(self.columns) <= record.keys():
            fields = [record[name] for name in self.columns]
        elif len(record) == len(self.columns):
            fields = list(record.values())
        else:
            raise invalid_argument(
                f'project "{project}" takes rows of {len(self.columns)} columns '
                f"({', '.join(self.columns)}), not {len(record)}"
            )
        features: list[float] = []
        for name, value in zip(self.columns, fields, strict=True):
            known = self.categories.get(name)
            if value is None:
                features.extend(self._missing(name, known))
                continue
            if known is None:
                values = value if isinstance(value, list) else [value]
                features.extend(self.features_of(values, start=len(features)))
                continue
            if str(value) not in known:
                raise invalid_argument(
                    f'column "{name}" of the row has "{value}", a value training never saw'
                )
            code = known.index(str(value))
            if len(self.positions[name]) > 1 or name in self.one_hot:
                features.extend(float(i == code) for i in range(len(known)))
            else:
                features.append(float(code))
        return features

    def _missing(self, name: str, known: list[str] | None) -> list[float]:
        """A NULL column's features: as training encoded it (a one-hot column as no
        category; else NaN, for the model's imputer to fill), or 22004 where training
        imputed nothing."""
        positions = self.positions.get(name, [])
        if known is not None and (len(positions) > 1 or name in self.one_hot):
            return [0.0] * len(known)
        if positions and all(p in self.imputed for p in positions):
            return [math.nan] * len(positions)
        raise PgmlError(
            "22004",
            f'column "{name}" of the row is NULL',
            hint=f'Train with preprocess => \'{{"{name}": {{"impute": "mean"}}}}\' to impute it.',
        )

    def features_of(self, values: Sequence[Any], start: int = 0, wrap: bool = False) -> list[float]:
        """A feature array's values in order (a multidimensional one flattened), the
        first being feature ``start`` (``wrap``: many rows' features one after another);
        a NULL is NaN where the model imputes that feature, else 22004."""
        import numpy as np

        if values and None not in values and not isinstance(values[0], list):  # one row
            return list(map(float, values))
        flat = np.array(values, dtype=object).ravel().tolist()
        if None not in flat:
            return [float(v) for v in flat]
        found: list[float] = []
        for index, value in enumerate(flat):
            position = index % max(self.features, 1) if wrap else start + index
            if value is not None:
                found.append(float(value))
            elif position in self.imputed:
                found.append(math.nan)
            else:
                raise PgmlError("22004", "features must not contain NULL")
        return found

    def memory_bytes(self) -> int | None:
        return None

    def check(self, project: str, features: Sequence[Any]) -> None:
        if len(features) != self.features:
            raise invalid_argument(
                f'project "{project}" takes {self.features} features, not {len(features)}'
            )

    def predict(self, rows: list[list[float]], _stopped: Any = None) -> list[float]:
        """Each row's prediction; a decomposition's first component, as PostgresML gives."""
        import numpy as np

        if self.task == DECOMPOSITION:
            return [row[0] for row in self.decompose(rows)]
        with self.lock:
            found = np.asarray(self.model.predict(np.array(rows, dtype=float))).ravel()
        if self.labels is not None:
            return [self.labels[int(v)] for v in found]
        return [float(v) for v in found]

    def predict_joint(self, rows: list[list[float]], _stopped: Any = None) -> list[list[float]]:
        import numpy as np

        with self.lock:
            found = np.asarray(self.model.predict(np.array(rows, dtype=float)))
        return [[float(v) for v in row] for row in found.reshape(len(rows), len(self.joint))]

    def decompose(self, rows: list[list[float]], _stopped: Any = None) -> list[list[float]]:
        import numpy as np

        with self.lock:
            found = self.model.transform(np.array(rows, dtype=float))
            return [[float(v) for v in row] for row in found]

    def probabilities(self, rows: list[list[float]], _stopped: Any = None) -> list[list[float]]:
        import numpy as np

        if self.task != CLASSIFICATION or not hasattr(self.model, "predict_proba"):
            raise PgmlError(
                "0A000",
                "pgml.predict_proba needs a classification model that gives probabilities",
                hint="Train it with an algorithm that has predict_proba (linear, random_forest, "
                "...), or use pgml.predict.",
            )
        with self.lock:
            found: list[list[float]] = self.model.predict_proba(np.array(rows, dtype=float))
            return [[float(p) for p in row] for row in found]


Rows = Callable[[ClassicPredictor, str, Any], list[list[float]]]
"""One call's argument as the rows of features it asks about."""


def _one_array(predictor: ClassicPredictor, project: str, values: Any) -> list[list[float]]:
    row = predictor.features_of(values)
    predictor.check(project, row)
    return [row]


def _flattened(predictor: ClassicPredictor, project: str, values: Any) -> list[list[float]]:
    """``pgml.predict_batch``'s array: the features of many rows one after another."""
    flat = predictor.features_of(values, wrap=True)
    width = predictor.features
    if len(flat) % width:
        raise invalid_argument(
            f'project "{project}" takes {width} features a row: {len(flat)} values are not '
            "a whole number of rows"
        )
    return [flat[i : i + width] for i in range(0, len(flat), width)]


def _one_row(predictor: ClassicPredictor, project: str, record: Any) -> list[list[float]]:
    row = predictor.encode_row(project, record)
    predictor.check(project, row)
    return [row]


async def _serve(
    ctx: CallContext, batch: Sequence[Args], operation: str, rows_of: Rows, by_id: bool
) -> list[Any]:
    """Each call's results, one per row it asks about; every call of a model in one
    batch of the model's.  The model is the project's deployed one, or (``by_id``) the
    model whose id the call names."""
    groups: dict[Any, list[int]] = defaultdict(list)
    for index, (named, _) in enumerate(batch):
        groups[named].append(index)
    results: list[Any] = [None] * len(batch)
    for named, indexes in groups.items():
        project, predictor = await _predictor(ctx, named, by_id)
        if not isinstance(predictor, ClassicPredictor):
            raise PgmlError(
                "0A000",
                f'project "{project}" is {predictor.task}: pgml.{operation} takes its input '
                "as text",
            )
        if operation == "decompose" and predictor.task != DECOMPOSITION:
            raise PgmlError(
                "0A000",
                f'project "{project}" is {predictor.task}: '
                "pgml.decompose needs a decomposition project",
            )
        if predictor.task == DECOMPOSITION and operation not in ("decompose", "predict"):
            raise PgmlError(
                "0A000",
                f'project "{project}" is {predictor.task}: '
                f"use pgml.decompose, not pgml.{operation}",
            )
        if (operation == "predict_joint") != bool(predictor.joint):
            raise PgmlError(
                "0A000",
                f'project "{project}" has several labels: use pgml.predict_joint'
                if predictor.joint
                else f'project "{project}" has one label: use pgml.predict',
            )
        calls = [rows_of(predictor, project, batch[i][1]) for i in indexes]
        work = {
            "predict": predictor.predict,
            "predict_joint": predictor.predict_joint,
            "predict_proba": predictor.probabilities,
            "decompose": predictor.decompose,
        }[operation]
        with ctx.services.using(predictor):  # the predictor: some models are unhashable
            found = iter(
                await ctx.services.submit(
                    ctx, predictor, (id(predictor), operation), work, [r for c in calls for r in c]
                )
            )
        for index, rows in zip(indexes, calls, strict=True):
            results[index] = [next(found) for _ in rows]
        ctx.check_cancel()
    return results


async def _predictor(ctx: CallContext, named: Any, by_id: bool) -> tuple[str, Any]:
    """The project's name and the predictor a call names."""
    if by_id:
        served = await ctx.services.served(ctx.database, int(named))
        loaded = await ctx.services.loaded(
            ctx.database, served, rights=rights_of(ctx), stopped=ctx.cancelled
        )
        return served.project.name, loaded
    _, loaded = await ctx.services.deployed(
        ctx.database, str(named), rights=rights_of(ctx), stopped=ctx.cancelled
    )
    return str(named), loaded


def _handler(operation: str, rows_of: Rows, *, by_id: bool = False, sets: bool = False) -> Handler:
    """The handler of one of PostgresML's prediction functions: one result per call, or
    (``sets``) one row per row asked about."""

    async def handler(ctx: CallContext, batch: Sequence[Args]) -> list[Any]:
        found = await _serve(ctx, batch, operation, rows_of, by_id)
        return found if sets else [r[0] for r in found]

    return handler


predict_features = _handler("predict", _one_array)
predict_row = _handler("predict", _one_row)
predict_joint = _handler("predict_joint", _one_array)
predict_batch = _handler("predict", _flattened, sets=True)
predict_proba_features = _handler("predict_proba", _one_array)
decompose = _handler("decompose", _one_array)
predict_model_features = _handler("predict", _one_array, by_id=True)
predict_model_row = _handler("predict", _one_row, by_id=True)
predict_model_joint = _handler("predict_joint", _one_array, by_id=True)
predict_model_batch = _handler("predict", _flattened, by_id=True, sets=True)
predict_model_proba = _handler("predict_proba", _one_array, by_id=True)
