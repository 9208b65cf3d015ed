"""Helpers shared by the pgml statement tests: a proxy of their own, psql and psycopg
runners that give comparable answers, and reference embeddings from sentence-transformers."""

from __future__ import annotations

import re
import subprocess
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import psycopg

from tests.support.pgserver import BIN, PostgresCluster
from tests.support.proxyproc import ProxyProcess

MODEL = "sentence-transformers/all-MiniLM-L6-v2"
DIMENSIONS = 384
TOLERANCE = 1e-5
REAL_ARRAY_OID = 1021
TEXT_OID = 25
INT4_OID = 23
INT8_OID = 20
FLOAT4_OID = 700
BOOL_OID = 16

NULL = "<NULL>"
SEPARATOR = "\x1f"

_TAG = re.compile(
    r"^(SELECT \d+|INSERT 0 \d+|UPDATE \d+|DELETE \d+|"
    r"(CREATE|DROP|ALTER) [A-Z ]+|BEGIN|COMMIT|ROLLBACK|SAVEPOINT|RELEASE|DO|SET)$"
)
_FOOTER = re.compile(r"^\((\d+) rows?\)$")
_INT = re.compile(r"^-?\d+$")
_FLOAT = re.compile(r"^-?(\d+\.?\d*(e[-+]?\d+)?|Infinity|NaN)$", re.IGNORECASE)


def start_proxy(cluster: PostgresCluster, batch_size: int) -> ProxyProcess:
    """A proxy with a small batch size; the hub is offline so lookups fail fast."""
    return ProxyProcess(
        "--upstream",
        cluster.dsn(),
        "--batch-size",
        str(batch_size),
        "--log-level",
        "debug",
        env={"HF_HUB_OFFLINE": "1"},
    ).start()


def unique(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:10]}"


# --- reference embeddings -------------------------------------------------------------


class Reference:
    """sentence-transformers' own embeddings, computed once per text."""

    _model: Any = None
    _cache: dict[tuple[str, bool], list[float]] = {}  # noqa: RUF012

    @classmethod
    def embed(cls, texts: Sequence[str], normalize: bool = True) -> list[list[float]]:
        missing = [t for t in dict.fromkeys(texts) if (t, normalize) not in cls._cache]
        if missing:
            if cls._model is None:
                from sentence_transformers import SentenceTransformer

                from handlers.models import ModelResolver

                cls._model = SentenceTransformer(str(ModelResolver().resolve(MODEL)), device="cpu")
            vectors = cls._model.encode(missing, normalize_embeddings=normalize)
            for text, vector in zip(missing, vectors, strict=True):
                cls._cache[(text, normalize)] = [float(v) for v in vector]
        return [cls._cache[(t, normalize)] for t in texts]

    @classmethod
    def one(cls, text: str, normalize: bool = True) -> list[float]:
        return cls.embed([text], normalize)[0]


def assert_close(got: Any, expected: Sequence[float] | None) -> None:
    if expected is None:
        assert got is None
        return
    assert got is not None, "expected an embedding, got NULL"
    assert len(got) == len(expected)
    worst = max(abs(float(a) - b) for a, b in zip(got, expected, strict=True))
    assert worst < TOLERANCE, f"differs from sentence-transformers by {worst}"


# --- answers ---------------------------------------------------------------------------


@dataclass
class Answer:
    """One statement's result as a client sees it."""

    columns: list[str]
    rows: list[tuple[Any, ...]]
    tag: str
    oids: list[int] | None = None
    """Column type OIDs (psycopg only: psql does not show them)."""

    def column(self, index: int) -> list[Any]:
        return [row[index] for row in self.rows]


def _cell(text: str) -> Any:
    if text == NULL:
        return None
    if text.startswith("{") and text.endswith("}"):
        inner = text[1:-1]
        if not inner:
            return []
        return [None if v == "NULL" else _scalar(v) for v in inner.split(",")]
    return _scalar(text)


def _scalar(text: str) -> Any:
    if _INT.match(text):
        return int(text)
    if _FLOAT.match(text):
        return float(text)
    return text


def parse_psql(stdout: str) -> list[Answer]:
    """psql's unaligned output (``-A``, unit separator, NULL shown as <NULL>) as answers."""
    answers: list[Answer] = []
    lines = stdout.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        if not line:
            i += 1
            continue
        if _TAG.match(line):
            answers.append(Answer([], [], line))
            i += 1
            continue
        columns = line.split(SEPARATOR)
        rows: list[tuple[Any, ...]] = []
        i += 1
        while i < len(lines) and not _FOOTER.match(lines[i]):
            rows.append(tuple(_cell(c) for c in lines[i].split(SEPARATOR)))
            i += 1
        assert i < len(lines), f"no row count footer in psql output:\n{stdout}"
        count = int(_FOOTER.match(lines[i]).group(1))  # type: ignore[union-attr]
        assert count == len(rows)
        answers.append(Answer(columns, rows, f"SELECT {count}"))
        i += 1
    return answers


def psql(dsn: str, *commands: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """Each command is one ``-c`` (one simple Query) in one psql session."""
    args = [str(BIN / "psql"), "-X", "-A", "-F", SEPARATOR, "-P", f"null={NULL}"]
    args += ["-v", "VERBOSITY=verbose", dsn]
    for command in commands:
        args += ["-c", command]
    return subprocess.run(args, capture_output=True, text=True, timeout=timeout)


def psql_answer(dsn: str, sql: str) -> Answer:
    out = psql(dsn, sql)
    assert out.returncode == 0, out.stderr
    assert "ERROR" not in out.stderr, out.stderr
    answers = parse_psql(out.stdout)
    assert len(answers) == 1, out.stdout
    return answers[0]


def cursor_answer(cur: psycopg.Cursor[Any]) -> Answer:
    description = cur.description
    rows = [tuple(r) for r in cur.fetchall()] if description is not None else []
    return Answer(
        [d.name for d in description or []],
        rows,
        cur.statusmessage or "",
        [d.type_code for d in description or []],
    )


@contextmanager
def client(dsn: str, autocommit: bool = True) -> Iterator[psycopg.Connection[Any]]:
    """A psycopg connection whose statements go as simple Queries (ClientCursor)."""
    with psycopg.connect(
        dsn, autocommit=autocommit, cursor_factory=psycopg.ClientCursor, connect_timeout=10
    ) as conn:
        yield conn


def client_answer(conn: psycopg.Connection[Any], sql: str) -> Answer:
    with conn.cursor() as cur:
        cur.execute(sql)
        return cursor_answer(cur)


def pgml_temp_tables(conn: psycopg.Connection[Any]) -> int:
    row = conn.execute(r"SELECT count(*) FROM pg_class WHERE relname LIKE '\_\_pgml%'").fetchone()
    assert row is not None
    return int(row[0])


# --- a source table --------------------------------------------------------------------

DOC_COUNT = 60


def doc_body(i: int) -> str | None:
    """Bodies repeat (23 distinct values) and every tenth row has none."""
    return None if i % 10 == 0 else f"sentence number {i % 23} about cats and dogs"


def doc_rows() -> list[tuple[int, str | None, str]]:
    return [(i, doc_body(i), f"c{i % 3}") for i in range(1, DOC_COUNT + 1)]


def create_docs(cluster: PostgresCluster, name: str) -> None:
    cluster.psql(
        f"CREATE TABLE {name} (id int PRIMARY KEY, body text, cat text, "
        f"model text DEFAULT '{MODEL}', emb real[]); "
        f"INSERT INTO {name} (id, body, cat) SELECT g, "
        "CASE WHEN g % 10 = 0 THEN NULL "
        "ELSE 'sentence number ' || (g % 23) || ' about cats and dogs' END, "
        f"'c' || (g % 3) FROM generate_series(1, {DOC_COUNT}) AS g"
    )


def expected_for(body: str | None) -> list[float] | None:
    return None if body is None else Reference.one(body)


def warm_up(dsn: str) -> None:
    """Load the model in the proxy and the reference model here, once."""
    with client(dsn) as conn:
        conn.execute(f"SELECT pgml.embed('{MODEL}', 'warm up')")
    Reference.embed([b for _, b, _ in doc_rows() if b is not None])
