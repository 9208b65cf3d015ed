"""The data a tune trains on: read from the relation in the caller's own session with
``COPY ... TO STDOUT``, a batch at a time, into an Arrow file in the training folder, and
checked on the way.

The proxy holds one batch of rows at a time, whatever the size of the table; the training
worker opens the file memory-mapped.  With ``materialize_snapshot`` the relation is first
copied into a table in schema ``pgml`` (in the caller's session and transaction, so the
caller's privileges apply) and the snapshot read from that copy.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from handlers.artifact import sorted_labels
from handlers.errors import PgmlError, invalid_argument
from handlers.loading import quote_ident
from handlers.signatures import SessionSQL
from handlers.tuning.split import count_test_rows

NUMERIC_CATEGORIES = frozenset({"N", "B"})
"""pg_type.typcategory of labels predicted as REAL (numbers and booleans)."""
TEXT_CATEGORY = "S"
SNAPSHOT_FILE = "snapshot.arrow"
INPUT, TARGET = "x", "y"
"""The snapshot file's columns: the input text (none for text-generation) and the target."""
BATCH_BYTES = 512 * 1024
"""COPY data gathered before it is converted and written (about 2 ms of work a batch)."""

Run = Callable[..., Awaitable[Any]]
"""Runs blocking work off the event loop (``Services.run``)."""


@dataclass(frozen=True, slots=True)
class Column:
    name: str
    type: str
    category: str


@dataclass(slots=True)
class Snapshot:
    """A relation's rows written to ``file``: their count, checksum, labels and split sizes."""

    relation: str
    y_column: str
    x_column: str | None
    columns: list[Column]
    file: Path
    rows: int = 0
    test_rows: int = 0
    checksum: str = ""
    """``sha256:`` of the rows as ``COPY ... (FORMAT csv)`` wrote them, in order."""
    labels: list[str] = field(default_factory=list)
    label_type: str = "text"
    """``real`` when the label column is numeric or boolean, else ``text``."""
    materialized: str | None = None
    """The table the snapshot was read from when it is kept (renamed once recorded)."""

    @property
    def train_rows(self) -> int:
        return self.rows - self.test_rows

    @property
    def analysis(self) -> dict[str, Any]:
        found: dict[str, Any] = {
            "rows": self.rows,
            "train_rows": self.train_rows,
            "test_rows": self.test_rows,
        }
        if self.labels:
            found["labels"] = self.labels
            found["label_type"] = self.label_type
        return found


async def relation_columns(session: SessionSQL, relation: str) -> tuple[str, list[Column]]:
    """The relation's name as PostgreSQL prints it and its columns, in order."""
    rows = await session.run_sql(
        "SELECT to_regclass($1)::text, a.attname, format_type(a.atttypid, a.atttypmod), "
        "t.typcategory FROM (SELECT 1) AS one "
        "LEFT JOIN pg_attribute AS a ON a.attrelid = to_regclass($1) "
        "AND a.attnum > 0 AND NOT a.attisdropped "
        "LEFT JOIN pg_type AS t ON t.oid = a.atttypid ORDER BY a.attnum",
        [relation],
    )
    if not rows or rows[0][0] is None:
        raise PgmlError("42P01", f'relation "{relation}" does not exist')
    return rows[0][0], [Column(r[1], r[2], r[3]) for r in rows if r[1] is not None]


def choose_columns(
    task: str, relation: str, columns: list[Column], y_column: str
) -> tuple[Column | None, Column]:
    """The input column (none for text-generation) and the target column."""
    names = [c.name for c in columns]
    target = next((c for c in columns if c.name == y_column), None)
    if target is None:
        raise PgmlError(
            "42703",
            f'column "{y_column}" does not exist in relation "{relation}"',
            hint="Columns: " + ", ".join(names) + ".",
        )
    if task == "text-classification":
        if target.category not in NUMERIC_CATEGORIES | {TEXT_CATEGORY}:
            raise invalid_argument(
                f'label column "{y_column}" is {target.type}; labels must be numbers, '
                "booleans or text"
            )
    elif target.category != TEXT_CATEGORY:
        raise invalid_argument(f'column "{y_column}" is {target.type}, not text')
    if task == "text-generation":
        return None, target
    inputs = [c for c in columns if c.name != y_column]
    if len(inputs) != 1:
        raise invalid_argument(
            f'{task} takes exactly one input column besides "{y_column}"; '
            f'relation "{relation}" has {len(inputs)}',
            detail="Columns: " + ", ".join(names) + ".",
            hint=f"Create a view with one text column and {y_column}, and tune on the view.",
        )
    if inputs[0].category != TEXT_CATEGORY:
        raise invalid_argument(
            f'input column "{inputs[0].name}" is {inputs[0].type}, not text',
            hint=f"Create a view that casts it: SELECT {inputs[0].name}::text, ...",
        )
    return inputs[0], target


async def read_snapshot(
    session: SessionSQL,
    run: Run,
    task: str,
    relation: str,
    y_column: str,
    test_size: float,
    folder: Path,
    materialize: bool = False,
) -> Snapshot:
    """Copy the relation's rows, in the relation's own order, into ``folder``; check them."""
    name, columns = await relation_columns(session, relation)
    x, y = choose_columns(task, relation, columns, y_column)
    source = name
    materialized = None
    if materialize:
        materialized = f"pgml.{quote_ident('snapshot_pending_' + uuid.uuid4().hex[:16])}"
        await session.run_sql(f"CREATE TABLE {materialized} AS SELECT * FROM {name}")
        source = materialized
    selected = [y] if x is None else [x, y]
    names = [INPUT, TARGET] if x is not None else [TARGET]
    writer: SnapshotWriter = await run(
        SnapshotWriter, folder / SNAPSHOT_FILE, names, task == "text-classification"
    )
    sql = (
        "COPY (SELECT "
        + ", ".join(f"{quote_ident(c.name)}::text" for c in selected)
        + f" FROM {source}) TO STDOUT WITH (FORMAT csv, ENCODING 'UTF8')"
    )
    try:
        await _copy(session, sql, writer)
    finally:
        writer.close()
    snapshot = Snapshot(name, y.name, None if x is None else x.name, columns, writer.path)
    snapshot.materialized = materialized
    snapshot.rows = writer.rows
    snapshot.checksum = writer.checksum
    for column, nulls in reversed(list(zip(selected, writer.nulls, strict=True))):
        if nulls:
            raise PgmlError(
                "22004",
                f'column "{column.name}" has {nulls} NULL value{"s" if nulls > 1 else ""}',
                hint=f"Filter them out in a view: WHERE {quote_ident(column.name)} IS NOT NULL.",
            )
    if not writer.rows:
        raise invalid_argument(f'relation "{relation}" has no rows to train on')
    if task == "text-classification":
        snapshot.label_type = "real" if y.category in NUMERIC_CATEGORIES else "text"
        snapshot.labels = sorted_labels(writer.labels, snapshot.label_type)
        if len(snapshot.labels) < 2:
            raise invalid_argument(
                f'label column "{y.name}" has a single class ({snapshot.labels[0]})',
                hint="Classification needs at least two labels.",
            )
    snapshot.test_rows = count_test_rows(writer.rows, test_size)
    return snapshot


async def _copy(session: SessionSQL, sql: str, writer: SnapshotWriter) -> None:
    """Gather CopyData (one row each) into batches and write each batch as it fills.

    The writer runs here, on the event loop, a few milliseconds a batch (Arrow's C++ CSV
    reader): the client's upstream socket is read only while this loop waits for rows, so
    at most one read's worth of rows is ever queued.  Handed to a thread, the socket would
    be read on while the thread writes, and the rows would pile up in the proxy.
    """
    batch: list[bytes] = []
    size = 0
    rows = session.copy_out(sql)
    try:
        async for row in rows:
            batch.append(row)
            size += len(row)
            if size >= BATCH_BYTES:
                writer.write(b"".join(batch))
                batch, size = [], 0
    finally:
        close = getattr(rows, "aclose", None)
        if close is not None:
            await close()  # stopped early: the rest of the copy is read and dropped
    if batch:
        writer.write(b"".join(batch))


class SnapshotWriter:
    """Rows in PostgreSQL's CSV (whole rows, a batch at a time) into an Arrow IPC stream
    file of text columns, with the row count, NULLs per column, the distinct labels and a
    checksum on the way.  Creating one imports pyarrow (run it off the event loop)."""

    def __init__(self, path: Path, names: list[str], collect_labels: bool) -> None:
        import pyarrow as pa

        self.path = path
        self.names = names
        self.schema = pa.schema([(n, pa.string()) for n in names])
        self.rows = 0
        self.nulls = [0] * len(names)
        self.labels: set[str] = set()
        self._collect_labels = collect_labels
        self._hash = hashlib.sha256()
        self._writer: Any = pa.ipc.new_stream(str(path), self.schema)

    @property
    def checksum(self) -> str:
        return "sha256:" + self._hash.hexdigest()

    def write(self, data: bytes) -> None:
        import pyarrow.compute as pc
        from pyarrow import csv

        self._hash.update(data)
        table = csv.read_csv(
            _buffer(data),
            read_options=csv.ReadOptions(
                column_names=self.names, block_size=len(data) + 1, use_threads=False
            ),
            parse_options=csv.ParseOptions(newlines_in_values=True),
            convert_options=csv.ConvertOptions(
                column_types=dict.fromkeys(self.names, self.schema.field(0).type),
                null_values=[""],
                strings_can_be_null=True,
                quoted_strings_can_be_null=False,
            ),
        )
        self.rows += table.num_rows
        for index, column in enumerate(table.columns):
            self.nulls[index] += column.null_count
        if self._collect_labels:
            self.labels.update(
                v for v in pc.unique(table.column(TARGET)).to_pylist() if v is not None
            )
        self._writer.write_table(table)

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None


def _buffer(data: bytes) -> Any:
    import pyarrow as pa

    return pa.BufferReader(data)
