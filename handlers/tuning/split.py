"""The train/test split of a snapshot, from row numbers and labels only (see SPEC §4).

The proxy checks the sizes (:func:`count_test_rows`) once it knows the row count; the training
worker draws the rows (:func:`split_rows`) from the snapshot file, so that neither holds
the rows' text for it.
"""

from __future__ import annotations

import math
import random
from collections import defaultdict
from collections.abc import Sequence

from handlers.errors import invalid_argument


def count_test_rows(total: int, test_size: float) -> int:
    """Test rows of ``total``: ``test_size`` a fraction or a count; both splits non-empty."""
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
    return count


def split_rows(
    total: int,
    test_size: float,
    sampling: str,
    seed: int,
    labels: Sequence[int] | None = None,
) -> tuple[list[int], list[int]]:
    """Row numbers of the train and test splits, each in the relation's order.

    ``random`` shuffles the row numbers with ``random.Random(seed)`` and tests the first
    ``count_test_rows`` of them; ``stratified`` (``labels``: each row's class id) does the same
    per label, in proportion to its share, largest remainders first.
    """
    count = count_test_rows(total, test_size)
    if sampling == "first":
        return list(range(count, total)), list(range(count))
    if sampling == "last":
        return list(range(total - count)), list(range(total - count, total))
    rng = random.Random(seed)
    if sampling == "random":
        order = list(range(total))
        rng.shuffle(order)
        chosen = set(order[:count])
    else:
        if labels is None or len(labels) != total:
            raise ValueError("stratified sampling needs every row's label")
        chosen = _stratified(labels, count, rng)
    train = [i for i in range(total) if i not in chosen]
    return train, sorted(chosen)


def _stratified(labels: Sequence[int], count: int, rng: random.Random) -> set[int]:
    by_label: dict[int, list[int]] = defaultdict(list)
    for index, label in enumerate(labels):
        by_label[label].append(index)
    shares = {k: count * len(v) / len(labels) for k, v in by_label.items()}
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
