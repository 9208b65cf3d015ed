"""The limits of one call and the stopping of a generation, without a model."""

from __future__ import annotations

import asyncio

import pytest
import torch

from handlers.capacity import Capacity, Limits
from handlers.errors import PgmlError


def stops_after(capacity: Capacity, lengths: list[int], stopped: bool = False) -> list[bool]:
    """What the criteria say after each step of generations whose sequences grow as given."""
    [criterion] = capacity.generation_stops(lambda: stopped)
    return [bool(criterion(torch.zeros((2, n), dtype=torch.long), None).all()) for n in lengths]


def test_a_generation_stops_at_the_token_limit_and_each_chunk_counts_anew() -> None:
    capacity = Capacity(Limits(max_new_tokens=3))
    # a prompt of 4 tokens: 5, 6, 7 after one, two, three new tokens; then a second chunk
    # of the same pipeline call with a prompt of 9 tokens
    assert stops_after(capacity, [5, 6, 7, 10, 11, 12]) == [False, False, True, False, False, True]


def test_a_generation_stops_when_told() -> None:
    assert stops_after(Capacity(Limits()), [5], stopped=True) == [True]
    capacity = Capacity(Limits())
    capacity.closing.set()
    assert capacity.stopped(lambda: False)()


@pytest.mark.parametrize("key", ["max_new_tokens", "min_new_tokens", "max_length", "min_length"])
def test_token_requests_over_the_limit_are_refused(key: str) -> None:
    capacity = Capacity(Limits(max_new_tokens=10))
    capacity.check_generation("pgml.generate", {key: 10})
    with pytest.raises(PgmlError) as raised:
        capacity.check_generation("pgml.generate", {key: 11})
    assert raised.value.sqlstate == "54000"
    assert raised.value.hint is not None and "--max-new-tokens" in raised.value.hint


def test_inputs_and_characters() -> None:
    capacity = Capacity(Limits(max_inputs=2, max_input_chars=8))
    capacity.check_inputs("pgml.embed", ["abcde", {"q": 1}])
    for items, flag in (
        (["a", "b", "c"], "--max-inputs"),
        (["abcdefghi"], "--max-input-chars"),
        ([{"question": "x"}], "--max-input-chars"),
    ):
        with pytest.raises(PgmlError) as raised:
            capacity.check_inputs("pgml.embed", items)
        assert raised.value.sqlstate == "54000" and flag in (raised.value.hint or "")


def test_one_caller_holds_all_threads_but_one() -> None:
    async def scenario() -> tuple[int, bool]:
        capacity = Capacity(Limits(inference_threads=3))
        held = 0
        release = asyncio.Event()

        async def hold(caller: str) -> None:
            nonlocal held
            async with capacity.caller_share(caller):
                held += 1
                await release.wait()

        tasks = [asyncio.ensure_future(hold("alice")) for _ in range(4)]
        await asyncio.sleep(0.05)
        alice = held
        other = asyncio.ensure_future(hold("bob"))
        await asyncio.sleep(0.05)
        bob_served = held == alice + 1
        release.set()
        await asyncio.gather(*tasks, other)
        return alice, bob_served

    assert asyncio.run(scenario()) == (2, True)
