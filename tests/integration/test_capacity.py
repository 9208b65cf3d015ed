"""The proxy's inference capacity is bounded per call and shared between callers: the
limits are refused with SQLSTATE 54000 naming them, and a generation no one waits for
any more (its client left) stops, leaving the model and the threads to the others."""

from __future__ import annotations

import signal
import subprocess
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FuturesTimeout
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import errors

from tests.integration._transform import model_proxy
from tests.support.pgserver import PostgresCluster
from tests.support.proxyproc import ProxyProcess
from tests.support.tiny_pipelines import (
    CROSS_ENCODER,
    LONG,
    SENTIMENT,
    UNBOUNDED,
    build_long_generator,
    build_pipeline_models,
)

ROLES = ("capacity_alice", "capacity_bob")


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_long_generator(build_pipeline_models(tmp_path_factory.mktemp("capacity")))


@pytest.fixture(scope="module")
def proxy(cluster: PostgresCluster, models: Path) -> Iterator[ProxyProcess]:
    for role in ROLES:
        cluster.psql(f"DROP ROLE IF EXISTS {role}; CREATE ROLE {role} LOGIN")
    process = model_proxy(
        cluster,
        models,
        "--max-new-tokens",
        str(UNBOUNDED),
        "--inference-threads",
        "2",
        "--max-inputs",
        "5",
        "--max-input-chars",
        "1000",
        "--max-stream-rows",
        "10",
    )
    yield process
    process.stop()
    for role in ROLES:
        cluster.psql(f"DROP ROLE IF EXISTS {role}")


def transform(model: str, args: str, text: str = "hello") -> str:
    task = f'{{"task": "text-generation", "model": "{model}"}}'
    return f"SELECT pgml.transform('{task}'::jsonb, '{args}', ARRAY['{text}'])"


def classify(*texts: str) -> str:
    task = f'{{"task": "text-classification", "model": "{SENTIMENT}"}}'
    inputs = ", ".join(f"'{text}'" for text in texts or ("great",))
    return f"SELECT pgml.transform('{task}'::jsonb, inputs => ARRAY[{inputs}])"


SHORT = '{"max_new_tokens": 2, "do_sample": false}'
FOREVER = f'{{"min_new_tokens": {UNBOUNDED}, "max_new_tokens": {UNBOUNDED}, "do_sample": false}}'


def answered_in(dsn: str, sql: str, wait: float = 20.0) -> float:
    """Seconds one statement took through a new connection (it must succeed within
    ``wait`` seconds, else it is cancelled and the test fails)."""
    began = time.monotonic()
    with psycopg.connect(dsn, autocommit=True) as conn, ThreadPoolExecutor(1) as pool:
        running = pool.submit(lambda: conn.execute(sql).fetchall())
        try:
            running.result(wait)
        except FuturesTimeout:
            conn.cancel_safe()
            raise AssertionError(f"no answer in {wait} s: {sql}") from None
    return time.monotonic() - began


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / 100  # utime + stime, in clock ticks


def busy(pid: int, seconds: float = 1.0) -> float:
    """Share of one core the process used over ``seconds``."""
    before = cpu_seconds(pid)
    time.sleep(seconds)
    return (cpu_seconds(pid) - before) / seconds


def test_a_generation_whose_client_left_frees_the_model_and_the_threads(
    proxy: ProxyProcess,
) -> None:
    alice, bob = (proxy.dsn(user=role) for role in ROLES)
    assert proxy.process is not None
    pid = proxy.process.pid
    answered_in(bob, classify())  # both models loaded before the clock runs
    answered_in(bob, transform(LONG, SHORT))
    endless = subprocess.Popen(
        ["psql", alice, "-c", transform(LONG, FOREVER)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 30
        while busy(pid, 0.5) < 0.5:  # the generation is under way
            assert time.monotonic() < deadline, "the generation did not start"
            assert endless.poll() is None, "the generation ended"
        # while it runs, another model and another caller are served
        waited = answered_in(bob, classify("fine"))
        assert waited < 2.0, f"another model waited {waited:.2f} s"
        assert endless.poll() is None, "the generation ended"
    finally:
        endless.kill()  # the client leaves without a word
        endless.wait()
    left = time.monotonic()
    waits = {
        "the same model": answered_in(bob, transform(LONG, SHORT)),
        "another model": answered_in(bob, classify("ok")),
        "the first caller again": answered_in(alice, transform(LONG, SHORT)),
    }
    assert all(w < 2.0 for w in waits.values()) and time.monotonic() - left < 4.0, waits
    used = busy(pid)
    assert used < 0.3, f"the proxy still computes: {used:.0%} of a core"


@pytest.mark.parametrize(
    ("sql", "limit"),
    [
        (transform(LONG, f'{{"max_new_tokens": {UNBOUNDED + 1}}}'), "--max-new-tokens"),
        (transform(LONG, f'{{"min_new_tokens": {UNBOUNDED + 1}}}'), "--max-new-tokens"),
        (transform(LONG, f'{{"max_length": {UNBOUNDED + 1}}}'), "--max-new-tokens"),
        (classify("a", "b", "c", "d", "e", "f"), "--max-inputs"),
        (classify("x" * 1001), "--max-input-chars"),
        (
            "SELECT pgml.embed('sentence-transformers/all-MiniLM-L6-v2', repeat('x', 1001))",
            "--max-input-chars",
        ),
        (
            f"SELECT * FROM pgml.rank('{CROSS_ENCODER}', 'q', ARRAY['a', 'b', 'c', 'd', 'e', 'f'])",
            "--max-inputs",
        ),
        (
            f'SELECT * FROM pgml.transform_stream(\'{{"task": "text-generation", '
            f'"model": "{LONG}"}}\'::jsonb, \'{{"min_new_tokens": 400, "max_new_tokens": 400, '
            "\"do_sample\": false}', 'hello')",
            "--max-stream-rows",
        ),
    ],
)
def test_limits_are_refused_naming_them(proxy: ProxyProcess, sql: str, limit: str) -> None:
    with psycopg.connect(proxy.dsn(), autocommit=True) as conn:
        with pytest.raises(errors.ProgramLimitExceeded) as raised:
            conn.execute(sql).fetchall()
        hint = raised.value.diag.message_hint or ""
        assert limit in hint, raised.value
        assert conn.execute("SELECT 1").fetchone() == (1,)


def test_within_the_limits(proxy: ProxyProcess) -> None:
    with psycopg.connect(proxy.dsn(), autocommit=True) as conn:
        rows: list[Any] = conn.execute(classify("a", "b", "c", "d", "x" * 1000)).fetchall()
        assert len(rows[0][0]) == 5
        streamed = conn.execute(
            f'SELECT * FROM pgml.transform_stream(\'{{"task": "text-generation", '
            f'"model": "{LONG}"}}\'::jsonb, \'{{"max_new_tokens": 3, "do_sample": false}}\', '
            "'hello')"
        ).fetchall()
        assert 1 <= len(streamed) <= 10


def test_a_shutdown_ends_a_generation_under_way(cluster: PostgresCluster, models: Path) -> None:
    """SIGTERM ends the proxy within --shutdown-grace (and the time a generation takes to
    reach its next token), whatever it runs."""
    grace = 1.0
    process = model_proxy(
        cluster, models, "--max-new-tokens", str(UNBOUNDED), "--shutdown-grace", str(grace)
    )
    endless: subprocess.Popen[bytes] | None = None
    try:
        assert process.process is not None
        pid = process.process.pid
        endless = subprocess.Popen(
            ["psql", process.dsn(), "-c", transform(LONG, FOREVER)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 60
        while f"loaded pipeline {LONG}" not in process.log() or busy(pid, 0.5) < 0.5:
            assert time.monotonic() < deadline, "the generation did not start"
        stopped_at = time.monotonic()
        process.process.send_signal(signal.SIGTERM)
        code = process.process.wait(grace + 10)
        took = time.monotonic() - stopped_at
        assert took < grace + 3, f"the proxy took {took:.1f} s to stop"
        assert code == 0
        assert endless.wait(10) != 0  # its client heard of the shutdown
    finally:
        if endless is not None:
            endless.kill()
        process.stop()
