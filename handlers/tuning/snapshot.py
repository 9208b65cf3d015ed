"""The data a tune trains on: read from the relation in the caller's own session, checked,
and split into train and test rows."""

from __future__ import annotations

import math
import random
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

from handlers.errors import PgmlError, invalid_argument
from handlers.functions import SessionSQL
from handlers.loading import quote_ident

NUMERIC_CATEGORIES = frozenset({"N", "B"})
"""pg_type.typcategory of labels predicted as REAL (numbers and booleans)."""
TEXT_CATEGORY = "S"


@dataclass(frozen=True, slots=True)
class Column:
    name: str
    type: str
    category: str


@dataclass(slots=True)
class Snapshot:
    """Rows of (input text, target) split for training; ``labels`` for classification."""

    relation: str
    y_column: str
    x_column: str | None
    columns: list[Column]
    train: list[tuple[str, str]] = field(default_factory=list)
    test: list[tuple[str, str]] = field(default_factory=list)
    labels: list[str] = field(default_factory=list)
    label_type: str = "text"
    """``real`` when the label column is numeric or boolean, else ``text``."""

    @property
    def analysis(self) -> dict[str, Any]:
        found: dict[str, Any] = {
            "rows": len(self.train) + len(self.test),
            "train_rows": len(self.train),
            "test_rows": len(self.test),
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
    task: str,
    relation: str,
    y_column: str,
    test_size: float,
    sampling: str,
    seed: int,
) -> Snapshot:
    """Read, check and split the relation's rows, in the relation's own order."""
    name, columns = await relation_columns(session, relation)
    x, y = choose_columns(task, relation, columns, y_column)
    selected = [y] if x is None else [x, y]
    rows = await session.run_sql(
        "SELECT " + ", ".join(f"{quote_ident(c.name)}::text" for c in selected) + f" FROM {name}"
    )
    snapshot = Snapshot(name, y.name, None if x is None else x.name, columns)
    pairs = [(r[0], r[0]) for r in rows] if x is None else [(r[0], r[1]) for r in rows]
    _check_nulls(pairs, selected)
    if not pairs:
        raise invalid_argument(f'relation "{relation}" has no rows to train on')
    if task == "text-classification":
        snapshot.label_type = "real" if y.category in NUMERIC_CATEGORIES else "text"
        snapshot.labels = sorted_labels({p[1] for p in pairs}, snapshot.label_type)
        if len(snapshot.labels) < 2:
            raise invalid_argument(
                f'label column "{y.name}" has a single class ({snapshot.labels[0]})',
                hint="Classification needs at least two labels.",
            )
    snapshot.train, snapshot.test = split(pairs, test_size, sampling, seed)
    return snapshot


def _check_nulls(pairs: list[tuple[str, str]], selected: list[Column]) -> None:
    for index, column in enumerate(reversed(selected)):
        position = 1 - index if len(selected) == 2 else 0
        nulls = sum(1 for p in pairs if p[position] is None)
        if nulls:
            raise PgmlError(
                "22004",
                f'column "{column.name}" has {nulls} NULL value{"s" if nulls > 1 else ""}',
                hint=f"Filter them out in a view: WHERE {quote_ident(column.name)} IS NOT NULL.",
            )


def sorted_labels(labels: set[str], label_type: str) -> list[str]:
    """Numeric labels in numeric order (booleans false, true), text labels in text order."""
    if label_type == "real":
        return sorted(labels, key=_label_number)
    return sorted(labels)


def _label_number(label: str) -> float:
    if label in ("true", "false"):
        return 1.0 if label == "true" else 0.0
    return float(label)


def label_value(label: str, label_type: str) -> float | str:
    """What ``predict`` returns for a label: REAL for numeric labels, else the text."""
    return _label_number(label) if label_type == "real" else label


def split(
    pairs: list[tuple[str, str]], test_size: float, sampling: str, seed: int
) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """Train and test rows; ``test_size`` a fraction or a count (see SPEC §4)."""
    total = len(pairs)
    count = round(total * test_size) if test_size < 1 else int(test_size)
    if count >= total:
        raise invalid_argument(
            f"test_size {test_size:g} leaves no training rows: the relation has {total}",
            hint="Both splits need at least one row.",
        )
    if count < 1:
        raise invalid_argument(
            f"test_size {test_size:g} leaves {count} test and {total - count} training rows "
            f"of {total}",
            hint="Both splits need at least one row.",
        )
    if sampling == "first":
        return pairs[count:], pairs[:count]
    if sampling == "last":
        return pairs[: total - count], pairs[total - count :]
    rng = random.Random(seed)
    if sampling == "random":
        order = list(range(total))
        rng.shuffle(order)
        chosen = set(order[:count])
    else:
        chosen = _stratified(pairs, count, rng)
    train = [p for i, p in enumerate(pairs) if i not in chosen]
    test = [p for i, p in enumerate(pairs) if i in chosen]
    return train, test


def _stratified(pairs: list[tuple[str, str]], count: int, rng: random.Random) -> set[int]:
    """Test rows drawn per label in proportion to its share, largest remainders first."""
    by_label: dict[str, list[int]] = defaultdict(list)
    for index, (_, label) in enumerate(pairs):
        by_label[label].append(index)
    shares = {k: count * len(v) / len(pairs) for k, v in by_label.items()}
    quotas = {k: math.floor(s) for k, s in shares.items()}
    for label in sorted(shares, key=lambda k: quotas[k] - shares[k])[
        : count - sum(quotas.values())
    ]:
        quotas[label] += 1
    chosen: set[int] = set()
    for label, indexes in sorted(by_label.items()):
        shuffled = list(indexes)
        rng.shuffle(shuffled)
        chosen.update(shuffled[: min(quotas[label], len(shuffled))])
    return chosen
