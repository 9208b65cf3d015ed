"""A bounded fuzz run: seeded, mutated frontend traffic from several clients at once.

The run (about 30 s; ``PGML_FUZZ_SECONDS`` and ``PGML_FUZZ_SEED`` change it) happens once
for the module; each test checks one property of it: the proxy did not crash, no client
mistake got an internal error, no upstream backend outlived its client, and a control
client's ``SELECT 1`` was answered promptly throughout.  A failure names the cases, which
``benchmarks/fuzz.py --seed S --replay N`` plays again one by one.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from tests.support.fuzz import TrafficGenerator
from tests.support.fuzzrun import ControlClient, FuzzReport, Latencies, fuzz, wait_for_backends
from tests.support.stack import Stack, private_stack

SEED = int(os.environ.get("PGML_FUZZ_SEED", "12"))
SECONDS = float(os.environ.get("PGML_FUZZ_SECONDS", "30"))
SCALE = 0.25
"""Heavy inputs at a quarter of the issue's sizes: 2 MB statements, 5,000 levels, 750 calls
(the catalogued violations keep 20,000 levels and 50,000 terms)."""
WORKERS = 4
SLOW = 0.5
"""Seconds past which a control answer counts as slow, beyond the time the same query took
straight to PostgreSQL then (a busy machine delays both alike)."""
BACKENDS_GONE_WITHIN = 2.0
TRACEBACK = re.compile(r"^Traceback \(most recent call last\):$", re.MULTILINE)


@dataclass
class FuzzRun:
    stack: Stack
    report: FuzzReport
    alive: bool
    answers: bool
    left: list[str]
    latencies: Latencies
    reference: Latencies
    """The same control client straight against PostgreSQL, at the same time."""
    log: str


@pytest.fixture(scope="module")
def run() -> Iterator[FuzzRun]:
    with private_stack("--batch-size", "4") as stack:
        generator = TrafficGenerator(SEED, stack.table, scale=SCALE)
        with (
            ControlClient(stack.proxy.port, interval=0.01) as control,
            ControlClient(stack.cluster.port, interval=0.01) as reference,
        ):
            report = fuzz(
                generator, stack.proxy.port, SECONDS, workers=WORKERS, alive=stack.proxy_alive
            )
        left = wait_for_backends(stack.cluster, BACKENDS_GONE_WITHIN)
        alive = stack.proxy_alive()
        yield FuzzRun(
            stack,
            report,
            alive,
            alive and stack.answers(),
            left,
            control.latencies,
            reference.latencies,
            stack.proxy.log(),
        )


def test_fuzz_ran(run: FuzzRun) -> None:
    """The run played a meaningful number of sessions (guards the other tests' meaning)."""
    assert run.report.sessions >= 50, run.report.sessions


def test_fuzz_no_crash(run: FuzzRun) -> None:
    assert run.alive, run.log[-3000:]
    assert run.answers, "the proxy is running but does not answer a new client"


def test_fuzz_no_internal_error(run: FuzzRun) -> None:
    """No client mistake is answered with XX000, nor logged as the proxy's own bug."""
    answered = [
        f"{o.case.name} ({o.case.ending.value}): "
        + "; ".join(f"{e.get('C')} {e.get('M')}" for e in o.internal_errors)
        for o in run.report.outcomes_with_internal_errors
    ]
    tracebacks = TRACEBACK.findall(run.log)
    first = run.log[run.log.find("Traceback") - 300 :][:2500] if tracebacks else ""
    assert not answered and not tracebacks, (
        f"{len(answered)} sessions got XX000 (seed {SEED}):\n"
        + "\n".join(answered[:20])
        + f"\n{len(tracebacks)} tracebacks in the proxy's log; the first:\n{first}"
    )


def test_fuzz_no_leaked_backend(run: FuzzRun) -> None:
    """Every fuzz session's upstream backend is gone soon after its client."""
    assert not run.left, (
        f"{len(run.left)} backends still open {BACKENDS_GONE_WITHIN} s after "
        f"{run.report.sessions} sessions ended (application_name pid state wait_event query):\n"
        + "\n".join(run.left[:30])
    )


def test_fuzz_control_client_answered_promptly(run: FuzzRun) -> None:
    latencies = run.latencies
    assert not latencies.failures, latencies.failures[:5]
    assert len(latencies.values) >= SECONDS * 20, latencies.summary()
    slowest = [o.case.name for o in run.report.slowest]
    late = latencies.slow_beyond(run.reference, SLOW)
    assert late == 0, (
        f"{late} control answers slower than {SLOW} s beyond what PostgreSQL itself took "
        f"then: {latencies.summary()} (straight to PostgreSQL: {run.reference.summary()}); "
        f"slowest fuzz sessions: {slowest}"
    )
