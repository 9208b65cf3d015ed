"""The counters ``/metrics`` adds up over relay processes: a snapshot crosses processes as
JSON unchanged, and two add up field by field, histogram buckets included."""

from __future__ import annotations

import json

from proxy import metrics
from proxy.metrics import LATENCY_BUCKETS, Counters


def test_a_snapshot_crosses_as_json_and_two_add_up() -> None:
    metrics.record_call("pgml.embed", True, 0.002)
    metrics.record_call("pgml.embed", False, 3.0)
    metrics.record_rows("pgml.embed", 10, 9)
    one = metrics.snapshot(connections_open=3)
    again = Counters.from_json(json.loads(json.dumps(one.to_json())))
    assert again == one
    total = Counters.from_json(json.loads(json.dumps(one.to_json())))
    total.add(again)
    assert total.connections_open == 6
    assert total.calls[("pgml.embed", "ok")] == 2 * one.calls[("pgml.embed", "ok")]
    assert total.rows_out["pgml.embed"] == 2 * one.rows_out["pgml.embed"]
    buckets, count, seconds = total.latency["pgml.embed"]
    assert count == 2 * one.latency["pgml.embed"][1]
    assert seconds == 2 * one.latency["pgml.embed"][2]
    cumulative = total.cumulative("pgml.embed")
    assert [bound for bound, _ in cumulative] == [*map(repr, LATENCY_BUCKETS), "+Inf"]
    assert cumulative[-1][1] == count == sum(buckets)


def test_adding_a_process_that_saw_other_functions_keeps_both() -> None:
    mine = Counters(calls={("pgml.predict", "ok"): 1}, latency={"pgml.predict": ([1], 1, 0.5)})
    theirs = Counters(calls={("pgml.embed", "ok"): 2}, rows_in={"pgml.embed": 4})
    mine.add(theirs)
    assert mine.calls == {("pgml.predict", "ok"): 1, ("pgml.embed", "ok"): 2}
    assert mine.rows_in == {"pgml.embed": 4}
    assert mine.latency == {"pgml.predict": ([1], 1, 0.5)}
