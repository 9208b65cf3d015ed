"""A relation's rows as a feature matrix and a label vector.

The rows are read in the caller's own session (their privileges apply) with ``COPY ... TO
STDOUT``, one JSON array a row: the label first, then every other column.  Numbers and
booleans are features as they are, arrays are flattened, text is encoded as the column's
``preprocess`` asks (ordinal codes of its sorted values unless ``one_hot``).
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
from dataclasses import dataclass, field
from typing import Any

from handlers.errors import PgmlError, invalid_argument
from handlers.loading import quote_ident
from handlers.signatures import SessionSQL
from handlers.tuning.snapshot import Column, relation_columns

NUMERIC, BOOLEAN, ARRAY, TEXT = "N", "B", "A", "S"
FEATURE_CATEGORIES = frozenset({NUMERIC, BOOLEAN, ARRAY, TEXT})


@dataclass(slots=True)
class Table:
    """The rows read: the label's values (none for clustering) and each feature column's,
    in the relation's order."""

    relation: str
    label: Column | None
    features: list[Column]
    y: list[Any] = field(default_factory=list)
    x: list[list[Any]] = field(default_factory=list)
    checksum: str = ""
    joint: list[Column] = field(default_factory=list)
    """A joint model's label columns (``label`` is the first): each of ``y`` is a list."""


async def read_table(session: SessionSQL, relation: str, y_column: str | list[str] | None) -> Table:
    """Every row of ``relation``: the label column ``y_column`` (or the label columns of a
    joint model, a list) and the other columns."""
    name, columns = await relation_columns(session, relation)
    wanted = y_column if isinstance(y_column, list) else [] if y_column is None else [y_column]
    labels = []
    for wanted_name in wanted:
        label = next((c for c in columns if c.name == wanted_name), None)
        if label is None:
            raise PgmlError(
                "42703",
                f'column "{wanted_name}" does not exist in relation "{relation}"',
                hint="Columns: " + ", ".join(c.name for c in columns) + ".",
            )
        if label.category not in (NUMERIC, BOOLEAN):
            raise invalid_argument(
                f'label column "{wanted_name}" is {label.type}; labels must be numbers or booleans'
            )
        labels.append(label)
    label = labels[0] if labels else None
    features = [c for c in columns if c.name not in wanted]
    for column in features:
        if column.category not in FEATURE_CATEGORIES:
            raise invalid_argument(
                f'column "{column.name}" is {column.type}; features must be numbers, booleans, '
                "arrays of numbers or text",
                hint="Train on a view that leaves it out or casts it.",
            )
    if not features:
        raise invalid_argument(f'relation "{relation}" has no feature columns')
    joint = labels if isinstance(y_column, list) else []
    table = Table(name, label, features, joint=joint)
    first = (
        f"json_build_array({', '.join(quote_ident(c.name) for c in joint)})"
        if joint
        else "NULL"
        if label is None
        else quote_ident(label.name)
    )
    selected = ", ".join([first, *(quote_ident(c.name) for c in features)])
    digest = hashlib.sha256()
    async for chunk in session.copy_out(
        f"COPY (SELECT json_build_array({selected})::text FROM {name}) TO STDOUT (FORMAT csv)"
    ):
        digest.update(chunk)
        for (text,) in csv.reader(io.StringIO(chunk.decode("utf-8"))):
            values = json.loads(text)
            table.y.append(values[0])
            table.x.append(values[1:])
    table.checksum = "sha256:" + digest.hexdigest()
    return table
