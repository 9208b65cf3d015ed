"""A relation's rows as a feature matrix and a label vector.

The rows are read in the caller's own session (their privileges apply) with ``COPY ... TO
STDOUT``: the label first, then every other column; as CSV read by pyarrow where every
column is a number or a boolean, else one JSON array a row.  Numbers and booleans are
features as they are, arrays are flattened, text is encoded as the column's ``preprocess``
asks (ordinal codes of its sorted values unless ``one_hot``).
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
    columns: list[Any] = field(default_factory=list)
    """Each feature column's values in row order: a list (None for NULL), or for a number
    or boolean column an array of floats (NaN for NULL)."""
    rows: int = 0
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
    if not joint and all(c.category in (NUMERIC, BOOLEAN) for c in [*labels, *features]):
        await _read_numbers(session, table)
        return table
    first = (
        f"json_build_array({', '.join(quote_ident(c.name) for c in joint)})"
        if joint
        else "NULL"
        if label is None
        else quote_ident(label.name)
    )
    selected = ", ".join([first, *(quote_ident(c.name) for c in features)])
    digest = hashlib.sha256()
    rows: list[list[Any]] = []
    async for chunk in session.copy_out(
        f"COPY (SELECT json_build_array({selected})::text FROM {name}) TO STDOUT (FORMAT csv)"
    ):
        digest.update(chunk)
        rows.extend(json.loads(text) for (text,) in csv.reader(io.StringIO(chunk.decode("utf-8"))))
    table.y = [row[0] for row in rows]
    table.columns = [[row[i] for row in rows] for i in range(1, len(features) + 1)]
    table.rows = len(rows)
    table.checksum = "sha256:" + digest.hexdigest()
    return table


async def _read_numbers(session: SessionSQL, table: Table) -> None:
    """A relation of numbers and booleans, as CSV that pyarrow reads: each feature column
    an array of floats, the label's values a list."""
    import pyarrow as pa
    from pyarrow import csv as arrow_csv

    label = [] if table.label is None else [table.label]
    read_columns = [*label, *table.features]
    names = [f"c{i}" for i in range(len(read_columns))]
    kinds = {
        n: pa.bool_() if c.category == BOOLEAN else pa.float64()
        for n, c in zip(names, read_columns, strict=True)
    }
    selected = ", ".join(quote_ident(c.name) for c in read_columns)
    digest = hashlib.sha256()
    chunks: list[bytes] = []
    async for chunk in session.copy_out(
        f"COPY (SELECT {selected} FROM {table.relation}) TO STDOUT (FORMAT csv)"
    ):
        digest.update(chunk)
        chunks.append(chunk)
    table.checksum = "sha256:" + digest.hexdigest()
    if not chunks:  # no rows
        table.columns = [[] for _ in table.features]
        return
    read = arrow_csv.read_csv(
        pa.py_buffer(b"".join(chunks)),
        read_options=arrow_csv.ReadOptions(column_names=names),
        parse_options=arrow_csv.ParseOptions(ignore_empty_lines=False),  # one NULL column
        convert_options=arrow_csv.ConvertOptions(
            column_types=kinds,
            null_values=[""],  # an unquoted empty field: COPY's NULL in CSV
            true_values=["t"],
            false_values=["f"],
            quoted_strings_can_be_null=False,
        ),
    )
    table.rows = read.num_rows
    table.y = read.column(names[0]).to_pylist() if label else [None] * read.num_rows
    table.columns = [read.column(n).cast(pa.float64()).to_numpy() for n in names[len(label) :]]
