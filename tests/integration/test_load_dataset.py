"""pgml.load_dataset through psql: the guide's calls verbatim, against a datasets folder
the test lays out, and the bad inputs."""

from __future__ import annotations

import json
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.pgserver import BIN, PostgresCluster
from tests.support.proxyproc import ProxyProcess

OFFLINE = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}


def write_jsonl(path: Path, rows: list[dict[str, object]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))


@pytest.fixture(scope="module")
def datasets_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import datasets

    root = tmp_path_factory.mktemp("datasets")
    write_jsonl(
        root / "kde4" / "en-es" / "train.jsonl",
        [
            {"id": str(i), "translation": {"en": f"Credits {i}", "es": f"Créditos {i}"}}
            for i in range(30)
        ],
    )
    features = datasets.Features(
        {"text": datasets.Value("string"), "label": datasets.ClassLabel(names=["neg", "pos"])}
    )
    imdb = datasets.DatasetDict(
        {
            split: datasets.Dataset.from_dict(
                {
                    "text": [f"{split} review {i}" for i in range(n)],
                    "label": [i % 2 for i in range(n)],
                },
                features=features,
            )
            for split, n in (("train", 12), ("test", 8), ("unsupervised", 5))
        }
    )
    imdb.save_to_disk(str(root / "imdb"))
    for split, n in (("train", 6), ("ca_test", 4), ("test", 3)):
        write_jsonl(
            root / "billsum" / f"{split}.jsonl",
            [{"text": f"{split} bill {i}", "summary": f"sum {i}", "title": "t"} for i in range(n)],
        )
    write_jsonl(root / "bookcorpus" / "train.jsonl", [{"text": f"line {i}"} for i in range(150)])
    return root


@pytest.fixture(scope="module")
def loader(cluster: PostgresCluster, datasets_dir: Path) -> Iterator[ProxyProcess]:
    proxy = ProxyProcess(
        "--upstream", cluster.dsn(), "--datasets-dir", str(datasets_dir), env=OFFLINE
    ).start()
    yield proxy
    proxy.stop()


def psql(proxy: ProxyProcess, sql: str, user: str = "postgres") -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / "psql"), "-X", "-A", "-t", "-v", "ON_ERROR_STOP=1", proxy.dsn(user), "-c", sql],
        capture_output=True,
        text=True,
        timeout=120,
    )


def ok(proxy: ProxyProcess, sql: str) -> list[str]:
    out = psql(proxy, sql)
    assert out.returncode == 0, out.stderr
    return out.stdout.splitlines()


def test_the_guides_calls_verbatim(loader: ProxyProcess, cluster: PostgresCluster) -> None:
    assert ok(
        loader, """SELECT pgml.load_dataset('kde4', kwargs => '{"lang1": "en", "lang2": "es"}');"""
    ) == ["(kde4,30)"]
    rows = ok(loader, "SELECT * FROM pgml.kde4 LIMIT 5;")
    assert rows[0] == '0|{"en": "Credits 0", "es": "Créditos 0"}'
    assert (
        cluster.psql(
            "SELECT format_type(atttypid, atttypmod) FROM pg_attribute "
            "WHERE attrelid = 'pgml.kde4'::regclass AND attname = 'translation'"
        ).strip()
        == "jsonb"
    )
    assert ok(loader, "SELECT pgml.load_dataset('imdb');") == ["(imdb,20)"]
    assert ok(loader, "SELECT label, count(*) FROM pgml.imdb GROUP BY label ORDER BY 1") == [
        "0|10",
        "1|10",
    ]
    assert ok(
        loader, """SELECT pgml.load_dataset('billsum', kwargs => '{"split": "ca_test"}');"""
    ) == ["(billsum,4)"]
    assert ok(loader, """SELECT pgml.load_dataset('bookcorpus', "limit" => 100);""") == [
        "(bookcorpus,100)"
    ]
    assert ok(loader, "SELECT count(*) FROM pgml.bookcorpus") == ["100"]


def test_reload_keeps_views_and_is_atomic(loader: ProxyProcess) -> None:
    ok(loader, "SELECT pgml.load_dataset('bookcorpus', \"limit\" => 10)")
    ok(loader, "CREATE OR REPLACE VIEW books_view AS SELECT text FROM pgml.bookcorpus")
    assert ok(loader, "SELECT * FROM pgml.load_dataset('bookcorpus', \"limit\" => 7)") == [
        "bookcorpus|7"
    ]
    assert ok(loader, "SELECT count(*) FROM books_view") == ["7"]
    ok(loader, "DROP VIEW books_view")


def test_a_load_that_fails_half_way_leaves_the_old_table(
    loader: ProxyProcess, datasets_dir: Path
) -> None:
    name = f"half_{uuid.uuid4().hex[:8]}"
    write_jsonl(datasets_dir / f"{name}.jsonl", [{"n": i} for i in range(50)])
    assert ok(loader, f"SELECT pgml.load_dataset('{name}')") == [f"({name},50)"]
    good = [{"n": i} for i in range(30000)]
    (datasets_dir / f"{name}.jsonl").write_text(
        "".join(json.dumps(r) + "\n" for r in good) + '{"n": "not a number at all"\n'
    )
    failed = psql(loader, f"SELECT pgml.load_dataset('{name}')")
    assert failed.returncode != 0 and "ERROR" in failed.stderr
    assert ok(loader, f'SELECT count(*), max(n) FROM pgml."{name}"') == ["50|49"]


def test_unknown_dataset_names_every_place(loader: ProxyProcess, datasets_dir: Path) -> None:
    out = psql(loader, "SELECT pgml.load_dataset('no_such_dataset')")
    assert out.returncode != 0
    assert 'dataset "no_such_dataset" was not found' in out.stderr
    assert "datasets folder (no_such_dataset/" in out.stderr and "Hugging Face hub" in out.stderr
    assert str(datasets_dir) not in out.stderr  # the server's folders are not the caller's
    assert ok(loader, "SELECT to_regclass('pgml.no_such_dataset') IS NULL") == ["t"]


@pytest.mark.parametrize(
    ("sql", "state"),
    [
        ("SELECT pgml.load_dataset('imdb', kwargs => '{not json')", "22P02"),
        ("SELECT pgml.load_dataset('imdb', \"limit\" => -1)", "22023"),
        ("SELECT pgml.load_dataset('imdb', kwargs => '{\"split\": \"nope\"}')", "22023"),
    ],
)
def test_bad_arguments(loader: ProxyProcess, sql: str, state: str) -> None:
    import psycopg

    with psycopg.connect(loader.dsn(), autocommit=True) as conn:
        with pytest.raises(psycopg.Error) as caught:
            conn.execute(sql)
        assert caught.value.sqlstate == state
        assert conn.execute("SELECT 1").fetchone() == (1,)


def test_a_role_without_create_on_schema_pgml(
    loader: ProxyProcess, cluster: PostgresCluster, datasets_dir: Path
) -> None:
    import psycopg

    role = f"reader_{uuid.uuid4().hex[:8]}"
    name = f"fresh_{uuid.uuid4().hex[:8]}"
    write_jsonl(datasets_dir / f"{name}.jsonl", [{"n": 1}])
    cluster.psql(f"CREATE ROLE {role} LOGIN")
    ok(loader, "SELECT pgml.load_dataset('bookcorpus', \"limit\" => 1)")  # catalog exists
    with psycopg.connect(loader.dsn(role), autocommit=True) as conn:
        with pytest.raises(psycopg.Error) as caught:
            conn.execute(f"SELECT pgml.load_dataset('{name}')")
        assert caught.value.sqlstate == "42501"
        assert "permission denied for schema pgml" in str(caught.value)
        assert conn.execute("SELECT 1").fetchone() == (1,)
    assert ok(loader, f"SELECT to_regclass('pgml.{name}') IS NULL") == ["t"]
    cluster.psql(f"DROP ROLE {role}")


def test_tricky_values_survive_the_load(loader: ProxyProcess, datasets_dir: Path) -> None:
    import psycopg

    name = f"tricky_{uuid.uuid4().hex[:8]}"
    texts = [
        "",
        None,
        "quote \" and '",
        "tab\there",
        "line\nbreak\r\n",
        "back\\slash",
        "é ✓ 中文",
        "\\N",
    ]
    rows = [
        {"t": t, "f": f, "b": b, "i": i}
        for t, f, b, i in zip(
            texts,
            [0.1, None, float("inf"), -0.0, 1e300, 2.5, -1.25, 3.0],
            [True, False, None, True, False, True, False, True],
            [1, None, -(2**62), 0, 7, 8, 9, 10],
            strict=True,
        )
    ]
    path = datasets_dir / f"{name}.jsonl"
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    assert ok(loader, f"SELECT rows FROM pgml.load_dataset('{name}')") == ["8"]
    with psycopg.connect(loader.dsn()) as conn:
        got = conn.execute(f'SELECT t, f, b, i FROM pgml."{name}"').fetchall()
    assert got == [(r["t"], r["f"], r["b"], r["i"]) for r in rows]


def test_a_cancel_stops_a_load_and_keeps_the_old_table(
    loader: ProxyProcess, datasets_dir: Path
) -> None:
    import threading
    import time

    import psycopg

    name = f"big_{uuid.uuid4().hex[:8]}"
    path = datasets_dir / f"{name}.jsonl"
    path.write_text("".join(json.dumps({"n": i}) + "\n" for i in range(5)))
    assert ok(loader, f"SELECT rows FROM pgml.load_dataset('{name}')") == ["5"]
    text = "x" * 2000
    path.write_text("".join(json.dumps({"n": i, "t": text}) + "\n" for i in range(400_000)))
    with psycopg.connect(loader.dsn(), autocommit=True) as conn:
        timer = threading.Timer(1.0, conn.cancel_safe)
        timer.start()
        started = time.monotonic()
        with pytest.raises(psycopg.errors.QueryCanceled):
            conn.execute(f"SELECT pgml.load_dataset('{name}')")
        assert time.monotonic() - started < 6
        timer.join()
        assert conn.execute(f'SELECT count(*) FROM pgml."{name}"').fetchone() == (5,)
