"""How a control client's slow answers are told from a busy machine's."""

from __future__ import annotations

from tests.support.fuzzrun import Latencies


def test_a_slow_answer_counts_beyond_what_postgresql_itself_took() -> None:
    proxied = Latencies([(0.0, 0.01), (1.0, 0.9), (2.0, 0.9), (3.0, 0.7)], [])
    direct = Latencies([(0.0, 0.01), (1.1, 0.8), (2.0, 0.01), (2.9, 0.1)], [])
    # 1.0: the machine made everyone wait 0.8 s; 2.0: only the proxy's answer was late;
    # 3.0: late by 0.6 s beyond the 0.1 s PostgreSQL took then
    assert proxied.slow(0.5) == 3
    assert proxied.slow_beyond(direct, 0.5) == 2
    assert proxied.slow_beyond(Latencies([], []), 0.5) == 3


def test_only_reference_queries_due_while_it_waited_excuse_an_answer() -> None:
    proxied = Latencies([(10.0, 0.9)], [])
    assert proxied.slow_beyond(Latencies([(5.0, 3.0), (11.0, 3.0)], []), 0.5) == 1
    assert proxied.slow_beyond(Latencies([(9.6, 0.7)], []), 0.5) == 0
