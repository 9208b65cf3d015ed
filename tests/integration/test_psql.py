"""psql through the proxy: its output must equal that of the same command run directly."""

from __future__ import annotations

import os
import re
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support.pgserver import BIN, PostgresCluster
from tests.support.proxyproc import ProxyProcess

PSQL = str(BIN / "psql")


@dataclass(frozen=True)
class Run:
    """What one psql invocation produced, with the server port replaced by ``PORT``."""

    returncode: int
    stdout: str
    stderr: str


def psql(dsn: str, port: int, *args: str, cwd: Path | None = None) -> Run:
    """Run psql (without psqlrc) against ``dsn`` and normalize the port in its output."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("PG")}
    env["PGCONNECT_TIMEOUT"] = "10"
    result = subprocess.run(
        [PSQL, "-X", "-d", dsn, *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=cwd,
        timeout=30,
    )
    return Run(
        result.returncode,
        result.stdout.replace(str(port), "PORT"),
        result.stderr.replace(str(port), "PORT"),
    )


def both(
    cluster: PostgresCluster, proxy: ProxyProcess, *args: str, cwd: Path | None = None
) -> tuple[Run, Run]:
    """Run the same psql command directly, then through the proxy."""
    direct = psql(cluster.dsn(), cluster.port, *args, cwd=cwd)
    proxied = psql(proxy.dsn(), proxy.port, *args, cwd=cwd)
    return direct, proxied


@pytest.fixture
def table(cluster: PostgresCluster) -> Iterator[str]:
    """A fresh table name, dropped (with any suffixed variants) after the test."""
    name = f"psql_{uuid.uuid4().hex[:10]}"
    yield name
    cluster.psql(f"DROP TABLE IF EXISTS {name}, {name}_direct, {name}_proxy")


def test_several_dash_c(cluster: PostgresCluster, proxy: ProxyProcess) -> None:
    """Several ``-c`` options run in one session, in order, with the same output."""
    args = (
        "-c", "CREATE TEMP TABLE t (id int, label text)",
        "-c", "INSERT INTO t SELECT g, 'row ' || g FROM generate_series(1, 5) g",
        "-c", "SELECT id, label, pg_typeof(label) FROM t ORDER BY id",
        "-c", "SELECT count(*), sum(id) FROM t",
        "-c", r"\pset format unaligned",
        "-c", "SELECT current_user, current_database(), inet_server_port() IS NOT NULL",
    )  # fmt: skip
    direct, proxied = both(cluster, proxy, *args)
    assert direct.returncode == 0, direct.stderr
    assert "row 5" in direct.stdout and "postgres|postgres|t" in direct.stdout
    assert re.search(r"^\s*5 \|\s+15$", direct.stdout, re.MULTILINE)
    assert proxied == direct


def test_multi_statement_simple_query(cluster: PostgresCluster, proxy: ProxyProcess) -> None:
    """One simple Query with two statements returns both result sets."""
    direct, proxied = both(cluster, proxy, "-c", "select 1; select 2;")
    assert direct.returncode == 0, direct.stderr
    assert direct.stdout.count("(1 row)") == 2
    assert proxied == direct


def test_multi_statement_with_error(cluster: PostgresCluster, proxy: ProxyProcess) -> None:
    """An error in the middle of a multi-statement string ends it like upstream does."""
    direct, proxied = both(cluster, proxy, "-c", "select 1 as a; select 1/0; select 3 as c;")
    assert direct.returncode == 1
    assert "division by zero" in direct.stderr
    assert proxied == direct


SCRIPT = """\
CREATE TEMP TABLE items (id int PRIMARY KEY, name text NOT NULL);
INSERT INTO items VALUES (1, 'one'), (2, 'two');
SELECT * FROM items ORDER BY id;
INSERT INTO items VALUES (1, 'duplicate');
SELECT 'after the error' AS note, count(*) FROM items;
UPDATE items SET name = upper(name) RETURNING *;
"""


@pytest.mark.parametrize("stop", ["1", "0"], ids=["on_error_stop", "go_on"])
def test_file_with_error_midway(
    cluster: PostgresCluster, proxy: ProxyProcess, tmp_path: Path, stop: str
) -> None:
    """``-f`` a script whose fourth statement fails, with and without ON_ERROR_STOP."""
    script = tmp_path / "script.sql"
    script.write_text(SCRIPT)
    direct, proxied = both(
        cluster, proxy, "-v", f"ON_ERROR_STOP={stop}", "-f", "script.sql", cwd=tmp_path
    )
    assert "duplicate key value violates unique constraint" in direct.stderr
    if stop == "1":
        assert direct.returncode == 3
        assert "after the error" not in direct.stdout
    else:
        assert direct.returncode == 0
        assert "after the error" in direct.stdout and "TWO" in direct.stdout
    assert proxied == direct


def test_notice_on_stderr(cluster: PostgresCluster, proxy: ProxyProcess) -> None:
    """RAISE NOTICE in a DO block reaches psql's stderr, as well as WARNING and INFO."""
    body = (
        "DO $$ BEGIN "
        "RAISE NOTICE 'notice number %', 6 * 7; "
        "RAISE WARNING 'a warning'; "
        "RAISE INFO 'some info'; "
        "END $$"
    )
    direct, proxied = both(cluster, proxy, "-c", body, "-c", "SELECT 'done'")
    assert direct.returncode == 0
    assert "NOTICE:  notice number 42" in direct.stderr
    assert "WARNING:  a warning" in direct.stderr
    assert "done" in direct.stdout
    assert proxied == direct


def write_copy_source(path: Path, rows: int) -> None:
    """A COPY text file with escapes, NULLs, multibyte text and enough rows for many reads."""
    lines = []
    for i in range(1, rows + 1):
        note = r"\N" if i % 97 == 0 else f"line {i}\\twith tab\\\\backslash é ✓ {'x' * (i % 50)}"
        lines.append(f"{i}\t{note}\t{i * 1.5}\n")
    path.write_text("".join(lines), encoding="utf-8")


def test_copy_in_and_out(
    cluster: PostgresCluster, proxy: ProxyProcess, table: str, tmp_path: Path
) -> None:
    r"""``\copy`` from a file and to a file through the proxy matches a direct ``\copy``."""
    source = tmp_path / "source.tsv"
    write_copy_source(source, 20_000)
    for suffix in ("direct", "proxy"):
        cluster.psql(f"CREATE TABLE {table}_{suffix} (id int, note text, amount numeric)")

    results = []
    for suffix, dsn, port in (
        ("direct", cluster.dsn(), cluster.port),
        ("proxy", proxy.dsn(), proxy.port),
    ):
        copy_in = psql(dsn, port, "-c", rf"\copy {table}_{suffix} from 'source.tsv'", cwd=tmp_path)
        copy_out = psql(
            dsn,
            port,
            "-c",
            rf"\copy (SELECT * FROM {table}_{suffix} ORDER BY id) to '{suffix}.tsv'",
            cwd=tmp_path,
        )
        results.append((copy_in, copy_out))

    (direct_in, direct_out), (proxy_in, proxy_out) = results
    assert direct_in == Run(0, "COPY 20000\n", "")
    assert (proxy_in, proxy_out) == (direct_in, direct_out)
    assert (tmp_path / "proxy.tsv").read_bytes() == (tmp_path / "direct.tsv").read_bytes()
    assert (tmp_path / "direct.tsv").read_bytes() == source.read_bytes()
    compare = (
        f"SELECT count(*) FROM {table}_direct d FULL JOIN {table}_proxy p USING (id) "
        "WHERE d IS DISTINCT FROM p"
    )
    assert cluster.psql(compare).strip() == "0"


def test_copy_in_error_midway(
    cluster: PostgresCluster, proxy: ProxyProcess, table: str, tmp_path: Path
) -> None:
    r"""A ``\copy`` with a bad line fails the same way and loads nothing, then psql goes on."""
    source = tmp_path / "bad.tsv"
    source.write_text("".join(f"{i}\tok\n" for i in range(1, 5000)) + "oops\tbad\n")
    cluster.psql(f"CREATE TABLE {table} (id int, note text)")
    args = ("-c", rf"\copy {table} from 'bad.tsv'", "-c", f"SELECT count(*) FROM {table}")
    direct, proxied = both(cluster, proxy, *args, cwd=tmp_path)
    assert "invalid input syntax for type integer" in direct.stderr
    assert proxied == direct
