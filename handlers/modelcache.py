"""One memory budget for every model the proxy holds.

Every loaded model (a project's predictor, an embedder, a pipeline, a cross-encoder, a
shared base model) is an entry here with its measured size.  Loading a model first makes
room for it by evicting idle entries, least recently used first; an entry that a running
call holds (``lease`` / ``using``) is never evicted.  A model larger than the whole budget
is refused with SQLSTATE 53200 and the proxy goes on serving the others.  An evicted model
that something still references stays counted until it is really freed.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import logging
import os
import re
import sys
import time
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable, Hashable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from handlers.errors import PgmlError, statement_cancelled

log = logging.getLogger("pgml_proxy.models")

DEFAULT_GPU_SHARE = 0.8
"""Share of the GPU's memory that models may use by default (the rest is for activations)."""
DEFAULT_RAM_SHARE = 0.5
"""Share of the machine's RAM that models may use by default on the CPU."""
T = TypeVar("T")

STOP_POLL = 0.05
"""Seconds between two looks at whether a caller waiting for a load has stopped."""
ROOM_WAIT = 60.0
"""Seconds a load waits for models in use to become idle before it is refused."""

_UNITS = {
    "": 1,
    "b": 1,
    "k": 1000,
    "kb": 1000,
    "m": 1000**2,
    "mb": 1000**2,
    "g": 1000**3,
    "gb": 1000**3,
    "t": 1000**4,
    "tb": 1000**4,
    "kib": 1024,
    "mib": 1024**2,
    "gib": 1024**3,
    "tib": 1024**4,
}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([a-z]*)\s*$", re.IGNORECASE)
_SAFETENSORS_BYTES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2}
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf", ".ggml")
_NOT_WEIGHTS = ("training_args.bin", "optimizer.pt", "scheduler.pt", "rng_state.pth")


@dataclass(frozen=True, slots=True)
class MemorySetting:
    """``--model-memory``: a number of bytes, or a share of the device's memory."""

    bytes: int | None = None
    share: float | None = None

    def resolve(self, device: str) -> int:
        if self.bytes is not None:
            return self.bytes
        total, default_share = device_memory(device)
        return int(total * (self.share if self.share is not None else default_share))

    def describe(self) -> str:
        if self.bytes is not None:
            return f"{self.bytes} bytes"
        return "the default share" if self.share is None else f"{self.share:g} of the device"


def parse_memory(text: str | None) -> MemorySetting:
    """``8GiB``, ``500MB``, ``1000000`` (bytes), ``0.5`` or ``50%`` (of the device's memory)."""
    if text is None or not text.strip():
        return MemorySetting()
    raw = text.strip()
    if raw.endswith("%"):
        share = float(raw[:-1]) / 100
        if not 0 < share <= 1:
            raise ValueError(f"--model-memory {text!r}: a percentage must be in (0, 100]")
        return MemorySetting(share=share)
    found = _SIZE.match(raw)
    if found is None or found.group(2).lower() not in _UNITS:
        raise ValueError(
            f"--model-memory {text!r}: give bytes (8GiB, 500MB, 1000000) or a share (0.5, 50%)"
        )
    number, unit = float(found.group(1)), found.group(2).lower()
    if not unit and number <= 1 and "." in found.group(1):
        if number <= 0:
            raise ValueError(f"--model-memory {text!r}: a share must be in (0, 1]")
        return MemorySetting(share=number)
    size = int(number * _UNITS[unit])
    if size < 1:
        raise ValueError(f"--model-memory {text!r} is not a positive size")
    return MemorySetting(bytes=size)


def device_memory(device: str) -> tuple[int, float]:
    """Total memory of ``device`` (the GPU's, else the machine's RAM) and its default share."""
    if device.startswith("cuda"):
        import torch

        index = torch.device(device).index
        if index is None:
            index = torch.cuda.current_device()
        props = torch.cuda.get_device_properties(index)
        return int(props.total_memory), DEFAULT_GPU_SHARE
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"), DEFAULT_RAM_SHARE


def weights_bytes(folder: Path, element_size: int | None = None) -> int:
    """Bytes the weights in ``folder`` will take once loaded.

    Safetensors headers give each tensor's shape and type, so floating tensors are counted
    at ``element_size`` bytes when the model is loaded in another precision; other weight
    files count their size on disk.
    """
    total = 0
    for path in sorted(folder.rglob("*")):
        if not path.is_file() or path.name in _NOT_WEIGHTS or path.suffix not in _WEIGHT_SUFFIXES:
            continue
        if path.suffix == ".safetensors":
            try:
                total += _safetensors_bytes(path, element_size)
            except (ValueError, KeyError, TypeError, AttributeError) as exc:
                raise PgmlError(
                    "22023",
                    f'the model\'s weights file "{path.relative_to(folder)}" is not a '
                    "safetensors file",
                    detail=f"Its header cannot be read ({type(exc).__name__}).",
                ) from exc
        else:
            total += path.stat().st_size
    return total


def _safetensors_bytes(path: Path, element_size: int | None) -> int:
    with path.open("rb") as handle:
        length = int.from_bytes(handle.read(8), "little")
        header = json.loads(handle.read(length))
    total = 0
    for name, tensor in header.items():
        if name == "__metadata__":
            continue
        count = 1
        for n in tensor["shape"]:
            count *= int(n)
        kind = tensor["dtype"]
        size = _SAFETENSORS_BYTES.get(kind, 1)
        if element_size is not None and kind in ("F64", "F32", "F16", "BF16"):
            size = element_size
        total += count * size
    return total


def measure(value: Any) -> int:
    """Bytes of the parameters and buffers of the torch modules ``value`` holds (itself,
    its attributes and their attributes), each tensor counted once; or what its
    ``memory_bytes()`` says, when that gives a number (a value sharing another entry's
    weights)."""
    own = getattr(value, "memory_bytes", None)
    if callable(own) and (size := own()) is not None:
        return int(size)
    torch = sys.modules.get("torch")
    if torch is None:
        return 0
    seen: set[int] = set()
    total = 0
    for module in _modules(value, torch.nn.Module):
        for tensor in (*module.parameters(), *module.buffers()):
            if tensor.is_meta:
                continue
            key = tensor.data_ptr() or id(tensor)
            if key not in seen:
                seen.add(key)
                total += tensor.numel() * tensor.element_size()
    return total


def _modules(value: Any, module_type: type, depth: int = 2) -> Iterator[Any]:
    if isinstance(value, module_type):
        yield value
        return
    if depth == 0:
        return
    children = getattr(value, "__dict__", None)
    if isinstance(children, dict):
        for child in children.values():
            yield from _modules(child, module_type, depth - 1)
    elif isinstance(value, tuple | list):
        for child in value:
            yield from _modules(child, module_type, depth - 1)


def too_large(name: str, size: int, budget: int, setting: MemorySetting) -> PgmlError:
    return PgmlError(
        "53200",
        f'model "{name}" needs {_human(size)} ({size} bytes), more than the model memory '
        f"budget of {_human(budget)} ({budget} bytes)",
        detail=f"--model-memory is {setting.describe()}; the budget holds every loaded model.",
        hint="Raise --model-memory, or use a smaller or quantized model.",
    )


def _human(size: float) -> str:
    for unit in ("bytes", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "bytes" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} GiB"


@dataclass(slots=True)
class Entry:
    key: Hashable
    name: str
    kind: str
    value: Any
    bytes: int
    loaded_at: float
    last_used: float
    users: int = 0
    calls: int = 0


@dataclass(frozen=True, slots=True)
class LoadedModel:
    """What the dashboard and ``/metrics`` show of one entry."""

    @staticmethod
    def project_entry(project: str, model_id: int) -> str:
        """The name a project's loaded model is shown by."""
        return f"{project} (model {model_id})"

    def project(self) -> str:
        """The project of a ``project`` entry, from its name."""
        return self.name.rsplit(" (model ", 1)[0]

    name: str
    kind: str
    bytes: int
    loaded_at: float
    last_used: float
    users: int
    calls: int


async def until_stopped(work: asyncio.Future[T], stopped: Callable[[], bool]) -> T:
    """``work``'s result, or 57014 as soon as ``stopped()`` (looked at every
    :data:`STOP_POLL` seconds): ``work`` goes on, for others waiting on it or for the
    next call (a download, a load), and a failure of it no one waits for any more (the
    caller stopped, or its task was cancelled) is dropped."""
    try:
        while not work.done():
            await asyncio.wait([work], timeout=STOP_POLL)
            if not work.done() and stopped():
                raise statement_cancelled()
    except BaseException:  # stopped, or the caller's task cancelled (its client left)
        work.add_done_callback(_retrieved)
        raise
    return work.result()


def _retrieved(done: asyncio.Future[Any]) -> None:
    if not done.cancelled():
        done.exception()


@dataclass
class ModelCache:
    """Loaded models under one budget, evicted least recently used."""

    setting: MemorySetting = field(default_factory=MemorySetting)
    device: Callable[[], str] = lambda: "cpu"
    _entries: dict[Hashable, Entry] = field(default_factory=dict)
    _loading: dict[Hashable, asyncio.Future[Any]] = field(default_factory=dict)
    _reserved: dict[Hashable, int] = field(default_factory=dict)
    _draining: dict[int, int] = field(default_factory=dict)
    _budget: int | None = None
    _changed: asyncio.Condition | None = None
    _waiting: int = 0
    _wakers: set[asyncio.Task[None]] = field(default_factory=set)
    evictions: int = 0
    refusals: int = 0
    out_of_memory: int = 0

    @property
    def budget(self) -> int:
        if self._budget is None:
            self._budget = self.setting.resolve(self.device())
            log.info("model memory budget: %d bytes (%s)", self._budget, self.setting.describe())
        return self._budget

    @property
    def known_budget(self) -> int | None:
        """The budget once a model has been loaded (reading it earlier picks the device)."""
        return self._budget

    @property
    def used(self) -> int:
        """Bytes held by loaded models, loads in progress and evicted models not yet freed."""
        return (
            sum(e.bytes for e in self._entries.values())
            + sum(self._reserved.values())
            + sum(self._draining.values())
        )

    def loaded(self) -> list[LoadedModel]:
        return [
            LoadedModel(e.name, e.kind, e.bytes, e.loaded_at, e.last_used, e.users, e.calls)
            for e in sorted(self._entries.values(), key=lambda e: -e.last_used)
        ]

    def values(self) -> list[Any]:
        return [e.value for e in self._entries.values()]

    def touch(self, key: Hashable) -> Any | None:
        """The model under ``key`` if it is loaded (counted as a use), else None."""
        entry = self._entries.get(key)
        if entry is None:
            return None
        entry.last_used = time.time()
        entry.calls += 1
        return entry.value

    def peek(self, key: Hashable) -> Any | None:
        """The model under ``key`` if it is loaded, else None; not counted as a use."""
        entry = self._entries.get(key)
        return None if entry is None else entry.value

    def discard(self, key: Hashable) -> None:
        """Forget ``key`` (a redeployed project's old model); its memory is counted until freed."""
        entry = self._entries.pop(key, None)
        if entry is not None:
            self._release(entry)

    async def get(
        self,
        key: Hashable,
        load: Callable[[], Awaitable[Any]],
        *,
        name: str | None = None,
        kind: str = "model",
        estimate: Callable[[], Awaitable[int]] | None = None,
        stopped: Callable[[], bool] = lambda: False,
    ) -> Any:
        """The model under ``key``, loaded within the budget; concurrent first callers share
        one load.  ``estimate`` gives its size before loading (to refuse or make room).

        The load is the cache's own: a caller that stops waiting (``stopped()``, looked
        at every :data:`STOP_POLL` seconds: its statement was cancelled) gets 57014 at
        once, and the load goes on for the others and the next call."""
        found = self.touch(key)
        if found is not None:
            return found
        pending = self._loading.get(key)
        if pending is None:
            pending = asyncio.ensure_future(self._first_load(key, name, kind, load, estimate))
            self._loading[key] = pending
            pending.add_done_callback(lambda done: self._loaded(key, done))
        return await until_stopped(pending, stopped)

    async def _first_load(
        self,
        key: Hashable,
        name: str | None,
        kind: str,
        load: Callable[[], Awaitable[Any]],
        estimate: Callable[[], Awaitable[int]] | None,
    ) -> Any:
        if self._budget is None:  # picking the device imports PyTorch: off the loop
            await asyncio.to_thread(self.device)
        return await self._load(key, name or _name(key), kind, load, estimate)

    def _loaded(self, key: Hashable, done: asyncio.Future[Any]) -> None:
        if self._loading.get(key) is done:
            del self._loading[key]
        _retrieved(done)  # a load no one waits for any more may fail

    @contextlib.asynccontextmanager
    async def lease(
        self,
        key: Hashable,
        load: Callable[[], Awaitable[Any]],
        *,
        name: str | None = None,
        kind: str = "model",
        estimate: Callable[[], Awaitable[int]] | None = None,
        stopped: Callable[[], bool] = lambda: False,
    ) -> AsyncIterator[Any]:
        """The model under ``key``, held (never evicted) until the block ends."""
        value = await self.get(key, load, name=name, kind=kind, estimate=estimate, stopped=stopped)
        with self.using(value):
            yield value

    @contextlib.contextmanager
    def using(self, value: Any) -> Iterator[None]:
        """Hold the entry whose model is ``value`` while the block runs."""
        entry = next((e for e in self._entries.values() if e.value is value), None)
        if entry is not None:
            entry.users += 1
        try:
            yield
        finally:
            if entry is not None:
                entry.users -= 1
                entry.last_used = time.time()
                self._notify()

    async def _load(
        self,
        key: Hashable,
        name: str,
        kind: str,
        load: Callable[[], Awaitable[Any]],
        estimate: Callable[[], Awaitable[int]] | None,
    ) -> Any:
        budget = self.budget
        expected = 0 if estimate is None else await estimate()
        if expected > budget:
            self.refusals += 1
            raise too_large(name, expected, budget, self.setting)
        await self._make_room(expected, name)
        self._reserved[key] = expected
        try:
            value = await load()
        finally:
            del self._reserved[key]
        size = measure(value)
        if size > budget:
            self.refusals += 1
            del value
            self.collect()
            raise too_large(name, size, budget, self.setting)
        now = time.time()
        entry = Entry(key, name, kind, value, size, now, now, calls=1)
        self._entries[key] = entry
        entry.users += 1  # not evicted to make room for itself
        try:
            if self.used > budget:
                await self._make_room(0, name)
        except BaseException:
            del self._entries[key]
            value = None  # the traceback keeps this frame: it must not keep the model
            self._release(entry)
            raise
        finally:
            entry.users -= 1
        log.info("loaded %s %s: %d bytes (%d of %d in use)", kind, name, size, self.used, budget)
        return value

    async def _make_room(self, needed: int, name: str) -> None:
        """Evict idle models, least recently used first, until ``needed`` more bytes fit;
        wait a while for models in use when evicting the idle ones is not enough."""
        deadline = time.monotonic() + ROOM_WAIT
        while self.used + needed > self.budget:
            idle = sorted(
                (e for e in self._entries.values() if e.users == 0), key=lambda e: e.last_used
            )
            if idle:
                self._evict(idle[0])
                continue
            left = deadline - time.monotonic()
            if left <= 0:
                self.refusals += 1
                raise PgmlError(
                    "53200",
                    f'no room in the model memory budget for "{name}": models in use hold '
                    f"{self.used} of {self.budget} bytes",
                    hint="Try again when the running calls end, or raise --model-memory.",
                )
            changed = self._condition()
            self._waiting += 1
            try:
                async with changed:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(changed.wait(), min(left, 1.0))
            finally:
                self._waiting -= 1

    def _evict(self, entry: Entry) -> None:
        del self._entries[entry.key]
        self.evictions += 1
        log.info("evicted %s %s (%d bytes, idle)", entry.kind, entry.name, entry.bytes)
        self._release(entry)

    def _release(self, entry: Entry) -> None:
        value, size = entry.value, entry.bytes
        entry.value = None
        token = id(entry)
        try:
            self._draining[token] = size
            weakref.finalize(value, self._freed, token)
        except TypeError:  # not weakly referenceable: freed with its last reference
            self._draining.pop(token, None)
        del value
        self.collect()

    def _freed(self, token: int) -> None:
        self._draining.pop(token, None)
        self._notify()

    def collect(self) -> None:
        """Free what nothing references any more, on the device too."""
        gc.collect()
        torch = sys.modules.get("torch")
        if torch is not None and torch.cuda.is_available():
            torch.cuda.empty_cache()

    def _condition(self) -> asyncio.Condition:
        if self._changed is None:
            self._changed = asyncio.Condition()
        return self._changed

    def _notify(self) -> None:
        changed = self._changed
        if changed is None or not self._waiting:
            return

        async def wake() -> None:
            async with changed:
                changed.notify_all()

        try:
            task = asyncio.get_running_loop().create_task(wake())
        except RuntimeError:  # a worker thread freed the model: the waiter polls anyway
            return
        self._wakers.add(task)
        task.add_done_callback(self._wakers.discard)


def _name(key: Hashable) -> str:
    if isinstance(key, tuple):
        return " ".join(str(part) for part in key)
    return str(key)
