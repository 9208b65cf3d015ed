"""The model memory budget: sizes, least-recently-used eviction, models in use, refusals,
and a CUDA out-of-memory failing one call."""

from __future__ import annotations

import asyncio
import gc
import time
from pathlib import Path
from typing import Any

import pytest
import torch

from handlers.errors import PgmlError
from handlers.modelcache import (
    MemorySetting,
    ModelCache,
    measure,
    parse_memory,
    until_stopped,
    weights_bytes,
)
from handlers.serving import Services


class Model:
    """A loaded model stand-in: a torch module of ``size`` float32 parameters."""

    def __init__(self, size: int) -> None:
        self.model = torch.nn.Linear(size, 1, bias=False)


def load(size: int) -> Any:
    async def loader() -> Model:
        return Model(size)

    return loader


def bytes_of(size: int) -> int:
    return size * 4


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("1000", MemorySetting(bytes=1000)),
        ("8GiB", MemorySetting(bytes=8 * 1024**3)),
        ("500MB", MemorySetting(bytes=500 * 1000**2)),
        ("0.5", MemorySetting(share=0.5)),
        ("80%", MemorySetting(share=0.8)),
        (None, MemorySetting()),
    ],
)
def test_parse_memory(text: str | None, expected: MemorySetting) -> None:
    assert parse_memory(text) == expected


@pytest.mark.parametrize("text", ["lots", "0", "-1", "150%", "0.0", "3 parsecs"])
def test_parse_memory_refuses(text: str) -> None:
    with pytest.raises(ValueError, match="--model-memory"):
        parse_memory(text)


def test_default_budget_is_a_share_of_ram_on_the_cpu() -> None:
    budget = MemorySetting().resolve("cpu")
    assert 0 < budget < MemorySetting(share=1.0).resolve("cpu")


def test_measure_and_weights_bytes(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    module = torch.nn.Linear(10, 10)
    assert measure(Model(25)) == bytes_of(25)
    save_file({"w": module.weight.detach(), "b": module.bias.detach()}, tmp_path / "m.safetensors")
    assert weights_bytes(tmp_path) == 110 * 4
    assert weights_bytes(tmp_path, element_size=2) == 110 * 2


def test_least_recently_used_idle_model_is_evicted() -> None:
    async def scenario() -> None:
        cache = ModelCache(MemorySetting(bytes=bytes_of(250)))
        a = await cache.get("a", load(100))
        await cache.get("b", load(100))
        await cache.get("a", load(100))  # b is now the least recently used
        await cache.get("c", load(100))
        assert [m.name for m in cache.loaded()] == ["c", "a"]
        assert cache.used <= cache.budget
        assert cache.evictions == 1
        assert await cache.get("a", load(100)) is a

    asyncio.run(scenario())


def test_peek_is_not_a_use() -> None:
    async def scenario() -> None:
        cache = ModelCache(MemorySetting(bytes=bytes_of(250)))
        a = await cache.get("a", load(100))
        calls = cache.loaded()[0].calls
        assert cache.peek("a") is a and cache.peek("b") is None
        assert cache.loaded()[0].calls == calls
        assert cache.touch("a") is a and cache.loaded()[0].calls == calls + 1

    asyncio.run(scenario())


def test_a_model_in_use_is_never_evicted() -> None:
    async def scenario() -> None:
        cache = ModelCache(MemorySetting(bytes=bytes_of(250)))
        async with cache.lease("a", load(100)):
            await cache.get("b", load(100))
            await cache.get("c", load(100))
            assert {m.name for m in cache.loaded()} == {"a", "c"}
        await cache.get("d", load(100))  # a's last use was the end of its lease, after c
        assert {m.name for m in cache.loaded()} == {"a", "d"}

    asyncio.run(scenario())


def test_too_large_for_the_budget_is_53200_before_loading() -> None:
    async def scenario() -> None:
        cache = ModelCache(MemorySetting(bytes=bytes_of(50)))
        loads = 0

        async def never() -> Model:
            nonlocal loads
            loads += 1
            return Model(100)

        async def estimate() -> int:
            return bytes_of(100)

        with pytest.raises(PgmlError) as caught:
            await cache.get("big", never, estimate=estimate)
        assert caught.value.sqlstate == "53200"
        assert str(bytes_of(100)) in caught.value.message
        assert str(bytes_of(50)) in caught.value.message
        assert loads == 0
        with pytest.raises(PgmlError):  # measured after loading when there is no estimate
            await cache.get("big", load(100))
        assert cache.loaded() == [] and cache.used == 0
        assert cache.refusals == 2

    asyncio.run(scenario())


def test_no_room_while_every_model_is_in_use(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("handlers.modelcache.ROOM_WAIT", 0.2)

    async def scenario() -> None:
        cache = ModelCache(MemorySetting(bytes=bytes_of(150)))

        async def estimate() -> int:
            return bytes_of(100)

        async with cache.lease("a", load(100)):
            with pytest.raises(PgmlError) as caught:
                await cache.get("b", load(100), estimate=estimate)
            assert caught.value.sqlstate == "53200"
        await cache.get("b", load(100), estimate=estimate)

    asyncio.run(scenario())


def test_an_evicted_model_still_referenced_stays_counted() -> None:
    async def scenario() -> None:
        cache = ModelCache(MemorySetting(bytes=bytes_of(250)))
        held = await cache.get("a", load(100))
        await cache.get("b", load(100))
        await cache.get("c", load(100))  # evicts a, which is still referenced here, then b
        assert [m.name for m in cache.loaded()] == ["c"]
        assert cache.used == bytes_of(200)
        del held
        cache.collect()
        assert cache.used == bytes_of(100)

    asyncio.run(scenario())


def test_cuda_out_of_memory_fails_the_call_only() -> None:
    async def scenario() -> None:
        services = Services(device="cpu")

        def work() -> None:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

        with pytest.raises(PgmlError) as caught:
            await services.run(work)
        assert caught.value.sqlstate == "53200"
        assert "2.00 GiB" in (caught.value.detail or "")
        assert services.models.out_of_memory == 1
        assert await services.run(lambda: 42) == 42
        await services.close()

    asyncio.run(scenario())


def test_a_load_larger_than_its_estimate_is_dropped_when_no_room(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr("handlers.modelcache.ROOM_WAIT", 0.2)

    async def scenario() -> None:
        cache = ModelCache(MemorySetting(bytes=bytes_of(250)))

        async def small() -> int:
            return bytes_of(10)

        async with cache.lease("a", load(100)):
            with pytest.raises(PgmlError) as caught:
                await cache.get("b", load(200), estimate=small)
            assert caught.value.sqlstate == "53200"
            assert [m.name for m in cache.loaded()] == ["a"]
            cache.collect()
            assert cache.used == bytes_of(100)

    asyncio.run(scenario())


def test_picking_the_device_leaves_the_event_loop_free() -> None:
    """The first load picks the device (PyTorch's import: seconds) off the event loop."""

    def slow_device() -> str:
        time.sleep(0.5)
        return "cpu"

    async def scenario() -> None:
        cache = ModelCache(MemorySetting(bytes=bytes_of(250)), slow_device)
        ticks = 0

        async def ticker() -> None:
            nonlocal ticks
            while True:
                await asyncio.sleep(0.01)
                ticks += 1

        running = asyncio.ensure_future(ticker())
        await cache.get("a", load(10))
        running.cancel()
        assert ticks >= 20  # the loop turned while the device was picked

    asyncio.run(scenario())


def test_a_caller_that_stops_waiting_leaves_the_load_to_the_others() -> None:
    """A cancelled statement stops waiting for a model's load at once (57014); the load
    goes on, serves the caller that waits with it, and is cached for the next one."""

    async def scenario() -> None:
        cache = ModelCache(MemorySetting(bytes=bytes_of(250)))
        release = asyncio.Event()
        loads = 0

        async def slow() -> Model:
            nonlocal loads
            loads += 1
            await release.wait()
            return Model(10)

        stop = False
        first = asyncio.ensure_future(cache.get("a", slow, stopped=lambda: stop))
        second = asyncio.ensure_future(cache.get("a", slow))
        await asyncio.sleep(0.1)
        stop = True
        began = time.monotonic()
        with pytest.raises(PgmlError) as caught:
            await first
        assert caught.value.sqlstate == "57014"
        assert time.monotonic() - began < 0.5 and not second.done()
        release.set()
        model = await second
        assert await cache.get("a", slow) is model and loads == 1

    asyncio.run(scenario())


def test_a_load_no_one_waits_for_may_fail_quietly(caplog: pytest.LogCaptureFixture) -> None:
    """Its error is retrieved by the cache (no "exception was never retrieved"), and the
    next caller loads again."""

    async def scenario() -> None:
        cache = ModelCache(MemorySetting(bytes=bytes_of(250)))

        async def broken() -> Model:
            await asyncio.sleep(0.1)
            raise OSError("unreadable weights")

        with pytest.raises(PgmlError):
            await cache.get("a", broken, stopped=lambda: True)
        await asyncio.sleep(0.2)
        gc.collect()
        assert isinstance(await cache.get("a", load(10)), Model)

    asyncio.run(scenario())
    assert "never retrieved" not in caplog.text


def test_a_failure_after_its_caller_left_is_not_reported_as_unretrieved() -> None:
    """A download or load whose caller's task is cancelled (its client left) goes on; if
    it then fails, no one waits for it, and the failure is not a "Task exception was
    never retrieved" in the log."""

    async def run() -> None:
        reported: list[dict[str, Any]] = []
        asyncio.get_running_loop().set_exception_handler(lambda _, found: reported.append(found))
        gate = asyncio.Event()

        async def work() -> None:
            await gate.wait()
            raise PgmlError("42704", 'model "gone" was not found')

        task = asyncio.ensure_future(work())
        waiter = asyncio.ensure_future(until_stopped(task, lambda: False))
        await asyncio.sleep(0.01)
        waiter.cancel()
        await asyncio.gather(waiter, return_exceptions=True)
        gate.set()
        await asyncio.sleep(0.01)
        assert task.done()
        del task, waiter
        gc.collect()
        await asyncio.sleep(0)
        assert not reported, reported

    asyncio.run(run())
