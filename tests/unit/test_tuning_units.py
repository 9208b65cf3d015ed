"""The pure parts of pgml.tune and of serving: the train/test split, label order, argument
checks, the request batcher and the metrics, without a server."""

from __future__ import annotations

import asyncio
import math
import threading
from collections import Counter
from collections.abc import Callable
from typing import Any

import pytest

from handlers.artifact import label_value, sorted_labels
from handlers.batching import Batcher, Work
from handlers.errors import PgmlError
from handlers.tuning import metrics
from handlers.tuning.options import (
    LENGTH_KEYS,
    PROXY_KEYS,
    TASKS,
    normalise_task,
    parse_hyperparams,
    parse_sampling,
    parse_test_size,
    training_argument_names,
)
from handlers.tuning.split import split_rows

Pairs = list[tuple[str, str]]


def rows(count: int, label: Callable[[int], str] = lambda i: str(i % 2)) -> Pairs:
    return [(f"text {i}", label(i)) for i in range(count)]


def split(pairs: Pairs, test_size: float, sampling: str, seed: int) -> tuple[Pairs, Pairs]:
    """``split_rows`` on the rows' numbers and label ids, as the worker calls it."""
    ids = {label: i for i, label in enumerate(sorted({label for _, label in pairs}))}
    labels = [ids[label] for _, label in pairs] if sampling == "stratified" else None
    train, test = split_rows(len(pairs), test_size, sampling, seed, labels)
    return [pairs[i] for i in train], [pairs[i] for i in test]


def raises(sqlstate: str, call: Callable[[], Any]) -> PgmlError:
    with pytest.raises(PgmlError) as raised:
        call()
    assert raised.value.sqlstate == sqlstate, raised.value.message
    return raised.value


# --- split -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("total", "test_size", "test_rows"),
    [
        (40, 0.25, 10),
        (40, 0.5, 20),
        (10, 0.33, 3),
        (7, 0.1, 1),
        (40, 7, 7),
        (40, 1, 1),
        (40, 39, 39),
    ],
)
@pytest.mark.parametrize("sampling", ["random", "first", "last", "stratified"])
def test_split_sizes(total: int, test_size: float, test_rows: int, sampling: str) -> None:
    pairs = rows(total)
    train, test = split(pairs, test_size, sampling, seed=42)
    assert len(test) == test_rows
    assert len(train) == total - test_rows
    assert sorted(train + test) == sorted(pairs)


def test_split_first_and_last_keep_the_relation_order() -> None:
    pairs = rows(10)
    assert split(pairs, 3, "first", seed=1) == (pairs[3:], pairs[:3])
    assert split(pairs, 3, "last", seed=1) == (pairs[:7], pairs[7:])
    assert split(pairs, 0.2, "last", seed=1) == (pairs[:8], pairs[8:])


def test_split_first_and_last_ignore_the_seed() -> None:
    pairs = rows(30)
    for sampling in ("first", "last"):
        assert split(pairs, 0.3, sampling, seed=1) == split(pairs, 0.3, sampling, seed=2)


@pytest.mark.parametrize("sampling", ["random", "stratified"])
def test_split_random_is_reproducible_and_seeded(sampling: str) -> None:
    pairs = rows(200)
    once = split(pairs, 0.25, sampling, seed=42)
    again = split(pairs, 0.25, sampling, seed=42)
    other = split(pairs, 0.25, sampling, seed=7)
    assert once == again
    assert set(once[1]) != set(other[1])
    assert len(other[1]) == len(once[1]) == 50


@pytest.mark.parametrize("sampling", ["random", "stratified"])
def test_split_random_keeps_the_relation_order_within_each_side(sampling: str) -> None:
    pairs = rows(60)
    train, test = split(pairs, 0.25, sampling, seed=3)
    position = {pair: index for index, pair in enumerate(pairs)}
    assert [position[p] for p in train] == sorted(position[p] for p in train)
    assert [position[p] for p in test] == sorted(position[p] for p in test)


def test_split_random_is_not_first_or_last() -> None:
    pairs = rows(100)
    _, test = split(pairs, 0.2, "random", seed=42)
    assert test != pairs[:20]
    assert test != pairs[80:]


@pytest.mark.parametrize(
    ("counts", "test_size", "expected"),
    [
        ({"a": 32, "b": 8}, 10, {"a": 8, "b": 2}),
        ({"a": 30, "b": 60, "c": 90}, 0.1, {"a": 3, "b": 6, "c": 9}),
        ({"neg": 50, "pos": 50}, 0.5, {"neg": 25, "pos": 25}),
        ({"x": 90, "y": 10}, 0.2, {"x": 18, "y": 2}),
    ],
)
def test_split_stratified_keeps_label_proportions(
    counts: dict[str, int], test_size: float, expected: dict[str, int]
) -> None:
    labels = [label for label, count in counts.items() for _ in range(count)]
    # interleave the labels so that "first"/"last" would not be stratified
    pairs = [(f"text {i}", label) for i, label in enumerate(labels[::2] + labels[1::2])]
    train, test = split(pairs, test_size, "stratified", seed=42)
    assert Counter(label for _, label in test) == expected
    assert Counter(label for _, label in train) == {
        label: counts[label] - expected[label] for label in counts
    }


def test_split_stratified_gives_a_rare_label_its_largest_remainder() -> None:
    # 3.6 and 0.4 test rows: the larger remainder goes to "a", so "b" gets none
    pairs = rows(10, lambda i: "b" if i == 0 else "a")
    _, test = split(pairs, 4, "stratified", seed=1)
    assert Counter(label for _, label in test) == {"a": 4}
    # 2.6 and 1.4: floors 2 and 1, the one left goes to the larger remainder, "a"
    pairs = rows(40, lambda i: "b" if i % 3 == 0 else "a")  # 26 a, 14 b
    _, test = split(pairs, 4, "stratified", seed=1)
    assert Counter(label for _, label in test) == {"a": 3, "b": 1}


@pytest.mark.parametrize(
    ("total", "test_size", "shown"),
    [
        (40, 0.001, "leaves 0 test and 40 training rows of 40"),
        (40, 0.99, "leaves no training rows: the relation has 40"),
        (40, 40, "leaves no training rows: the relation has 40"),
        (40, 1000, "test_size 1000 leaves no training rows"),
        (1, 0.5, "of 1"),
    ],
)
@pytest.mark.parametrize("sampling", ["random", "first", "last", "stratified"])
def test_split_refuses_an_empty_side(
    total: int, test_size: float, shown: str, sampling: str
) -> None:
    error = raises("22023", lambda: split(rows(total), test_size, sampling, seed=42))
    assert shown in error.message
    assert error.hint is not None and "at least one row" in error.hint


# --- labels ------------------------------------------------------------------------------


def test_sorted_labels_numeric_in_numeric_order() -> None:
    assert sorted_labels({"10", "9", "2", "-1", "0.5"}, "real") == ["-1", "0.5", "2", "9", "10"]


def test_sorted_labels_booleans_false_first() -> None:
    assert sorted_labels({"true", "false"}, "real") == ["false", "true"]


def test_sorted_labels_text_in_text_order() -> None:
    assert sorted_labels({"pos", "neg", "Neutral", "10", "9"}, "text") == [
        "10",
        "9",
        "Neutral",
        "neg",
        "pos",
    ]


@pytest.mark.parametrize(
    ("label", "label_type", "value"),
    [
        ("1", "real", 1.0),
        ("-3", "real", -3.0),
        ("2.5", "real", 2.5),
        ("true", "real", 1.0),
        ("false", "real", 0.0),
        ("pos", "text", "pos"),
        ("1", "text", "1"),
    ],
)
def test_label_value(label: str, label_type: str, value: float | str) -> None:
    got = label_value(label, label_type)
    assert got == value
    assert type(got) is type(value)


# --- options -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("given", "task"),
    [
        ("text-classification", "text-classification"),
        ("text_classification", "text-classification"),
        ("Text_Classification", "text-classification"),
        ("  summarization ", "summarization"),
        ("text_generation", "text-generation"),
        ("TEXT-GENERATION", "text-generation"),
        ("translation", "translation"),
        ("translation_en_to_fr", "translation"),
        ("translation-en-to-es", "translation"),
        ("Translation_EN_to_DE", "translation"),
    ],
)
def test_normalise_task(given: str, task: str) -> None:
    assert normalise_task(given) == task


@pytest.mark.parametrize("given", ["regression-ish", "regression", "classification", "", "text"])
def test_normalise_task_refuses_unknown_tasks(given: str) -> None:
    error = raises("22023", lambda: normalise_task(given))
    assert f'"{given}"' in error.message
    assert error.hint is not None
    for task in TASKS:
        assert task in error.hint


ALLOWED = frozenset({"learning_rate", "num_train_epochs", "hub_token", "seed", "output_dir"})


def test_parse_hyperparams_empty() -> None:
    for value in (None, {}, "{}"):
        options = parse_hyperparams("text-classification", value, ALLOWED)
        assert options.training == {}
        assert options.stored == {}
        assert options.max_length is None


def test_parse_hyperparams_splits_proxy_keys_from_training_arguments() -> None:
    options = parse_hyperparams(
        "translation",
        '{"learning_rate": 2e-5, "num_train_epochs": 1, "max_length": 128, '
        '"max_input_length": 64, "max_target_length": 32}',
        ALLOWED,
    )
    assert options.task == "translation"
    assert options.training == {"learning_rate": 2e-5, "num_train_epochs": 1}
    assert (options.max_length, options.max_input_length, options.max_target_length) == (
        128,
        64,
        32,
    )
    assert options.stored == {
        "learning_rate": 2e-5,
        "num_train_epochs": 1,
        "max_input_length": 64,
        "max_length": 128,
        "max_target_length": 32,
    }


def test_parse_hyperparams_keeps_secrets_out_of_stored() -> None:
    allowed = ALLOWED | {"token", "push_to_hub_token", "api_key", "hub_model_id"}
    value = {
        "learning_rate": 1e-4,
        "hub_token": "hf_secret1",
        "token": "hf_secret2",
        "push_to_hub_token": "hf_secret3",
        "api_key": "secret4",
        "hub_model_id": "me/model",
    }
    options = parse_hyperparams("text-classification", value, allowed)
    assert options.training == value  # the worker still gets them
    assert options.stored == {"learning_rate": 1e-4, "hub_model_id": "me/model"}
    assert "secret" not in repr(options.stored)


def test_parse_hyperparams_refuses_an_unknown_key() -> None:
    error = raises(
        "22023",
        lambda: parse_hyperparams("text-classification", {"learnin_rate": 1}, ALLOWED),
    )
    assert '"learnin_rate"' in error.message
    assert error.detail is not None
    assert "TrainingArguments" in error.detail
    for key in PROXY_KEYS:
        assert key in error.detail


def test_parse_hyperparams_names_seq2seq_arguments_for_seq2seq_tasks() -> None:
    error = raises("22023", lambda: parse_hyperparams("summarization", {"nope": 1}, ALLOWED))
    assert "Seq2SeqTrainingArguments" in (error.detail or "")
    error = raises("22023", lambda: parse_hyperparams("text-generation", {"nope": 1}, ALLOWED))
    assert "Seq2SeqTrainingArguments" not in (error.detail or "")


def test_parse_hyperparams_names_the_first_unknown_key() -> None:
    error = raises("22023", lambda: parse_hyperparams("translation", {"zz": 1, "aa": 2}, ALLOWED))
    assert '"aa"' in error.message


def test_parse_hyperparams_refuses_keys_the_proxy_chooses() -> None:
    error = raises(
        "22023", lambda: parse_hyperparams("text-classification", {"output_dir": "/x"}, ALLOWED)
    )
    assert "output_dir" in error.message


def test_parse_hyperparams_with_the_real_training_arguments() -> None:
    allowed = training_argument_names("text-classification")
    assert {"learning_rate", "num_train_epochs", "per_device_train_batch_size"} <= allowed
    assert "predict_with_generate" not in allowed
    assert "predict_with_generate" in training_argument_names("translation")
    options = parse_hyperparams(
        "text-classification", {"learning_rate": 2e-5, "weight_decay": 0.01}, allowed
    )
    assert options.training == {"learning_rate": 2e-5, "weight_decay": 0.01}
    raises("22023", lambda: parse_hyperparams("text-classification", {"learnin_rate": 1}, allowed))


@pytest.mark.parametrize("text", ["{not json", '{"a": }', "", "{'single': 1}"])
def test_parse_hyperparams_refuses_text_that_is_not_json(text: str) -> None:
    error = raises("22P02", lambda: parse_hyperparams("text-classification", text, ALLOWED))
    assert "json" in error.message


@pytest.mark.parametrize("value", ["[1, 2]", "3", '"text"', [1], 3])
def test_parse_hyperparams_refuses_json_that_is_not_an_object(value: Any) -> None:
    error = raises("22023", lambda: parse_hyperparams("text-classification", value, ALLOWED))
    assert "JSON object" in error.message


@pytest.mark.parametrize("length", [0, -1, "128", 1.5, True, None])
@pytest.mark.parametrize("key", sorted(LENGTH_KEYS))
def test_parse_hyperparams_refuses_bad_lengths(key: str, length: Any) -> None:
    error = raises("22023", lambda: parse_hyperparams("translation", {key: length}, ALLOWED))
    assert key in error.message


@pytest.mark.parametrize(
    ("value", "size"),
    [(0.25, 0.25), ("0.5", 0.5), (0.999, 0.999), (1, 1.0), (10, 10.0), ("7", 7.0), (7.0, 7.0)],
)
def test_parse_test_size(value: Any, size: float) -> None:
    assert parse_test_size(value) == size


@pytest.mark.parametrize("value", [0, 0.0, -0.25, -3, 1.5, 10.25, "nan", "abc", None, [1]])
def test_parse_test_size_refuses(value: Any) -> None:
    error = raises("22023", lambda: parse_test_size(value))
    assert "test_size" in error.message


@pytest.mark.parametrize(
    ("value", "sampling"),
    [
        (None, "random"),
        ("", "random"),
        ("random", "random"),
        ("FIRST", "first"),
        (" last ", "last"),
    ],
)
def test_parse_sampling(value: Any, sampling: str) -> None:
    for task in TASKS:
        assert parse_sampling(value, task) == sampling


def test_parse_sampling_stratified_is_for_classification_only() -> None:
    assert parse_sampling("stratified", "text-classification") == "stratified"
    for task in ("translation", "summarization", "text-generation"):
        error = raises("22023", lambda task=task: parse_sampling("stratified", task))
        assert "stratified" in error.message


def test_parse_sampling_refuses_unknown() -> None:
    error = raises("22023", lambda: parse_sampling("sideways", "text-classification"))
    assert '"sideways"' in error.message
    assert error.hint is not None and "stratified" in error.hint


# --- batching ----------------------------------------------------------------------------


MODEL = object()


class Runner:
    """The batcher's ``run``: records each batch; the first waits until ``release``."""

    def __init__(self) -> None:
        self.batches: list[list[Any]] = []
        self.started = asyncio.Event()
        self.release = asyncio.Event()

    async def __call__(
        self, model: Any, work: Work, items: list[Any], stopped: Callable[[], bool]
    ) -> list[Any]:
        self.batches.append(list(items))
        self.started.set()
        await self.release.wait()
        return await asyncio.to_thread(work, items, stopped)


def doubled(items: list[Any], stopped: Callable[[], bool]) -> list[Any]:
    return [item * 2 for item in items]


def test_batcher_serves_concurrent_callers_together_in_order() -> None:
    async def scenario() -> tuple[Runner, Any, list[Any]]:
        runner = Runner()
        batcher = Batcher(runner, limit=64)
        first = asyncio.ensure_future(batcher.submit("model", MODEL, doubled, [1000]))
        await runner.started.wait()  # the first batch is running now
        others = [
            asyncio.ensure_future(batcher.submit("model", MODEL, doubled, [i, i + 0.5]))
            for i in range(32)
        ]
        await asyncio.sleep(0)
        runner.release.set()
        return runner, await first, await asyncio.gather(*others)

    runner, first, others = asyncio.run(scenario())
    assert first == [2000]
    assert others == [[2 * i, 2 * i + 1] for i in range(32)]
    assert len(runner.batches) <= 3
    assert runner.batches[0] == [1000]
    assert sorted(x for batch in runner.batches[1:] for x in batch) == sorted(
        x for i in range(32) for x in (i, i + 0.5)
    )


def test_batcher_respects_the_limit() -> None:
    async def scenario() -> tuple[Runner, list[Any]]:
        runner = Runner()
        batcher = Batcher(runner, limit=4)
        first = asyncio.ensure_future(batcher.submit("k", MODEL, doubled, [0]))
        await runner.started.wait()
        sizes = [1, 2, 3, 1, 1, 4, 2, 2, 1]
        others = [
            asyncio.ensure_future(batcher.submit("k", MODEL, doubled, list(range(n))))
            for n in sizes
        ]
        await asyncio.sleep(0)
        runner.release.set()
        results = await asyncio.gather(first, *others)
        return runner, results

    runner, results = asyncio.run(scenario())
    assert results[1:] == [[2 * x for x in range(n)] for n in (1, 2, 3, 1, 1, 4, 2, 2, 1)]
    assert all(len(batch) <= 4 for batch in runner.batches)
    assert sum(len(batch) for batch in runner.batches) == 1 + 17
    # requests are taken in arrival order and never split: 1+2 | 3+1 | 1 | 4 | 2+2 | 1
    assert [len(b) for b in runner.batches] == [1, 3, 4, 1, 4, 4, 1]


def test_batcher_runs_a_request_larger_than_the_limit_on_its_own() -> None:
    async def scenario() -> tuple[Runner, list[Any]]:
        runner = Runner()
        runner.release.set()
        batcher = Batcher(runner, limit=3)
        return runner, await batcher.submit("k", MODEL, doubled, list(range(10)))

    runner, result = asyncio.run(scenario())
    assert result == [2 * x for x in range(10)]
    assert runner.batches == [list(range(10))]


def test_batcher_keeps_keys_apart() -> None:
    async def scenario() -> tuple[Runner, list[Any]]:
        runner = Runner()
        batcher = Batcher(runner, limit=64)
        calls = [
            batcher.submit("double", MODEL, doubled, [1, 2]),
            batcher.submit("negate", MODEL, lambda items, _: [-x for x in items], [10, 20]),
            batcher.submit("double", MODEL, doubled, [3]),
        ]
        futures = [asyncio.ensure_future(c) for c in calls]
        await asyncio.sleep(0)
        runner.release.set()
        return runner, await asyncio.gather(*futures)

    runner, results = asyncio.run(scenario())
    assert results == [[2, 4], [-10, -20], [6]]
    assert sorted(x for batch in runner.batches for x in batch) == [1, 2, 3, 10, 20]
    for batch in runner.batches:  # never a batch with items of both keys
        assert all(x < 10 for x in batch) or all(x >= 10 for x in batch)


def test_batcher_gives_an_exception_to_every_caller_of_its_batch() -> None:
    def fails_on_13(items: list[Any], stopped: Callable[[], bool]) -> list[Any]:
        if 13 in items:
            raise ValueError("unlucky batch")
        return doubled(items, stopped)

    async def scenario() -> tuple[Any, list[Any], list[Any]]:
        runner = Runner()
        batcher = Batcher(runner, limit=64)
        first = asyncio.ensure_future(batcher.submit("k", MODEL, fails_on_13, [1]))
        await runner.started.wait()
        failing = [
            asyncio.ensure_future(batcher.submit("k", MODEL, fails_on_13, [i]))
            for i in range(10, 16)
        ]
        await asyncio.sleep(0)
        runner.release.set()
        first_result = await first
        outcomes = await asyncio.gather(*failing, return_exceptions=True)
        later = await batcher.submit("k", MODEL, fails_on_13, [4, 5])  # the queue still works
        return first_result, outcomes, later

    first, outcomes, later = asyncio.run(scenario())
    assert first == [2]
    assert len(outcomes) == 6
    for outcome in outcomes:
        assert isinstance(outcome, ValueError)
        assert str(outcome) == "unlucky batch"
    assert later == [8, 10]


def test_batcher_skips_callers_that_went_away() -> None:
    async def scenario() -> tuple[Runner, list[Any]]:
        runner = Runner()
        batcher = Batcher(runner, limit=64)
        first = asyncio.ensure_future(batcher.submit("k", MODEL, doubled, [1]))
        await runner.started.wait()
        gone = asyncio.ensure_future(batcher.submit("k", MODEL, doubled, [2]))
        kept = asyncio.ensure_future(batcher.submit("k", MODEL, doubled, [3]))
        await asyncio.sleep(0)
        gone.cancel()
        await asyncio.sleep(0)
        runner.release.set()
        return runner, [await first, await kept]

    runner, results = asyncio.run(scenario())
    assert results == [[2], [6]]
    assert runner.batches == [[1], [3]]


def test_batcher_with_no_items_runs_nothing() -> None:
    runner = Runner()
    assert asyncio.run(Batcher(runner, limit=4).submit("k", MODEL, doubled, [])) == []
    assert runner.batches == []


# --- metrics -----------------------------------------------------------------------------


def test_classification_metrics_on_a_known_case() -> None:
    probabilities = [[0.9, 0.1], [0.2, 0.8], [0.6, 0.4], [0.3, 0.7]]
    truth = [0, 1, 1, 1]  # predicted 0, 1, 0, 1
    found = metrics.classification(probabilities, truth, classes=2)
    assert found["accuracy"] == pytest.approx(0.75)
    # class 0: precision 1/2, recall 1 -> f1 2/3; class 1: precision 1, recall 2/3 -> f1 4/5
    assert found["f1"] == pytest.approx((2 / 3 + 4 / 5) / 2)
    assert found["precision"] == pytest.approx((1 / 2 + 1) / 2)
    assert found["recall"] == pytest.approx((1 + 2 / 3) / 2)
    assert found["roc_auc"] == pytest.approx(1.0)  # every positive scores above the negative
    assert found["log_loss"] == pytest.approx(
        -(math.log(0.9) + math.log(0.8) + math.log(0.4) + math.log(0.7)) / 4
    )
    assert all(type(v) is float for v in found.values())


def test_classification_metrics_perfect_and_multiclass() -> None:
    probabilities = [[0.8, 0.1, 0.1], [0.1, 0.8, 0.1], [0.1, 0.1, 0.8], [0.7, 0.2, 0.1]]
    found = metrics.classification(probabilities, [0, 1, 2, 0], classes=3)
    assert found["f1"] == pytest.approx(1.0)
    assert found["accuracy"] == pytest.approx(1.0)
    assert "roc_auc" not in found


def test_classification_metrics_count_a_class_never_predicted() -> None:
    # always class 0 on a balanced set: f1 for class 0 is 2/3, for class 1 zero
    found = metrics.classification([[0.6, 0.4]] * 4, [0, 0, 1, 1], classes=2)
    assert found["accuracy"] == pytest.approx(0.5)
    assert found["f1"] == pytest.approx(1 / 3)


def test_classification_metrics_with_one_class_in_the_test_split() -> None:
    found = metrics.classification([[0.9, 0.1], [0.4, 0.6]], [0, 0], classes=2)
    assert found["accuracy"] == pytest.approx(0.5)
    assert "roc_auc" not in found  # undefined with one class


def test_translation_bleu_is_100_for_identical_text() -> None:
    texts = ["el gato duerme en el sofá caliente", "me gusta mucho la base de datos"]
    found = metrics.translation(texts, texts)
    assert found["bleu"] == pytest.approx(100.0)
    assert found["chrf"] == pytest.approx(100.0)


def test_translation_bleu_is_low_for_unrelated_text() -> None:
    found = metrics.translation(["uno dos tres cuatro cinco"], ["el gato duerme en el sofá"])
    assert found["bleu"] < 5
    assert found["chrf"] < 30


def test_summarization_rouge_is_1_for_identical_text() -> None:
    texts = ["The committee approved the budget.", "A new bridge opens on Tuesday."]
    found = metrics.summarization(texts, texts)
    assert found == pytest.approx({"rouge1": 1.0, "rouge2": 1.0, "rougeL": 1.0})


def test_summarization_rouge_is_0_for_disjoint_text() -> None:
    found = metrics.summarization(["alpha beta gamma"], ["delta epsilon zeta"])
    assert found == pytest.approx({"rouge1": 0.0, "rouge2": 0.0, "rougeL": 0.0})


def test_summarization_rouge_partial_overlap() -> None:
    # unigrams: 2 of 4 predicted match 2 of 4 reference words -> rouge1 0.5
    found = metrics.summarization(["the cat sat down"], ["the cat ran away"])
    assert found["rouge1"] == pytest.approx(0.5)
    assert found["rouge2"] == pytest.approx(1 / 3)


def test_perplexity() -> None:
    assert metrics.perplexity(0.0) == 1.0
    assert metrics.perplexity(math.log(12.5)) == pytest.approx(12.5)
    assert math.isfinite(metrics.perplexity(1e9))


def test_a_batch_stops_once_every_caller_has_gone() -> None:
    """The work's ``stopped()`` turns true when every request of its batch is cancelled (or
    says it stopped), not before."""

    async def scenario() -> list[bool]:
        seen: list[bool] = []
        release = threading.Event()

        def watch(items: list[Any], stopped: Callable[[], bool]) -> list[Any]:
            seen.append(stopped())
            release.wait(10)
            seen.append(stopped())
            return items

        async def run(
            model: Any, work: Work, items: list[Any], stopped: Callable[[], bool]
        ) -> list[Any]:
            return await asyncio.to_thread(work, items, stopped)

        batcher = Batcher(run, limit=8)
        gone = asyncio.ensure_future(batcher.submit("k", MODEL, watch, [1]))
        await asyncio.sleep(0.2)
        gone.cancel()
        await asyncio.sleep(0.1)
        release.set()
        await asyncio.sleep(0.2)
        release.clear()
        flag = threading.Event()
        kept = asyncio.ensure_future(batcher.submit("k", MODEL, watch, [2], flag.is_set))
        await asyncio.sleep(0.2)
        seen.append(flag.is_set())
        flag.set()
        release.set()
        assert await kept == [2]
        return seen

    assert asyncio.run(scenario()) == [False, True, False, False, True]
