"""``preprocess``: per column, how text is encoded and how NULLs are imputed and values
scaled, as scikit-learn transformers over the column's features."""

from __future__ import annotations

import json
from collections.abc import Collection
from dataclasses import dataclass
from typing import Any

from handlers.errors import invalid_argument

ENCODINGS = ("native", "ordinal", "one_hot", "target")
IMPUTERS = {
    "error": None,
    "mean": "mean",
    "median": "median",
    "mode": "most_frequent",
    "zero": "constant",
    "min": "nanmin",
    "max": "nanmax",
}
"""PostgresML's imputations: scikit-learn's ``SimpleImputer`` strategy, or NumPy's function
that gives a feature's value from its training values; ``error`` (as no ``impute``)
refuses a NULL."""
SCALERS = {
    "preserve": None,
    "standard": "StandardScaler",
    "min_max": "MinMaxScaler",
    "max_abs": "MaxAbsScaler",
    "robust": "RobustScaler",
}
KEYS = ("encode", "impute", "scale")


@dataclass(frozen=True, slots=True)
class ColumnSteps:
    encode: str = "native"
    impute: str | None = None
    scale: str = "preserve"


def parse_preprocess(value: Any, columns: list[str]) -> dict[str, ColumnSteps]:
    """Each named column's steps; 22023 for an unknown column, key or value."""
    parsed = json.loads(value) if isinstance(value, str) else value or {}
    if not isinstance(parsed, dict):
        raise invalid_argument("preprocess must be a JSON object of columns")
    found: dict[str, ColumnSteps] = {}
    for column, steps in parsed.items():
        if column not in columns:
            raise invalid_argument(
                f'preprocess names column "{column}", which is not a feature',
                hint="Features: " + ", ".join(columns) + ".",
            )
        if not isinstance(steps, dict) or set(steps) - set(KEYS):
            raise invalid_argument(
                f'preprocess of "{column}" must be an object with keys ' + ", ".join(KEYS)
            )
        encode = str(steps.get("encode", "native"))
        impute = steps.get("impute")
        scale = str(steps.get("scale", "preserve"))
        for what, given, known in (
            ("encode", encode, ENCODINGS),
            ("impute", impute, (None, *IMPUTERS)),
            ("scale", scale, tuple(SCALERS)),
        ):
            if given not in known:
                raise invalid_argument(
                    f'unknown {what} "{given}" for column "{column}"',
                    hint="Use " + ", ".join(str(k) for k in known if k) + ".",
                )
        found[column] = ColumnSteps(encode, impute, scale)
    return found


def transformer(
    steps: dict[str, ColumnSteps], positions: dict[str, list[int]], text: Collection[str]
) -> Any:
    """A ColumnTransformer imputing, target-encoding (scikit-learn's ``TargetEncoder`` over
    the codes of the ``text`` columns) and scaling the named columns' features (the others
    pass through); None when no column asks for any."""
    import numpy as np
    from sklearn import preprocessing
    from sklearn.compose import ColumnTransformer
    from sklearn.impute import SimpleImputer
    from sklearn.pipeline import make_pipeline

    parts: list[tuple[str, Any, list[int]]] = []
    for column, step in steps.items():
        chain: list[Any] = []
        strategy = IMPUTERS[step.impute or "error"]
        if strategy is not None:
            chosen = getattr(np, strategy) if strategy.startswith("nan") else strategy
            chain.append(SimpleImputer(strategy=chosen, fill_value=0.0))
        if step.encode == "target" and column in text:
            chain.append(preprocessing.TargetEncoder(random_state=0))
        scaler = SCALERS[step.scale]
        if scaler is not None:
            chain.append(getattr(preprocessing, scaler)())
        if chain:
            parts.append((f"column_{len(parts)}", make_pipeline(*chain), positions[column]))
    if not parts:
        return None
    return ColumnTransformer(parts, remainder="passthrough")
