"""pgml.chunk through the proxy: each splitter's chunks equal LangChain's own for the same
text and kwargs, numbered from 1, and splitters or kwargs that cannot run refused with a
clear error."""

from __future__ import annotations

import importlib.util
import json
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from psycopg import errors

from handlers.chunking import SPLITTERS, splitter_class
from tests.integration._pgml import unique
from tests.integration._stand_in import as_postgresql, stand_in
from tests.support.pgserver import PostgresCluster
from tests.support.proxyproc import ProxyProcess

PROSE = " ".join(
    f"Sentence number {i} talks about {'databases' if i % 3 else 'models'} at some length."
    for i in range(60)
)
TEXTS = {
    "character": "\n\n".join(PROSE[i : i + 180] for i in range(0, len(PROSE), 180)),
    "recursive_character": PROSE,
    "markdown": "# Title\n\n"
    + "\n\n".join(f"## Part {i}\n\n{PROSE[i * 90 : i * 90 + 300]}" for i in range(8)),
    "latex": "\\section{One}\n"
    + PROSE[:700]
    + "\n\\subsection{Two}\n"
    + PROSE[700:1500]
    + "\n\\begin{itemize}\n\\item x\n\\end{itemize}",
    "python": "\n\n".join(
        f"class Thing{i}:\n    def method(self, value):\n        return value * {i}\n"
        for i in range(30)
    ),
}
KWARGS: list[dict[str, Any]] = [{}, {"chunk_size": 200, "chunk_overlap": 20}]


@pytest.fixture(scope="module")
def db(proxy: ProxyProcess) -> Iterator[psycopg.Connection[Any]]:
    with psycopg.connect(proxy.dsn(), autocommit=True) as connection:
        yield connection


def chunks(db: psycopg.Connection[Any], splitter: str, text: str, kwargs: Any) -> list[Any]:
    return db.execute(
        "SELECT chunk_index, chunk FROM pgml.chunk(%s, %s, %s)",
        [splitter, text, json.dumps(kwargs)],
    ).fetchall()


@pytest.mark.parametrize("kwargs", KWARGS, ids=["defaults", "small"])
@pytest.mark.parametrize("splitter", sorted(TEXTS))
def test_chunks_equal_langchain(
    db: psycopg.Connection[Any], splitter: str, kwargs: dict[str, Any]
) -> None:
    text = TEXTS[splitter]
    expected = splitter_class(splitter)(**kwargs).split_text(text)
    got = chunks(db, splitter, text, kwargs)
    assert got == list(enumerate(expected, start=1))
    if kwargs:
        assert len(got) > 3


def test_defaults_and_shapes(db: psycopg.Connection[Any]) -> None:
    cursor = db.execute("SELECT * FROM pgml.chunk('recursive_character', 'one two')")
    assert [c.name for c in cursor.description or []] == ["chunk_index", "chunk"]
    assert cursor.fetchall() == [(1, "one two")]
    (count,) = db.execute(
        "SELECT count(*) FROM pgml.chunk('character', %s, '{\"chunk_size\": 100, "
        '"chunk_overlap": 0, "separator": " "}\')',
        [PROSE],
    ).fetchone() or (None,)
    assert count == len(
        splitter_class("character")(chunk_size=100, chunk_overlap=0, separator=" ").split_text(
            PROSE
        )
    )
    assert db.execute("SELECT * FROM pgml.chunk('character', '')").fetchall() == []
    assert db.execute("SELECT * FROM pgml.chunk('character', NULL)").fetchall() == []


def test_bad_input(db: psycopg.Connection[Any]) -> None:
    with pytest.raises(errors.InvalidParameterValue, match='unknown splitter "words"') as raised:
        db.execute("SELECT * FROM pgml.chunk('words', 'text')")
    assert "recursive_character" in (raised.value.diag.message_hint or "")
    with pytest.raises(errors.InvalidParameterValue, match='splitter "character"'):
        db.execute("""SELECT * FROM pgml.chunk('character', 'text', '{"chunk_sise": 5}')""")
    with pytest.raises(errors.InvalidParameterValue, match="larger chunk overlap"):
        db.execute(
            """SELECT * FROM pgml.chunk('character', 'text',
               '{"chunk_size": 5, "chunk_overlap": 10}')"""
        )
    with pytest.raises(errors.InvalidParameterValue, match="JSON object"):
        db.execute("SELECT * FROM pgml.chunk('character', 'text', '[1]')")
    assert db.execute("SELECT 1").fetchone() == (1,)


def nltk_ready() -> bool:
    if importlib.util.find_spec("nltk") is None:
        return False
    import nltk

    try:
        nltk.data.find("tokenizers/punkt_tab")
    except LookupError:
        return False
    return True


def test_nltk(db: psycopg.Connection[Any]) -> None:
    if nltk_ready():
        expected = splitter_class("nltk")().split_text(PROSE)
        assert chunks(db, "nltk", PROSE, {}) == list(enumerate(expected, start=1))
        return
    with pytest.raises(psycopg.Error) as raised:
        chunks(db, "nltk", PROSE, {})
    assert raised.value.sqlstate in ("58P01", "0A000")
    assert "nltk" in str(raised.value).lower()


def test_spacy(db: psycopg.Connection[Any]) -> None:
    if importlib.util.find_spec("spacy") is None:
        with pytest.raises(errors.FeatureNotSupported, match="spacy"):
            chunks(db, "spacy", PROSE, {})
    else:
        try:
            expected = splitter_class("spacy")().split_text(PROSE)
        except OSError:
            with pytest.raises(errors.UndefinedFile, match="spaCy pipeline"):
                chunks(db, "spacy", PROSE, {})
        else:
            assert chunks(db, "spacy", PROSE, {}) == list(enumerate(expected, start=1))


def test_every_splitter_is_tested() -> None:
    assert set(SPLITTERS) == set(TEXTS) | {"nltk", "spacy"}


def test_in_lateral_and_over_a_subquery(db: psycopg.Connection[Any]) -> None:
    """A call in ``LATERAL``, and one whose text is a subquery of its own (evaluated
    first, once, as PostgreSQL evaluates an uncorrelated subquery) or reads the
    statement's WITH queries (read once); one that reads the columns of the rows beside
    it in ways the proxy cannot read it so is refused with the reason."""
    table = unique("chunk_docs")
    db.execute(f"CREATE TABLE {table} (id int, body text)")
    db.execute(f"INSERT INTO {table} VALUES (1, 'alpha beta gamma'), (2, 'delta epsilon')")
    small = json.dumps({"chunk_size": 6, "chunk_overlap": 0, "separator": " "})
    split = splitter_class("character")(chunk_size=6, chunk_overlap=0, separator=" ").split_text
    try:
        found = db.execute(
            f"SELECT t.id, c.chunk_index, c.chunk FROM {table} AS t CROSS JOIN LATERAL "
            "pgml.chunk('character', 'one two three', %s) AS c ORDER BY 1, 2",
            [small],
        ).fetchall()
        pieces = list(enumerate(split("one two three"), start=1))
        assert found == [(i, *piece) for i in (1, 2) for piece in pieces]
        found = db.execute(
            "SELECT * FROM pgml.chunk('character', "
            f"(SELECT string_agg(d.body, ' ' ORDER BY d.id) FROM {table} AS d), %s)",
            [small],
        ).fetchall()
        joined = "alpha beta gamma delta epsilon"
        assert found == list(enumerate(split(joined), start=1))
        for refused, reason in (
            (
                f"SELECT t.id, c.* FROM {table} AS t LEFT JOIN LATERAL "
                "pgml.chunk('character', t.body) AS c ON c.chunk_index = 1",
                "with LEFT JOIN only ON true",
            ),
            (
                f"SELECT t.id, c.* FROM {table} AS t NATURAL JOIN "
                "pgml.chunk('character', t.body) AS c",
                "cannot be joined with NATURAL JOIN",
            ),
            (
                f"SELECT * FROM {table} AS t JOIN {table} AS u USING (id), "
                "pgml.chunk('character', t.body)",
                "cannot follow a join with USING",
            ),
            (
                f"SELECT * FROM {table} AS t, pgml.chunk('character', t.body) AS c, "
                "pgml.chunk('character', c.chunk) AS d",
                "one in a FROM list",
            ),
        ):
            with pytest.raises(errors.FeatureNotSupported, match=reason):
                db.execute(refused)
        with pytest.raises(errors.FeatureNotSupported, match="only by a query around"):
            db.execute(f"SELECT id FROM {table} GROUP BY id, (pgml.chunk('character', body)).chunk")
        numbered = db.execute(
            "SELECT * FROM pgml.chunk('character', 'one two three', %s) WITH ORDINALITY", [small]
        ).fetchall()
        assert numbered == [(*piece, n) for n, piece in enumerate(pieces, start=1)]
        # the statement's WITH queries that the arguments read are read once, for them
        # and for the rest of the statement (PostgresML's examples/chunking.sql)
        db.execute(f"CREATE TABLE {table}_chunks (d int, s text, i bigint, c text)")
        inserted = db.execute(
            f"WITH document AS (SELECT id, body FROM {table} WHERE id = 1), splitter AS "
            "(SELECT 'character' AS name) INSERT INTO "
            f"{table}_chunks SELECT (SELECT id FROM document), (SELECT name FROM splitter), "
            "chunk_index, chunk FROM pgml.chunk((SELECT name FROM splitter), "
            "(SELECT body FROM document), %s)",
            [small],
        )
        assert inserted.statusmessage == "INSERT 0 3"
        assert db.execute(f"SELECT * FROM {table}_chunks ORDER BY i").fetchall() == [
            (1, "character", n, piece) for n, piece in enumerate(split("alpha beta gamma"), 1)
        ]
        [(same, chunk)] = db.execute(
            "WITH d AS (SELECT random()::text AS r) SELECT (SELECT r FROM d) = c.chunk, c.chunk "
            "FROM pgml.chunk('character', (SELECT r FROM d)) AS c"
        ).fetchall()
        assert same, chunk  # one random() for the argument and the rest: read once
        for sql, refusal in (
            (
                f"WITH d AS (INSERT INTO {table} VALUES (9, 'x') RETURNING body) "
                "SELECT * FROM pgml.chunk('character', (SELECT body FROM d))",
                'WITH query "d", which changes rows',
            ),
            (
                f"WITH d AS (SELECT body FROM {table}) SELECT * FROM pgml.chunk('character', "
                f"(SELECT body FROM d LIMIT 1)) AS c, (SELECT pgml.chunk('character', body) "
                f"FROM {table}) AS p",
                "beside calls that read columns",
            ),
        ):
            with pytest.raises(errors.FeatureNotSupported, match=refusal):
                db.execute(sql)
        assert db.execute(f"SELECT count(*) FROM {table} WHERE id = 9").fetchone() == (0,)
        found = db.execute(
            "SELECT * FROM pgml.chunk('character', (WITH d AS (SELECT body FROM "
            f"{table} WHERE id = 1) SELECT body FROM d), %s)",
            [small],
        ).fetchall()
        assert found == list(enumerate(split("alpha beta gamma"), start=1))
    finally:
        db.execute(f"DROP TABLE IF EXISTS {table}, {table}_chunks")


def test_in_the_select_list_a_record_a_chunk_as_postgresql_returns_them(
    db: psycopg.Connection[Any], cluster: PostgresCluster
) -> None:
    """``SELECT pgml.chunk(...)`` (PostgresML's own examples) gives a record a chunk, as a
    function ``RETURNS TABLE`` does in PostgreSQL: compared with a stand-in of the same
    name that returns LangChain's chunks, for the columns' names and types and the rows."""
    options = {"chunk_size": 6, "chunk_overlap": 0, "separator": " "}
    text = "alpha beta gamma delta"
    pieces = splitter_class("character")(**options).split_text(text)
    indexes = ", ".join(str(i) for i in range(1, len(pieces) + 1))
    texts = ", ".join("'" + p.replace("'", "''") + "'" for p in pieces)
    body = f"SELECT * FROM unnest(ARRAY[{indexes}]::bigint[], ARRAY[{texts}]::text[])"
    shapes = [
        "SELECT {f}('character', %s, %s)",
        "SELECT {f}('character', %s, %s) AS c",
        "SELECT v.k, {f}('character', %s, %s) FROM (VALUES (1), (2)) AS v(k) ORDER BY 1",
        # in FROM, numbered WITH ORDINALITY as PostgreSQL numbers a function's rows
        "SELECT * FROM {f}('character', %s, %s)",
        "SELECT * FROM {f}('character', %s, %s) WITH ORDINALITY",
        "SELECT c.n, c.t FROM {f}('character', %s, %s) WITH ORDINALITY AS c(i, t, n) "
        "ORDER BY c.n DESC",
        "SELECT v.k, c.* FROM (VALUES (1), (2)) AS v(k), LATERAL {f}('character', %s, %s) "
        "WITH ORDINALITY AS c ORDER BY v.k, c.ordinality",
        # an argument over the statement's WITH query, which the rest reads too
        "WITH d AS (SELECT %s::text AS body) SELECT (SELECT length(body) FROM d), c.* "
        "FROM {f}('character', (SELECT body FROM d), %s) AS c",
    ]
    returns = "TABLE (chunk_index bigint, chunk text)"
    with (
        stand_in(cluster, "chunk", "text, text, jsonb", returns, body) as function,
        psycopg.connect(cluster.dsn(), autocommit=True) as direct,
    ):
        for shape in shapes:

            def answer(conn: psycopg.Connection[Any], function: str, shape: str = shape) -> Any:
                cur = conn.execute(shape.format(f=function), [text, json.dumps(options)])
                return [(d.name, d.type_code) for d in cur.description or []], cur.fetchall()

            _, rows = as_postgresql(answer, (direct, function), (db, "pgml.chunk"))
            assert len(rows) == len(pieces) * (2 if "VALUES" in shape else 1), shape


PER_ROW = [
    "SELECT id, {f}('character', body, %s) FROM {t}",
    "SELECT id, ({f}('character', body, %s)).* FROM {t} ORDER BY id DESC",
    "SELECT id, ({f}('character', body, %s)).chunk AS c FROM {t} WHERE id > 1",
    "SELECT upper(({f}('character', body, %s)).chunk), id FROM {t} WHERE id < 4",
    # PostgresML's unified RAG guide: the record's fields read by the query around it
    "SELECT (chunk).chunk, (chunk).chunk_index, id FROM (SELECT {f}('character', body, %s) "
    "chunk, id FROM {t}) sub_query",
    "SELECT count(*), max((c).chunk) FROM (SELECT {f}('character', body, %s) AS c FROM {t}) s",
    "SELECT cat, {f}('character', string_agg(body, ' ' ORDER BY id), %s) FROM {t} "
    "WHERE body <> '' GROUP BY cat ORDER BY cat",
    # sorted by the set's columns, counted among its rows, as PostgreSQL sorts and counts
    "SELECT id, ({f}('character', body, %s)).chunk FROM {t} ORDER BY 2 DESC, 1",
    "SELECT id, ({f}('character', body, %s)).chunk AS c FROM {t} ORDER BY c LIMIT 3 OFFSET 1",
    "SELECT id, ({f}('character', body, %s)).* FROM {t} ORDER BY id LIMIT 4",
    "SELECT id, row_number() OVER (ORDER BY id DESC), ({f}('character', body, %s)).chunk "
    "FROM {t} ORDER BY chunk",
    "SELECT id, ({f}('character', body, %s)).chunk FROM {t} ORDER BY cat, upper(body), 2 DESC",
    # the set's rows made distinct, then sorted and counted
    "SELECT DISTINCT ({f}('character', body, %s)).chunk_index FROM {t} ORDER BY 1",
    "SELECT DISTINCT cat, ({f}('character', body, %s)).chunk_index AS n FROM {t} "
    "ORDER BY n DESC, cat LIMIT 3",
    # an arm of a set operation
    "SELECT 0, 'z' UNION ALL SELECT id, ({f}('character', body, %s)).chunk FROM {t} WHERE id < 4",
    "SELECT id, ({f}('character', body, %s)).chunk FROM {t} UNION SELECT 9, 'z' ORDER BY 1, 2",
]


@pytest.mark.parametrize("simple", [False, True], ids=["extended", "simple"])
@pytest.mark.parametrize("shape", PER_ROW)
def test_over_columns_a_row_a_chunk_as_postgresql_returns_them(
    db: psycopg.Connection[Any], cluster: PostgresCluster, shape: str, simple: bool
) -> None:
    """Over a column, each row gives a row per chunk (none for NULL or empty text), the
    chunks in order, as a ``RETURNS TABLE`` function in the select list does, through
    either protocol (the extended one describes the result before it runs): compared
    with a STRICT stand-in of the same name splitting at spaces, as the character
    splitter does for these words (each longer than half the chunk size)."""
    _over_docs_as_postgresql(db, cluster, shape, "simple" if simple else "extended")


def test_over_columns_into_a_table_and_refused_where_postgresql_refuses(
    db: psycopg.Connection[Any], cluster: PostgresCluster
) -> None:
    """The guide's INSERT of every document's chunks; in WHERE or an aggregate's
    argument a set-returning call is PostgreSQL's 0A000 too."""
    table = unique("chunk_docs")
    cluster.psql(
        f"CREATE TABLE {table} (id int, body text); CREATE TABLE {table}_chunks "
        "(document_id int, chunk_index bigint, chunk text); "
        f"INSERT INTO {table} VALUES (1, 'alpha beta gamma'), (2, 'one two')"
    )
    options = json.dumps({"chunk_size": 6, "chunk_overlap": 0, "separator": " "})
    try:
        cur = db.execute(
            f"INSERT INTO {table}_chunks (chunk, chunk_index, document_id) "
            "SELECT (chunk).chunk, (chunk).chunk_index, id FROM (SELECT "
            f"pgml.chunk('character', body, %s) chunk, id FROM {table}) sub_query",
            [options],
        )
        assert cur.statusmessage == "INSERT 0 5"
        assert db.execute(f"SELECT * FROM {table}_chunks ORDER BY 1, 2").fetchall() == [
            (1, 1, "alpha"),
            (1, 2, "beta"),
            (1, 3, "gamma"),
            (2, 1, "one"),
            (2, 2, "two"),
        ]
        for refused in (
            f"SELECT id FROM {table} WHERE (pgml.chunk('character', body)).chunk = 'x'",
            f"SELECT count(pgml.chunk('character', body)) FROM {table}",
        ):
            with pytest.raises(errors.FeatureNotSupported):
                db.execute(refused)
            with (
                psycopg.connect(cluster.dsn(), autocommit=True) as direct,
                pytest.raises(errors.FeatureNotSupported),
            ):
                direct.execute(refused.replace("pgml.chunk", "string_to_table"))
        locked = f"SELECT id, {{}}('character', body) FROM {table} FOR NO KEY UPDATE"
        with pytest.raises(errors.FeatureNotSupported) as through:
            db.execute(locked.format("pgml.chunk"))
        with (
            psycopg.connect(cluster.dsn(), autocommit=True) as direct,
            pytest.raises(errors.FeatureNotSupported) as own,
        ):
            direct.execute(locked.format("string_to_table"))
        assert str(through.value) == str(own.value)  # PostgreSQL's words
    finally:
        cluster.psql(f"DROP TABLE IF EXISTS {table}, {table}_chunks")


def test_beside_another_set_returning_function_refused(
    db: psycopg.Connection[Any], cluster: PostgresCluster
) -> None:
    """PostgreSQL runs the set-returning functions of one select list in step, the
    longest setting the row count; a set-returning call over columns beside another would
    multiply its rows instead (and read each row once per result row): PostgreSQL's,
    another pgml one and the caller's own are refused, never answered with rows
    PostgreSQL would not return.  Beside other functions, and beside a set-returning one
    inside a subquery of the select list, it runs."""
    table = unique("chunk_docs")
    cluster.psql(
        f"CREATE TABLE {table} (id int, body text); "
        f"INSERT INTO {table} VALUES (1, 'alpha beta gamma'), (2, 'one two'); "
        f"CREATE FUNCTION {table}_set(text) RETURNS SETOF text LANGUAGE sql "
        "AS 'SELECT $1 UNION ALL SELECT $1'"
    )
    options = json.dumps({"chunk_size": 6, "chunk_overlap": 0, "separator": " "})
    chunk = "pgml.chunk('character', {}, '" + options.replace("{", "{{").replace("}", "}}") + "')"
    try:
        for beside, named in (
            ("generate_series(1, 2)", "generate_series"),
            ("unnest(ARRAY[1, 2]) + 1", "unnest"),
            (f"public.{table}_set(body)", f"{table}_set"),
            (chunk.format("'p q'"), "unnest"),  # the constant call's rows, in its place
        ):
            with pytest.raises(errors.FeatureNotSupported, match=f"beside {named}, which"):
                db.execute(f"SELECT id, {chunk.format('body')}, {beside} FROM {table}")
        found = db.execute(
            f"SELECT id, ({chunk.format('body')}).chunk, upper(body), "
            f"(SELECT max(g) FROM generate_series(1, 2) AS g) FROM {table}"
        ).fetchall()
        assert sorted(found) == [
            (1, "alpha", "ALPHA BETA GAMMA", 2),
            (1, "beta", "ALPHA BETA GAMMA", 2),
            (1, "gamma", "ALPHA BETA GAMMA", 2),
            (2, "one", "ONE TWO", 2),
            (2, "two", "ONE TWO", 2),
        ]
    finally:
        cluster.psql(f"DROP TABLE IF EXISTS {table}; DROP FUNCTION IF EXISTS {table}_set")


OVER_ITEMS = [
    "SELECT t.id, c.chunk_index, c.chunk FROM {t} t, LATERAL {f}('character', t.body, %s) c "
    "ORDER BY 1, 2",
    # unnamed, named after the function; * is every item's columns, not the proxy's
    "SELECT * FROM {t} t, {f}('character', t.body, %s) ORDER BY 1, 4",
    "SELECT t.id, c.* FROM {t} AS t CROSS JOIN LATERAL {f}('character', t.body, %s) AS c(i, w) "
    "WHERE t.id > 1 ORDER BY 1, 2",
    "SELECT t.id, c.chunk FROM {t} t JOIN LATERAL {f}('character', t.body, %s) c "
    "ON c.chunk_index = 1 ORDER BY 1",
    "SELECT cat, count(*), string_agg(c.chunk, ',' ORDER BY t.id, c.chunk_index) "
    "FROM {t} t, {f}('character', t.body, %s) c GROUP BY cat ORDER BY cat",
    # an item after the call reads it
    "SELECT t.id, c.chunk, u.x FROM {t} t, {f}('character', t.body, %s) c, "
    "LATERAL (SELECT upper(c.chunk) AS x) u ORDER BY 1, 2",
    # LEFT JOIN ... ON true: a row without chunks once, the call's columns and row NULL
    "SELECT t.id, c.*, c IS NULL AS none, c::text FROM {t} t LEFT JOIN LATERAL "
    "{f}('character', t.body, %s) c ON true ORDER BY 1, 2",
    "SELECT * FROM {t} t LEFT OUTER JOIN {f}('character', t.body, %s) WITH ORDINALITY "
    "AS c(i, w, n) ON TRUE WHERE t.cat = 'b' ORDER BY 1, n",
    # numbered as PostgreSQL numbers a function's rows for each row before it
    "SELECT t.id, c.* FROM {t} t, {f}('character', t.body, %s) WITH ORDINALITY c "
    "WHERE c.ordinality > 1 ORDER BY 1, c.ordinality",
    "SELECT * FROM {t} t CROSS JOIN LATERAL {f}('character', t.body, %s) WITH ORDINALITY "
    "ORDER BY 1, 6",
    # PostgresML's dbt example (examples/dbt/embeddings/models/chunks.sql)
    "WITH document AS (SELECT id, body AS text FROM {t}), splitter AS (SELECT 7 AS id, "
    "'character' AS name), chunks AS (SELECT document.id document_id, splitter.id "
    "splitter_id, chunk_index, chunk, md5(document.id::text || splitter.id || "
    "chunk_index::text) id FROM document, splitter, {f}(splitter.name, document.text, %s)) "
    "SELECT * FROM chunks ORDER BY 1, 3",
]


@pytest.mark.parametrize("mode", ["extended", "simple", "read only"])
@pytest.mark.parametrize("shape", OVER_ITEMS)
def test_in_from_over_the_items_before_it_as_postgresql_returns_them(
    db: psycopg.Connection[Any], cluster: PostgresCluster, shape: str, mode: str
) -> None:
    """A call in FROM over the columns of the items before it, as PostgreSQL calls a
    function there: once for each of their rows, the rows joined (none for NULL or
    empty text), the items' and the call's columns named and typed as written; in a
    read-only transaction too.  Compared with a STRICT stand-in of the same name."""
    _over_docs_as_postgresql(db, cluster, shape, mode)


@pytest.mark.parametrize("side", ["RIGHT", "FULL"])
def test_in_from_over_the_items_before_it_right_or_full_join_refused_as_postgresql_refuses(
    db: psycopg.Connection[Any], cluster: PostgresCluster, side: str
) -> None:
    """A RIGHT or FULL join cannot read the columns of the items before it: PostgreSQL's
    own error (SQLSTATE, message, detail; the position is in the text PostgreSQL was
    sent), compared with a stand-in of the same name."""
    table = unique("chunk_docs")
    cluster.psql(f"CREATE TABLE {table} (id int, body text)")
    returns = "TABLE (chunk_index bigint, chunk text)"
    body = "SELECT n, w FROM string_to_table($2, ' ') WITH ORDINALITY AS t(w, n)"
    shape = f"SELECT t.id, c.* FROM {table} t {side} JOIN LATERAL {{f}}('x', t.body) c ON true"

    def answer(conn: psycopg.Connection[Any], function: str) -> tuple[Any, ...]:
        with pytest.raises(psycopg.Error) as refused:
            conn.execute(shape.format(f=function))
        diag = refused.value.diag
        return refused.value.sqlstate, diag.message_primary, diag.message_detail

    try:
        with (
            stand_in(cluster, "chunk", "text, text", returns, body, strict=True) as function,
            psycopg.connect(cluster.dsn(), autocommit=True) as direct,
        ):
            sqlstate, *_ = as_postgresql(answer, (direct, function), (db, "pgml.chunk"))
            assert sqlstate == "42P10"
    finally:
        cluster.psql(f"DROP TABLE IF EXISTS {table}")


QUOTED_NAMES = [
    # an alias alike but for case names the item ORDER BY reads, not the call's
    'SELECT id AS "E", ({f}(\'character\', body, %s)).chunk AS e FROM {t} ORDER BY "E" DESC',
    "SELECT id AS e, ({f}('character', body, %s)).chunk AS \"E\" FROM {t} ORDER BY e DESC",
    # FROM items alike but for case: the call reads the one it names
    'SELECT t.id, "T".id, c.chunk FROM {t} "T" JOIN {t} t ON t.id = "T".id + 2, '
    "{f}('character', \"T\".body, %s) c ORDER BY 1, 3",
]


@pytest.mark.parametrize("shape", QUOTED_NAMES)
def test_quoted_names_alike_but_for_case_are_told_apart(
    db: psycopg.Connection[Any], cluster: PostgresCluster, shape: str
) -> None:
    """PostgreSQL tells quoted names apart by case (an unquoted one is folded to lower
    case): so does the proxy, which reads each name as the item it is."""
    _over_docs_as_postgresql(db, cluster, shape, "simple")


def _over_docs_as_postgresql(
    db: psycopg.Connection[Any], cluster: PostgresCluster, shape: str, mode: str
) -> None:
    """``shape`` over a table of documents (NULL and empty text among them) through the
    proxy and straight to PostgreSQL over a STRICT stand-in of ``pgml.chunk`` that splits
    at spaces, as the character splitter does for these words (each longer than half the
    chunk size); ``mode``: the extended protocol, the simple one, or the extended one in
    read-only transactions."""
    options = json.dumps({"chunk_size": 6, "chunk_overlap": 0, "separator": " "})
    table = unique("chunk_docs")
    cluster.psql(
        f"CREATE TABLE {table} (id int, cat text, body text); INSERT INTO {table} VALUES "
        "(1, 'a', 'alpha beta gamma delta'), (2, 'b', NULL), (3, 'a', 'one two'), "
        "(4, 'b', ''), (5, 'b', 'epsilon zeta')"
    )
    returns = "TABLE (chunk_index bigint, chunk text)"
    body = "SELECT n, w FROM string_to_table(nullif($2, ''), ' ') WITH ORDINALITY AS t(w, n)"

    def answer(conn: psycopg.Connection[Any], function: str) -> Any:
        cur = psycopg.ClientCursor(conn) if mode == "simple" else conn.cursor()
        if mode == "read only":
            conn.execute("SET default_transaction_read_only = on")
        try:
            cur.execute(shape.format(f=function, t=table), [options])
            return [(d.name, d.type_code) for d in cur.description or []], cur.fetchall()
        finally:
            conn.execute("RESET default_transaction_read_only")

    try:
        with (
            stand_in(cluster, "chunk", "text, text, jsonb", returns, body, strict=True) as function,
            psycopg.connect(cluster.dsn(), autocommit=True) as direct,
        ):
            _, rows = as_postgresql(answer, (direct, function), (db, "pgml.chunk"))
            assert rows
    finally:
        cluster.psql(f"DROP TABLE IF EXISTS {table}")
