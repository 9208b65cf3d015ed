"""Trained classic models are read back only when their file holds trusted types."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import skops.io
from sklearn.linear_model import LinearRegression

from handlers.classic import storage
from handlers.classic.fit import MANIFEST_FILE
from handlers.classic.predict import ClassicPredictor
from handlers.classic.storage import MODEL_FILE
from handlers.errors import PgmlError


class Stranger:
    """A type no model of the proxy's holds."""


def _folder(tmp_path: Path, model: object) -> Path:
    skops.io.dump(model, tmp_path / MODEL_FILE)
    manifest = {"task": "regression", "algorithm": "linear", "features": 1, "classes": []}
    (tmp_path / MANIFEST_FILE).write_text(json.dumps(manifest))
    return tmp_path


def test_a_fitted_estimator_loads_and_predicts(tmp_path: Path) -> None:
    model = LinearRegression().fit([[0.0], [1.0], [2.0]], [1.0, 3.0, 5.0])
    predictor = ClassicPredictor(_folder(tmp_path, model))
    assert predictor.predict([[3.0]]) == pytest.approx([7.0])


def test_a_file_with_other_types_is_refused(tmp_path: Path) -> None:
    with pytest.raises(PgmlError, match="holds types the proxy does not load") as raised:
        ClassicPredictor(_folder(tmp_path, {"model": Stranger()}))
    assert "Stranger" in (raised.value.detail or "")


def test_a_model_with_other_types_is_not_stored(tmp_path: Path) -> None:
    with pytest.raises(PgmlError, match="cannot be stored safely") as raised:
        storage.save({"model": Stranger()}, tmp_path, "stranger")
    assert raised.value.sqlstate == "0A000"
