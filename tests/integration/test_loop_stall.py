"""Nothing a client sends stalls the others: ``SELECT 1`` on one connection stays quick
while another client sends a statement that is heavy for the proxy to parse and plan.

The bound here is loose for shared CI machines: p99 up by at most 100 ms, or by at most
100 ms more than the same statement with plain values in place of the calls (which the
proxy only relays) costs.  A measurement over the bound is taken again, up to
``ATTEMPTS`` times: a stall of the proxy's comes back every time, a hiccup of a shared
machine (seen here as a stall while nothing else ran) does not.  The target of +20 ms
is measured by ``benchmarks/loop_stall.py`` on a quiet machine.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.stack import Stack, private_stack
from tests.support.stall import heavy_statements, measure

SECONDS = 3.0
BOUND = 0.100
ATTEMPTS = 3
HEAVY = heavy_statements()
TWINS = heavy_statements(twin=True)


@pytest.fixture(scope="module")
def stack() -> Iterator[Stack]:
    with private_stack() as running:
        yield running


@pytest.mark.parametrize("name", list(HEAVY))
def test_select_1_not_stalled(stack: Stack, name: str) -> None:
    misses: list[str] = []
    for _ in range(ATTEMPTS):
        stall = measure(stack.proxy.port, HEAVY[name], SECONDS)
        assert not stall.idle.failures and not stall.loaded.failures
        assert stall.sent >= 1
        if stall.p99_increase <= BOUND:
            break
        # what PostgreSQL's own work on such a statement costs a machine whose cores the
        # server, the proxy and both clients share: the proxy answers for the rest
        plain = measure(stack.proxy.port, TWINS[name], SECONDS)
        if stall.p99_increase <= plain.p99_increase + BOUND:
            break
        misses.append(
            f"while another client sent a {name} ({stall.sent} times): "
            f"{stall.loaded.summary()}; alone: {stall.idle.summary()}; the same with plain "
            f"values in place of the calls: p99 up {plain.p99_increase * 1000:.1f} ms"
        )
    else:
        pytest.fail("\n".join(misses))
    assert stack.proxy_alive()
