"""The toy datasets PostgresML loads by name, from scikit-learn's bundled copies, with
PostgresML's table and column names: ``pgml.load_dataset('iris')`` fills ``pgml.iris``."""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

_MEASURES = (
    "radius",
    "texture",
    "perimeter",
    "area",
    "smoothness",
    "compactness",
    "concavity",
    "concave points",
    "symmetry",
    "fractal dimension",
)
_BREAST_CANCER = (
    [f"mean {m}" for m in _MEASURES]
    + [f"{m} error" for m in _MEASURES]
    + [f"worst {m}" for m in _MEASURES]
)
_WINE = [
    "alcohol",
    "malic_acid",
    "ash",
    "alcalinity_of_ash",
    "magnesium",
    "total_phenols",
    "flavanoids",
    "nonflavanoid_phenols",
    "proanthocyanins",
    "hue",
    "color_intensity",
    "od280/od315_of_diluted_wines",
    "proline",
]
_IRIS = ["sepal_length", "sepal_width", "petal_length", "petal_width"]
_DIABETES = ["age", "sex", "bmi", "bp", "s1", "s2", "s3", "s4", "s5", "s6"]
_LINNERUD = ["chins", "situps", "jumps", "weight", "waist", "pulse"]

COLUMNS: dict[str, list[tuple[str, str]]] = {
    "iris": [(n, "real") for n in _IRIS] + [("target", "integer")],
    "diabetes": [(n, "real") for n in _DIABETES] + [("target", "real")],
    "digits": [("image", "smallint[]"), ("target", "smallint")],
    "breast_cancer": [(n, "real") for n in _BREAST_CANCER] + [("malignant", "boolean")],
    "wine": [(n, "real") for n in _WINE] + [("target", "integer")],
    "linnerud": [(n, "real") for n in _LINNERUD],
}
"""PostgresML's tables, column by column."""


@dataclass(frozen=True)
class BundledDataset:
    """A plan for ``pgml.load_dataset``: the table and its rows as COPY CSV."""

    table_name: str
    columns: list[tuple[str, str]]
    limit: int | None = None
    csv_ready: bool = True

    def csv_rows(self) -> Iterator[bytes]:
        """The rows as one ``COPY ... (FORMAT csv)`` chunk (the datasets are small)."""
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        rows = _rows(self.table_name)
        writer.writerows(rows if self.limit is None else rows[: self.limit])
        yield out.getvalue().encode()


def bundled_dataset(source: str, limit: int | None) -> BundledDataset | None:
    """The plan for one of the bundled datasets by name; None for any other source."""
    name = source.strip().lower()
    if name not in COLUMNS:
        return None
    return BundledDataset(name, COLUMNS[name], limit)


def _rows(name: str) -> list[list[Any]]:
    from sklearn import datasets

    if name == "linnerud":
        found = datasets.load_linnerud()
        return [[*x, *y] for x, y in zip(found.data.tolist(), found.target.tolist(), strict=True)]
    loaded = getattr(datasets, f"load_{name}")()
    data, target = loaded.data, loaded.target.tolist()
    if name == "digits":
        images = (data.reshape(-1, 8, 8).astype(int)).tolist()
        return [[_array(image), label] for image, label in zip(images, target, strict=True)]
    if name == "breast_cancer":
        labels: list[Any] = ["t" if t == 0 else "f" for t in target]
    else:
        labels = target
    by_name = dict(zip(loaded.feature_names, range(data.shape[1]), strict=True))
    order = [by_name[_SOURCE_NAMES.get(n, n)] for n, _ in COLUMNS[name][:-1]]
    rows = zip(data.tolist(), labels, strict=True)
    return [[row[i] for i in order] + [label] for row, label in rows]


_SOURCE_NAMES = {
    "sepal_length": "sepal length (cm)",
    "sepal_width": "sepal width (cm)",
    "petal_length": "petal length (cm)",
    "petal_width": "petal width (cm)",
}
"""scikit-learn's feature names where PostgresML's differ."""


def _array(image: list[list[int]]) -> str:
    return "{" + ",".join("{" + ",".join(str(v) for v in row) + "}" for row in image) + "}"
