"""Serving a trained classic model: ``pgml.predict`` and ``pgml.predict_proba`` over
feature arrays, a batch of rows in one call of the estimator (the model file is read as
:mod:`handlers.classic.storage` allows)."""

from __future__ import annotations

import json
import threading
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from handlers.classic import storage
from handlers.classic.algorithms import CLASSIFICATION, DECOMPOSITION
from handlers.classic.fit import MANIFEST_FILE
from handlers.errors import PgmlError, invalid_argument
from handlers.functions import Args, CallContext


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
        self.lock = threading.Lock()

    def memory_bytes(self) -> int | None:
        return None

    def check(self, project: str, features: Sequence[Any]) -> None:
        if len(features) != self.features:
            raise invalid_argument(
                f'project "{project}" takes {self.features} features, not {len(features)}'
            )

    def predict(self, rows: list[list[float]], _stopped: Any = None) -> list[float]:
        import numpy as np

        with self.lock:
            found = np.asarray(self.model.predict(np.array(rows, dtype=float))).ravel()
        if self.labels is not None:
            return [self.labels[int(v)] for v in found]
        return [float(v) for v in found]

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


def _features(values: Sequence[Any]) -> list[float]:
    """A feature array's values in order, a multidimensional one flattened."""
    import numpy as np

    flat = np.array(values, dtype=object).ravel().tolist()
    if any(v is None for v in flat):
        raise PgmlError("22004", "features must not contain NULL")
    return [float(v) for v in flat]


async def _serve(ctx: CallContext, batch: Sequence[Args], operation: str) -> list[Any]:
    groups: dict[str, list[int]] = defaultdict(list)
    for index, (project, _) in enumerate(batch):
        groups[project].append(index)
    results: list[Any] = [None] * len(batch)
    for project, indexes in groups.items():
        _, predictor = await ctx.services.deployed(ctx.database, project)
        if not isinstance(predictor, ClassicPredictor):
            raise PgmlError(
                "0A000",
                f'project "{project}" is {predictor.task}: pgml.{operation} takes its input '
                "as text",
            )
        if (operation == "decompose") != (predictor.task == DECOMPOSITION):
            raise PgmlError(
                "0A000",
                f'project "{project}" is {predictor.task}: '
                + (
                    "pgml.decompose needs a decomposition project"
                    if operation == "decompose"
                    else f"use pgml.decompose, not pgml.{operation}"
                ),
            )
        rows = [_features(batch[i][1]) for i in indexes]
        for row in rows:
            predictor.check(project, row)
        work = {
            "predict": predictor.predict,
            "predict_proba": predictor.probabilities,
            "decompose": predictor.decompose,
        }[operation]
        with ctx.services.using(predictor):  # the predictor: some models are unhashable
            found = await ctx.services.submit(
                ctx, predictor, (id(predictor), operation), work, rows
            )
        for index, value in zip(indexes, found, strict=True):
            results[index] = value
        ctx.check_cancel()
    return results


async def predict_features(ctx: CallContext, batch: Sequence[Args]) -> list[Any]:
    return await _serve(ctx, batch, "predict")


async def decompose(ctx: CallContext, batch: Sequence[Args]) -> list[Any]:
    return await _serve(ctx, batch, "decompose")


async def predict_proba_features(ctx: CallContext, batch: Sequence[Args]) -> list[Any]:
    return await _serve(ctx, batch, "predict_proba")
