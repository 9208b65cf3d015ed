"""Structured logs: with --log-format json every line is one JSON object, and the lines
about a pgml call name the connection, user, database and function."""

from __future__ import annotations

import json

import psycopg
import pytest

from tests.support.pgserver import PostgresCluster
from tests.support.proxyproc import ProxyProcess


@pytest.mark.parametrize("log_format", ["json", "text"])
def test_log_lines_carry_the_call_context(cluster: PostgresCluster, log_format: str) -> None:
    proxy = ProxyProcess(
        "--upstream",
        cluster.dsn(),
        "--log-level",
        "debug",
        "--log-format",
        log_format,
        env={"HF_HUB_OFFLINE": "1"},
    ).start()
    try:
        with psycopg.connect(proxy.dsn(user="scram_user"), password="scram secret") as conn:
            assert conn.execute("SELECT pgml.version()").fetchone()
            with pytest.raises(psycopg.errors.UndefinedObject):
                conn.execute("SELECT pgml.predict('no such project', 'x')")
    finally:
        proxy.stop()
    lines = [line for line in proxy.log().splitlines() if line.strip()]
    if log_format == "text":
        about = [line for line in lines if "function=pgml.version" in line]
        assert about and all("user=scram_user database=postgres" in line for line in about)
        return
    entries = [json.loads(line) for line in lines]  # every line is JSON
    assert all({"time", "level", "logger", "message"} <= e.keys() for e in entries)
    calls = [e for e in entries if e.get("function") == "pgml.version"]
    assert calls and all(
        e["user"] == "scram_user" and e["database"] == "postgres" and e["connection"] >= 1
        for e in calls
    )
