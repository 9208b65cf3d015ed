"""``pgml.transform``, ``pgml.transform_stream`` and ``pgml.rank`` through psql and psycopg
(binary results, bound parameters): literal and per-row calls of every text pipeline kind,
each equal to the bare pipeline on the same inputs, and the bad inputs."""

from __future__ import annotations

import json
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import errors
from psycopg.types.json import Jsonb

from tests.integration._pgml import psql
from tests.integration._transform import (
    MINILM,
    Bare,
    binary,
    dashboard_url,
    model_proxy,
    psql_rows,
    same,
)
from tests.support.pgserver import PostgresCluster
from tests.support.proxyproc import ProxyProcess
from tests.support.tiny_pipelines import (
    CHAT,
    CROSS_ENCODER,
    FILL_MASK,
    GENERATION,
    NER,
    NLI,
    SENTIMENT,
    SQUAD,
    SUMMARIZATION,
    TRANSLATION,
    build_pipeline_models,
)
from tests.support.webclient import logged_in

TEXTS = ["I love SQL.", "The weather is nice today.", "Quoth the raven, nevermore."]
GREEDY = {"max_new_tokens": 8, "do_sample": False}


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_pipeline_models(tmp_path_factory.mktemp("pipelines"))


@pytest.fixture(scope="module")
def bare(models: Path) -> Bare:
    return Bare(models)


@pytest.fixture(scope="module")
def tproxy(cluster: PostgresCluster, models: Path) -> Iterator[ProxyProcess]:
    """Batches of 4 rows, so that per-row calls take several batches."""
    process = model_proxy(cluster, models, "--batch-size", "4")
    yield process
    process.stop()


@pytest.fixture
def conn(tproxy: ProxyProcess) -> Iterator[psycopg.Connection[Any]]:
    with psycopg.connect(tproxy.dsn(), autocommit=True) as connection:
        yield connection


def task(name: str, model: str) -> str:
    return json.dumps({"task": name, "model": model})


def literal(value: Any) -> str:
    return "'" + json.dumps(value).replace("'", "''") + "'"


def texts_array(texts: list[str]) -> str:
    return "ARRAY[" + ", ".join("'" + t.replace("'", "''") + "'" for t in texts) + "]"


PipelineCase = tuple[str, str, dict[str, Any], list[str]]
SHIPPED: list[PipelineCase] = [
    ("text-classification", SENTIMENT, {}, TEXTS),
    ("text-classification", SENTIMENT, {"top_k": None}, TEXTS[:1]),
    ("token-classification", NER, {}, TEXTS[:2]),
    ("zero-shot-classification", NLI, {"candidate_labels": ["databases", "weather"]}, TEXTS),
    ("fill-mask", FILL_MASK, {"top_k": 3}, ["I love [MASK]."]),
    ("fill-mask", FILL_MASK, {"top_k": 2}, ["I love [MASK].", "The [MASK] is nice."]),
    ("text-generation", GENERATION, GREEDY, TEXTS),
    ("feature-extraction", MINILM, {}, ["hello world"]),
]
GENERATED: list[tuple[str, str, str]] = [
    ("translation_en_to_es", TRANSLATION, "translation_text"),
    ("summarization", SUMMARIZATION, "summary_text"),
]


def _id(case: Any) -> str:
    return f"{case[0]}-{case[1]}"


# --- literal calls, each pipeline kind -------------------------------------------------------


@pytest.mark.parametrize("case", SHIPPED, ids=[f"{c[0]}-{i}" for i, c in enumerate(SHIPPED)])
def test_shipped_pipelines_through_psql(
    tproxy: ProxyProcess, bare: Bare, case: PipelineCase
) -> None:
    name, model, args, inputs = case
    sql = (
        f"SELECT pgml.transform(task => {literal({'task': name, 'model': model})}::jsonb, "
        f"args => {literal(args)}, inputs => {texts_array(inputs)}) AS result"
    )
    ((cell,),) = psql_rows(tproxy.dsn(), sql)
    assert cell is not None
    same(json.loads(cell), bare.run(name, model, inputs, **args))


@pytest.mark.parametrize("case", SHIPPED, ids=[f"{c[0]}-{i}" for i, c in enumerate(SHIPPED)])
def test_shipped_pipelines_through_psycopg_binary(
    conn: psycopg.Connection[Any], bare: Bare, case: PipelineCase
) -> None:
    name, model, args, inputs = case
    rows = binary(
        conn,
        "SELECT pgml.transform(%s::jsonb, %s::jsonb, %s::text[])",
        [Jsonb({"task": name, "model": model}), Jsonb(args), inputs],
    )
    same(rows[0][0], bare.run(name, model, inputs, **args))


def test_text_task_name_with_the_task_default_model(tproxy: ProxyProcess) -> None:
    """A bare task name means the pipeline's default model, looked up offline: its name is
    in the error, with every place looked in."""
    out = psql(tproxy.dsn(), "SELECT pgml.transform('text-classification', inputs => ARRAY['x'])")
    assert "42704" in out.stderr
    assert "distilbert-base-uncased-finetuned-sst-2-english" in out.stderr
    assert "models folder" in out.stderr


@pytest.mark.parametrize("case", GENERATED, ids=[c[0] for c in GENERATED])
def test_translation_and_summarization(
    tproxy: ProxyProcess, conn: psycopg.Connection[Any], bare: Bare, case: tuple[str, str, str]
) -> None:
    """transformers 5 has no such pipelines; the result is transformers 4's, each text
    generated by the model and decoded."""
    name, model, key = case
    expected = bare.seq2seq(model, TEXTS, key, **GREEDY)
    sql = (
        f"SELECT pgml.transform({literal({'task': name, 'model': model})}::jsonb, "
        f"{literal(GREEDY)}, {texts_array(TEXTS)})"
    )
    ((cell,),) = psql_rows(tproxy.dsn(), sql)
    same(json.loads(cell or "null"), expected)
    rows = binary(
        conn,
        "SELECT pgml.transform(%s::jsonb, %s::jsonb, %s)",
        [Jsonb({"task": name, "model": model}), Jsonb(GREEDY), TEXTS],
    )
    same(rows[0][0], expected)


def test_question_answering_jsonb_and_text_inputs(
    tproxy: ProxyProcess, conn: psycopg.Connection[Any], bare: Bare
) -> None:
    """One input gives the answer itself, several a list, as the pipeline does; JSON text
    inputs (PostgresML's documented form) and JSONB inputs give the same."""
    questions = [
        {"question": "Who loves SQL?", "context": "Alice loves SQL and Bob loves cats."},
        {"question": "Where is it?", "context": "The library is full of students."},
    ]
    expected = [bare.answer(SQUAD, q["question"], q["context"]) for q in questions]
    spec = literal({"task": "question-answering", "model": SQUAD})
    one = f"SELECT pgml.transform({spec}::jsonb, inputs => ARRAY[{literal(questions[0])}::jsonb])"
    ((cell,),) = psql_rows(tproxy.dsn(), one)
    same(json.loads(cell or "null"), expected[0])
    as_text = f"SELECT pgml.transform({spec}::jsonb, inputs => ARRAY[{literal(questions[0])}])"
    ((cell,),) = psql_rows(tproxy.dsn(), as_text)
    same(json.loads(cell or "null"), expected[0])
    rows = binary(
        conn,
        "SELECT pgml.transform(%s::jsonb, inputs => %s::jsonb[])",
        [Jsonb({"task": "question-answering", "model": SQUAD}), [Jsonb(q) for q in questions]],
    )
    same(rows[0][0], expected)


def test_chat_messages_use_the_chat_template(
    tproxy: ProxyProcess, conn: psycopg.Connection[Any], bare: Bare
) -> None:
    """JSONB[] messages are one conversation: ``conversational`` gives the replies as
    strings (PostgresML's shape), ``text-generation`` the pipeline's own chat output."""
    messages = [
        {"role": "system", "content": "You are a pirate."},
        {"role": "user", "content": "I love SQL."},
    ]
    reference = bare.run("text-generation", CHAT, messages, **GREEDY)
    replies = bare.run("text-generation", CHAT, messages, return_full_text=False, **GREEDY)
    array = "ARRAY[" + ", ".join(f"{literal(m)}::jsonb" for m in messages) + "]"
    sql = (
        f"SELECT pgml.transform({literal({'task': 'conversational', 'model': CHAT})}::jsonb, "
        f"{literal(GREEDY)}, {array})"
    )
    ((cell,),) = psql_rows(tproxy.dsn(), sql)
    same(json.loads(cell or "null"), [r["generated_text"] for r in replies])
    rows = binary(
        conn,
        "SELECT pgml.transform(%s::jsonb, %s::jsonb, %s::jsonb[])",
        [
            Jsonb({"task": "text-generation", "model": CHAT}),
            Jsonb(GREEDY),
            [Jsonb(m) for m in messages],
        ],
    )
    same(rows[0][0], reference)


# --- per-row calls ----------------------------------------------------------------------------


@pytest.fixture
def bodies(cluster: PostgresCluster, scratch: Callable[[str], str]) -> tuple[str, list[str]]:
    """Eleven rows, some texts repeated."""
    table = scratch("bodies")
    texts = [TEXTS[i % 3] if i % 4 else f"Row {i} is about databases." for i in range(11)]
    values = ", ".join(f"({i}, '{t.replace(chr(39), chr(39) * 2)}')" for i, t in enumerate(texts))
    cluster.psql(
        f"CREATE TABLE {table} (id int PRIMARY KEY, body text); INSERT INTO {table} VALUES {values}"
    )
    return table, texts


PER_ROW: list[tuple[str, str, dict[str, Any]]] = [
    ("text-classification", SENTIMENT, {}),
    ("token-classification", NER, {}),
    ("zero-shot-classification", NLI, {"candidate_labels": ["databases", "weather"]}),
    ("text-generation", GENERATION, GREEDY),
    ("translation_en_to_es", TRANSLATION, GREEDY),
    ("summarization", SUMMARIZATION, GREEDY),
]
SEQ2SEQ_KEYS = {"translation_en_to_es": "translation_text", "summarization": "summary_text"}


@pytest.mark.parametrize("case", PER_ROW, ids=_id)
def test_per_row_calls_in_batches(
    tproxy: ProxyProcess,
    conn: psycopg.Connection[Any],
    bare: Bare,
    bodies: tuple[str, list[str]],
    case: tuple[str, str, dict[str, Any]],
) -> None:
    name, model, args = case
    table, texts = bodies
    if name in SEQ2SEQ_KEYS:
        outputs = bare.seq2seq(model, texts, SEQ2SEQ_KEYS[name], **args)
        expected = {i: [out] for i, out in enumerate(outputs)}
    else:
        expected = {i: bare.run(name, model, [t], **args) for i, t in enumerate(texts)}
    sql = (
        f"SELECT id, pgml.transform({literal({'task': name, 'model': model})}::jsonb, "
        f"{literal(args)}, inputs => ARRAY[body]) AS r FROM {table} ORDER BY id"
    )
    rows = psql_rows(tproxy.dsn(), sql)
    assert [int(r[0] or -1) for r in rows] == list(range(len(texts)))
    for row in rows:
        same(json.loads(row[1] or "null"), expected[int(row[0] or -1)], f"row {row[0]}")
    got = binary(
        conn,
        f"SELECT id, pgml.transform(%s::jsonb, %s::jsonb, ARRAY[body]) FROM {table} "
        "WHERE id > %s ORDER BY id",
        [Jsonb({"task": name, "model": model}), Jsonb(args), 2],
    )
    assert [r[0] for r in got] == list(range(3, len(texts)))
    for row_id, value in got:
        same(value, expected[row_id], f"row {row_id}")


def test_per_row_jsonb_inputs(
    tproxy: ProxyProcess, bare: Bare, bodies: tuple[str, list[str]]
) -> None:
    """Question answering and chat with JSONB inputs built from each row's columns."""
    table, texts = bodies
    question = "What is it about?"
    qa = literal({"task": "question-answering", "model": SQUAD})
    rows = psql_rows(
        tproxy.dsn(),
        f"SELECT id, pgml.transform({qa}::jsonb, inputs => ARRAY[jsonb_build_object("
        f"'question', '{question}', 'context', body)]) FROM {table} ORDER BY id",
    )
    for row_id, cell in rows:
        expected = bare.answer(SQUAD, question, texts[int(row_id or -1)])
        same(json.loads(cell or "null"), expected, f"row {row_id}")
    chat = literal({"task": "conversational", "model": CHAT})
    rows = psql_rows(
        tproxy.dsn(),
        f"SELECT id, pgml.transform({chat}::jsonb, {literal(GREEDY)}, ARRAY[jsonb_build_object("
        f"'role', 'user', 'content', body)]) FROM {table} WHERE id < 5 ORDER BY id",
    )
    assert len(rows) == 5
    for row_id, cell in rows:
        messages = [{"role": "user", "content": texts[int(row_id or -1)]}]
        replies = bare.run("text-generation", CHAT, messages, return_full_text=False, **GREEDY)
        same(json.loads(cell or "null"), [r["generated_text"] for r in replies], f"row {row_id}")


def test_concurrent_sessions_share_the_pipeline(tproxy: ProxyProcess, bare: Bare) -> None:
    expected = {t: bare.run("text-classification", SENTIMENT, [t]) for t in TEXTS}
    results: dict[int, Any] = {}
    failures: list[BaseException] = []

    def client(index: int) -> None:
        try:
            with psycopg.connect(tproxy.dsn(), autocommit=True) as c:
                text = TEXTS[index % 3]
                row = c.execute(
                    "SELECT pgml.transform(%s::jsonb, inputs => ARRAY[%s])",
                    [Jsonb({"task": "text-classification", "model": SENTIMENT}), text],
                ).fetchone()
                results[index] = (text, row[0] if row else None)
        except BaseException as exc:
            failures.append(exc)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert not failures
    assert len(results) == 8
    for text, value in results.values():
        same(value, expected[text])


# --- transform_stream --------------------------------------------------------------------------


def stream_sql(model: str, args: dict[str, Any], text: str, name: str = "text-generation") -> str:
    return (
        f"SELECT * FROM pgml.transform_stream({literal({'task': name, 'model': model})}::jsonb, "
        f"{literal(args)}, '{text}')"
    )


def test_stream_rows_make_up_the_generated_text(
    tproxy: ProxyProcess, conn: psycopg.Connection[Any], bare: Bare
) -> None:
    args = {"max_new_tokens": 12, "do_sample": False}
    (expected,) = bare.run("text-generation", GENERATION, ["I love SQL"], **args)
    rows = psql_rows(tproxy.dsn(), stream_sql(GENERATION, args, "I love SQL"))
    assert len(rows) > 1, "one row per piece of text"
    assert "".join(r[0] or "" for r in rows) == expected[0]["generated_text"]
    listed = binary(
        conn,
        "SELECT pgml.transform_stream(%s::jsonb, %s::jsonb, %s)",
        [Jsonb({"task": "text-generation", "model": GENERATION}), Jsonb(args), "I love SQL"],
    )
    assert [r[0] for r in listed] == [r[0] for r in rows]
    new_only = psql_rows(
        tproxy.dsn(), stream_sql(GENERATION, {**args, "return_full_text": False}, "I love SQL")
    )
    assert (
        "".join(r[0] or "" for r in new_only) == expected[0]["generated_text"][len("I love SQL") :]
    )


def test_stream_of_a_translation(tproxy: ProxyProcess, bare: Bare) -> None:
    (expected,) = bare.seq2seq(TRANSLATION, ["I love SQL."], "translation_text", **GREEDY)
    rows = psql_rows(
        tproxy.dsn(), stream_sql(TRANSLATION, GREEDY, "I love SQL.", "translation_en_to_es")
    )
    assert "".join(r[0] or "" for r in rows).strip() == expected["translation_text"].strip()


def test_stream_cancel_stops_generation_and_frees_the_model(tproxy: ProxyProcess) -> None:
    # as many tokens as the tiny GPT-2's 1024 positions hold: many seconds on a CPU
    endless = {"max_new_tokens": 1000, "min_new_tokens": 1000, "do_sample": False}
    with psycopg.connect(tproxy.dsn(), autocommit=True) as c:
        c.execute(stream_sql(GENERATION, {"max_new_tokens": 2}, "warm up")).fetchall()
        timer = threading.Timer(0.5, c.cancel_safe)
        timer.start()
        began = time.monotonic()
        with pytest.raises(errors.QueryCanceled) as caught:
            c.execute(stream_sql(GENERATION, endless, "I love SQL")).fetchall()
        timer.join()
        assert caught.value.sqlstate == "57014"
        assert time.monotonic() - began < 15
        began = time.monotonic()
        rows = c.execute(stream_sql(GENERATION, {"max_new_tokens": 4, "do_sample": False}, "hi"))
        assert rows.fetchall()
        assert time.monotonic() - began < 10, "the model is still busy with the cancelled stream"


def test_stream_first_row_arrives_before_generation_ends(tproxy: ProxyProcess) -> None:
    """A psycopg server-side cursor: DECLARE, then FETCH FORWARD n as it reads."""
    args = {"max_new_tokens": 400, "min_new_tokens": 400, "do_sample": False}
    with psycopg.connect(tproxy.dsn()) as c:
        c.execute(stream_sql(GENERATION, {"max_new_tokens": 2}, "warm up")).fetchall()
        with c.cursor(name="stream") as cur:
            began = time.monotonic()
            cur.execute(stream_sql(GENERATION, args, "I love SQL"))
            first = cur.fetchone()
            first_at = time.monotonic() - began
            rest = cur.fetchall()
            total = time.monotonic() - began
        assert first is not None and len(rest) > 10
        assert first_at < total / 2, f"first row after {first_at:.2f}s of {total:.2f}s"


LONG = {"max_new_tokens": 400, "min_new_tokens": 400, "do_sample": False}
ENDLESS = {"max_new_tokens": 1000, "min_new_tokens": 1000, "do_sample": False}
SHORT = {"max_new_tokens": 24, "do_sample": False}


def _first_and_total(rows: Iterator[Any]) -> tuple[float, float, int]:
    began = time.monotonic()
    next(rows)
    first_at = time.monotonic() - began
    count = 1 + sum(1 for _ in rows)
    return first_at, time.monotonic() - began, count


def test_stream_rows_of_a_plain_select_arrive_as_generated(tproxy: ProxyProcess) -> None:
    """Without a cursor too: psycopg's stream() (extended protocol, single-row mode) and
    a simple Query in single-row mode get the first rows before the last is generated."""
    with psycopg.connect(tproxy.dsn(), autocommit=True) as c:
        c.execute(stream_sql(GENERATION, {"max_new_tokens": 2}, "warm up")).fetchall()
        first_at, total, count = _first_and_total(
            iter(c.cursor().stream(stream_sql(GENERATION, LONG, "I love SQL")))
        )
        assert count > 10 and first_at < total / 2, (
            f"first row after {first_at:.2f}s of {total:.2f}s"
        )
        pgconn = c.pgconn
        pgconn.send_query(stream_sql(GENERATION, LONG, "I love SQL").encode())
        pgconn.set_single_row_mode()

        def results() -> Iterator[Any]:
            while (result := pgconn.get_result()) is not None:
                if result.ntuples:
                    yield result

        first_at, total, count = _first_and_total(results())
        assert count > 10 and first_at < total / 2, (
            f"first row after {first_at:.2f}s of {total:.2f}s"
        )


def _steps(c: psycopg.Connection[Any], cursor: str, steps: list[str]) -> list[Any]:
    """What each step gives: its rows and status, or the SQLSTATE of its error."""
    seen: list[Any] = []
    for step in steps:
        try:
            cur = c.execute(step.format(cursor=cursor))
            seen.append((cur.statusmessage, cur.fetchall() if cur.description else None))
        except psycopg.Error as error:
            seen.append(error.sqlstate)
            c.rollback()
            break
    return seen


STEPS = {
    "forward only": [
        "FETCH 2 FROM {cursor}",
        "FETCH FORWARD 3 FROM {cursor}",
        "FETCH NEXT FROM {cursor}",
        "FETCH {cursor}",
        "FETCH IN {cursor}",
        "FETCH FORWARD FROM {cursor}",
        "FETCH ALL FROM {cursor}",
        "FETCH 5 FROM {cursor}",
    ],
    "handed over": [
        "FETCH 3 FROM {cursor}",
        "FETCH FORWARD 0 FROM {cursor}",
        "MOVE FORWARD 2 IN {cursor}",
        "FETCH 2 FROM {cursor}",
        "SELECT is_scrollable, is_holdable, is_binary FROM pg_cursors",
        "FETCH ALL FROM {cursor}",
        "FETCH BACKWARD 1 FROM {cursor}",
    ],
    "past the end": [
        "FETCH 1000 FROM {cursor}",
        "MOVE BACKWARD 1 IN {cursor}",
        "FETCH 2 FROM {cursor}",
    ],
    "closed": ["FETCH 1 FROM {cursor}", "CLOSE {cursor}", "FETCH 1 FROM {cursor}"],
}


@pytest.mark.parametrize("steps", list(STEPS), ids=list(STEPS))
def test_stream_cursor_answers_as_a_cursor_over_the_collected_rows(
    tproxy: ProxyProcess, steps: str
) -> None:
    """The same FETCH, MOVE and CLOSE on a cursor over the stream and on one over the
    same rows collected (a subquery is not streamed) give the same rows, tags and
    errors, through the proxy's own rows and after it hands the cursor to PostgreSQL."""
    sql = stream_sql(GENERATION, SHORT, "I love SQL")
    results = {}
    for cursor, query in (("c", sql), ("d", f"SELECT * FROM ({sql}) AS s")):
        with psycopg.connect(tproxy.dsn()) as c:
            c.execute(f"DECLARE {cursor} CURSOR FOR {query}")
            results[cursor] = _steps(c, cursor, STEPS[steps])
    assert results["c"] == results["d"]
    assert any(isinstance(r, tuple) and r[1] for r in results["c"])


def test_stream_cursor_of_psql_fetch_count(tproxy: ProxyProcess) -> None:
    """psql's FETCH_COUNT reads through DECLARE, FETCH FORWARD n and CLOSE."""
    sql = stream_sql(GENERATION, SHORT, "I love SQL")
    whole = psql(tproxy.dsn(), sql)
    counted = psql(tproxy.dsn(), "\\set FETCH_COUNT 3", sql)
    assert counted.returncode == 0 and "ERROR" not in counted.stderr, counted.stderr
    assert counted.stdout == whole.stdout and len(whole.stdout.splitlines()) > 4


def test_stream_cursor_in_binary_and_after_a_change_of_encoding(tproxy: ProxyProcess) -> None:
    """A binary server-side cursor fetches through the extended protocol (PostgreSQL
    answers it once the rows are all there); a client that does not read UTF-8 gets
    the rows collected, converted by PostgreSQL."""
    sql = stream_sql(GENERATION, SHORT, "I love SQL")
    with psycopg.connect(tproxy.dsn(), autocommit=True) as c:
        expected = [r[0] for r in c.execute(f"SELECT * FROM ({sql}) AS s").fetchall()]
    with psycopg.connect(tproxy.dsn()) as c, c.cursor(name="b", binary=True) as cur:
        cur.execute(sql)
        assert [r[0] for r in [cur.fetchone(), *cur.fetchmany(2), *cur.fetchall()]] == expected
    with psycopg.connect(tproxy.dsn()) as c:
        c.execute("SET client_encoding TO 'LATIN1'")
        with c.cursor(name="l") as cur:
            cur.execute(sql)
            assert [r[0] for r in cur.fetchall()] == expected


def _model_is_free(dsn: str) -> None:
    began = time.monotonic()
    with psycopg.connect(dsn, autocommit=True) as c:
        assert c.execute(stream_sql(GENERATION, {"max_new_tokens": 4}, "hi")).fetchall()
    assert time.monotonic() - began < 10, "the model is still busy with an ended stream"


@pytest.mark.parametrize("ending", ["commit", "close", "disconnect"])
def test_stream_cursor_stops_generating_when_it_ends(tproxy: ProxyProcess, ending: str) -> None:
    """A stream's cursor ended by COMMIT, CLOSE or the client leaving stops generation."""
    c = psycopg.connect(tproxy.dsn())
    c.execute(f"DECLARE e CURSOR FOR {stream_sql(GENERATION, ENDLESS, 'I love SQL')}")
    assert c.execute("FETCH 1 FROM e").fetchall()
    if ending == "commit":
        c.commit()
    elif ending == "close":
        c.execute("CLOSE e")
    else:
        c.pgconn.finish()
    _model_is_free(tproxy.dsn())
    c.close()


def test_stream_cursor_cancelled_while_it_waits(tproxy: ProxyProcess) -> None:
    """A cancel while FETCH ALL waits for rows: 57014, the transaction aborted as
    PostgreSQL aborts it, the session usable after ROLLBACK, generation stopped."""
    with psycopg.connect(tproxy.dsn()) as c:
        c.execute(f"DECLARE e CURSOR FOR {stream_sql(GENERATION, ENDLESS, 'I love SQL')}")
        timer = threading.Timer(0.5, c.cancel_safe)
        timer.start()
        with pytest.raises(errors.QueryCanceled):
            c.execute("FETCH ALL FROM e")
        timer.join()
        with pytest.raises(errors.InFailedSqlTransaction):
            c.execute("FETCH 1 FROM e")
        c.rollback()
        assert c.execute("SELECT 1").fetchone() == (1,)
    _model_is_free(tproxy.dsn())


# --- rank -------------------------------------------------------------------------------------


def test_rank_orders_documents_by_cross_encoder_score(
    tproxy: ProxyProcess, conn: psycopg.Connection[Any], bare: Bare
) -> None:
    documents = ["I love SQL.", "Cats sleep on the sofa.", "Postgres is a database.", "Rain."]
    expected = bare.rank(CROSS_ENCODER, "databases", documents, return_documents=True)
    sql = (
        f"SELECT corpus_id, score, text FROM pgml.rank('{CROSS_ENCODER}', 'databases', "
        f"{texts_array(documents)}, '{{\"return_documents\": true}}')"
    )
    rows = psql_rows(tproxy.dsn(), sql)
    same([(int(a or -1), float(b or 0), c) for a, b, c in rows], expected)
    got = binary(
        conn,
        "SELECT * FROM pgml.rank(%s, %s, %s, kwargs => %s::jsonb)",
        [CROSS_ENCODER, "databases", documents, Jsonb({"top_k": 2})],
    )
    same([tuple(r) for r in got], [(a, b, None) for a, b, _ in expected[:2]])
    assert [r[0] for r in got] == [r[0] for r in expected[:2]]
    description = conn.execute(
        f"SELECT * FROM pgml.rank('{CROSS_ENCODER}', 'q', ARRAY['a'])"
    ).description
    assert description is not None
    assert [(d.name, d.type_code) for d in description] == [
        ("corpus_id", 23),
        ("score", 700),
        ("text", 25),
    ]


def test_rank_over_columns_gives_each_row_its_ranking(
    tproxy: ProxyProcess, conn: psycopg.Connection[Any], cluster: PostgresCluster, bare: Bare
) -> None:
    """Each row's query ranks the documents: a row per document, in the order of its
    scores, as a ``RETURNS TABLE`` function in the select list multiplies rows."""
    documents = ["I love SQL.", "Cats sleep on the sofa.", "Postgres is a database."]
    queries = ["databases", "pets"]
    cluster.psql(
        "CREATE TABLE rank_queries (id int, q text); "
        "INSERT INTO rank_queries VALUES (1, 'databases'), (2, NULL), (3, 'pets')"
    )
    try:
        rows = conn.execute(
            "SELECT id, (pgml.rank(%s, q, %s)).* FROM rank_queries ORDER BY id",
            [CROSS_ENCODER, documents],
        ).fetchall()
    finally:
        cluster.psql("DROP TABLE rank_queries")
    expected = [
        (key, *ranked)
        for key, query in zip((1, 3), queries, strict=True)
        for ranked in bare.rank(CROSS_ENCODER, query, documents)
    ]
    assert [(r[0], r[1]) for r in rows] == [(e[0], e[1]) for e in expected]
    same([tuple(r[1:]) for r in rows], [tuple(e[1:]) for e in expected])


# --- bad input --------------------------------------------------------------------------------

SPEC = literal({"task": "text-classification", "model": SENTIMENT})
BAD: list[tuple[str, str, str]] = [
    ("SELECT pgml.transform('no-such-task', inputs => ARRAY['x'])", "22023", "no-such-task"),
    (
        """SELECT pgml.transform('{"task": "text-classification", "model": "tiny/none"}'::jsonb,"""
        " inputs => ARRAY['x'])",
        "42704",
        "tiny/none",
    ),
    (
        f"""SELECT pgml.transform('{{"model": "{SENTIMENT}"}}'::jsonb, inputs => ARRAY['x'])""",
        "22023",
        '"task"',
    ),
    (
        f"SELECT pgml.transform({literal({'task': 'zero-shot-classification', 'model': NLI})}"
        "::jsonb, inputs => ARRAY['x'])",
        "22023",
        "candidate_labels",
    ),
    (
        f"SELECT pgml.transform({literal({'task': 'text-generation', 'model': GENERATION})}::jsonb,"
        """ '{"max_new_tokens": "many"}', ARRAY['x'])""",
        "22023",
        "text-generation",
    ),
    (f"SELECT pgml.transform({SPEC}::jsonb, '[1]', ARRAY['x'])", "22023", "args"),
    (f"SELECT pgml.transform({SPEC}::jsonb, '{{nope', ARRAY['x'])", "22P02", "json"),
    (f"SELECT pgml.transform({SPEC}::jsonb, inputs => ARRAY['x', NULL])", "22004", "NULL"),
    (
        f"SELECT pgml.transform({literal({'task': 'conversational', 'model': CHAT})}::jsonb,"
        " inputs => ARRAY['hi'])",
        "22023",
        "JSONB",
    ),
    (
        "SELECT pgml.transform('automatic-speech-recognition', inputs => ARRAY['x'])",
        "0A000",
        "text tasks",
    ),
    (stream_sql(SENTIMENT, {}, "x", "text-classification"), "0A000", "does not generate"),
    (
        f"SELECT * FROM pgml.rank('{CROSS_ENCODER}', 'q', ARRAY['a'], '{{\"nope\": 1}}')",
        "22023",
        "nope",
    ),
]


@pytest.mark.parametrize("case", BAD, ids=[f"{c[1]}-{c[2]}" for c in BAD])
def test_bad_input_is_a_clear_error_and_the_session_goes_on(
    conn: psycopg.Connection[Any], case: tuple[str, str, str]
) -> None:
    sql, sqlstate, mentions = case
    with pytest.raises(psycopg.Error) as caught:
        conn.execute(sql).fetchall()
    assert caught.value.sqlstate == sqlstate, caught.value
    assert mentions.lower() in str(caught.value).lower() + str(caught.value.diag.message_hint)
    assert "Traceback" not in str(caught.value)
    assert conn.execute("SELECT 1").fetchone() == (1,)


def test_null_and_empty_inputs(conn: psycopg.Connection[Any]) -> None:
    """A NULL argument gives NULL (the function is strict); no inputs give no outputs."""
    row = conn.execute(f"SELECT pgml.transform({SPEC}::jsonb, inputs => NULL::text[])").fetchone()
    assert row == (None,)
    row = conn.execute(f"SELECT pgml.transform({SPEC}::jsonb)").fetchone()
    assert row == ([],)
    rows = conn.execute(f"SELECT * FROM pgml.rank('{CROSS_ENCODER}', 'q', ARRAY[]::text[])")
    assert rows.fetchall() == []


def test_loaded_pipelines_on_the_dashboard(
    tproxy: ProxyProcess, conn: psycopg.Connection[Any]
) -> None:
    conn.execute(f"SELECT pgml.transform({SPEC}::jsonb, inputs => ARRAY['x'])").fetchall()
    base = dashboard_url(tproxy)
    html = logged_in(base).get("/loaded").body
    assert f"{SENTIMENT} (text-classification)" in html
    with urllib.request.urlopen(f"{base}/metrics", timeout=30) as page:
        metrics = page.read().decode()
    # summed per kind: the name is shown only where /metrics needs a login
    assert 'pgml_proxy_model_bytes{kind="pipeline",model="all"}' in metrics
    assert SENTIMENT not in metrics
    assert "pgml_proxy_model_memory_budget_bytes" in metrics
