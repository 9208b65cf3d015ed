"""What one call may ask of the proxy's inference capacity, and how that capacity is shared.

No PostgreSQL right covers the proxy's own threads and models, so they are bounded per
call and per caller instead:

- **limits per call**: inputs per call, characters per input, new tokens per generation
  and rows of a stream, each refused with SQLSTATE 54000 naming the limit and its flag;
- **one batch at a time per model**, queued in the event loop (:meth:`Capacity.exclusive`),
  so that no inference thread ever waits on a busy model while other models have work;
- **a share per caller** (the login role): at most ``threads - 1`` of a caller's calls hold
  the inference threads at once, so some thread is always left for everyone else;
- **text carried per caller**: where a statement may not write (a read-only transaction, a
  hot standby) its rows and results pass through the proxy's memory, and all of one
  caller's statements together carry at most ``max_carried_mb`` (:meth:`Capacity.carrying`);
- **work that stops**: a generation checks, between tokens, whether everyone waiting for it
  has gone (a cancel, a client that left) or the proxy is shutting down.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any
from weakref import WeakKeyDictionary

from handlers.errors import PgmlError

INFERENCE_THREADS = "pgml-infer"
"""The name (prefix) of the threads that run models."""

Stopped = Callable[[], bool]
"""Whether the work under way should stop now (checked from the thread that runs it)."""


@dataclass(frozen=True, slots=True)
class Limits:
    """The proxy's settings for capacity (see the README's Configuration)."""

    max_new_tokens: int = 1024
    max_inputs: int = 10_000
    max_input_chars: int = 100_000
    max_stream_rows: int = 4096
    inference_threads: int = 4
    max_carried_mb: int = 256


GENERATION_LENGTHS = ("max_new_tokens", "min_new_tokens", "max_length", "min_length")
"""Generation options that ask for a number of tokens."""


class Capacity:
    """Limits, model queues and callers' shares of one proxy process."""

    def __init__(self, limits: Limits) -> None:
        self.limits = limits
        self.closing = threading.Event()
        """Set when the proxy shuts down: every generation stops at its next token."""
        self._models: WeakKeyDictionary[Any, asyncio.Lock] = WeakKeyDictionary()
        self._shares: dict[str, asyncio.Semaphore] = {}
        self._holders: dict[str, int] = {}
        self._carried: dict[str, int] = {}

    @property
    def share(self) -> int:
        """How many of one caller's calls may use the inference threads at once."""
        return max(1, self.limits.inference_threads - 1)

    @contextlib.asynccontextmanager
    async def caller_share(self, caller: str) -> AsyncIterator[None]:
        """Held while one of ``caller``'s calls queues for, or runs on, a model."""
        semaphore = self._shares.get(caller)
        if semaphore is None:
            semaphore = self._shares[caller] = asyncio.Semaphore(self.share)
        self._holders[caller] = self._holders.get(caller, 0) + 1
        try:
            async with semaphore:
                yield
        finally:
            self._holders[caller] -= 1
            if not self._holders[caller]:
                del self._holders[caller], self._shares[caller]

    @contextlib.contextmanager
    def carrying(self, caller: str) -> Iterator[Callable[[int], None]]:
        """Held while one of ``caller``'s statements carries rows through the proxy: the
        function it gives counts each text carried, against what all of the caller's
        statements carry at once, and refuses (54000) what goes beyond the limit."""
        limit = self.limits.max_carried_mb << 20
        held = 0

        def count(size: int) -> None:
            nonlocal held
            total = self._carried.get(caller, 0) + size
            if total > limit:
                raise over_limit(
                    f'the rows and results that the statements of role "{caller}" carry '
                    f"through the proxy exceed {self.limits.max_carried_mb:,} MB",
                    "--max-carried-mb",
                    "Read fewer rows at once, or run the statement where temporary tables "
                    "may be created (not READ ONLY, not on a standby).",
                )
            self._carried[caller] = total
            held += size

        try:
            yield count
        finally:
            left = self._carried.get(caller, 0) - held
            if left > 0:
                self._carried[caller] = left
            else:
                self._carried.pop(caller, None)

    @contextlib.asynccontextmanager
    async def exclusive(self, model: Any) -> AsyncIterator[None]:
        """One batch at a time on ``model``; the others wait here, not in a thread."""
        lock = self._models.get(model)
        if lock is None:
            lock = self._models[model] = asyncio.Lock()
        async with lock:
            yield

    def stopped(self, *flags: Stopped) -> Stopped:
        """Whether the proxy is closing or any of ``flags`` is set."""
        closing = self.closing
        return lambda: closing.is_set() or any(flag() for flag in flags)

    # --- limits per call ---------------------------------------------------------------

    def check_inputs(self, function: str, items: Iterable[Any]) -> None:
        """Refuse a call with more inputs, or a longer input, than the limits allow."""
        count = 0
        for item in items:
            count += 1
            size = len(item) if isinstance(item, str) else len(json.dumps(item, default=str))
            if size > self.limits.max_input_chars:
                raise over_limit(
                    f"{function}: an input of {size:,} characters is longer than the limit of "
                    f"{self.limits.max_input_chars:,}",
                    "--max-input-chars",
                    "Split the text into chunks.",
                )
        if count > self.limits.max_inputs:
            raise over_limit(
                f"{function}: {count:,} inputs in one call are more than the limit of "
                f"{self.limits.max_inputs:,}",
                "--max-inputs",
                "Split the call, or pass one input per row.",
            )

    def check_generation(self, function: str, options: dict[str, Any]) -> None:
        """Refuse a generation that asks for more tokens than ``--max-new-tokens``."""
        for key in GENERATION_LENGTHS:
            value = options.get(key)
            if isinstance(value, int) and value > self.limits.max_new_tokens:
                raise over_limit(
                    f"{function}: {key} {value:,} is more than the limit of "
                    f"{self.limits.max_new_tokens:,} tokens",
                    "--max-new-tokens",
                    "Ask for fewer tokens.",
                )

    def generation_stops(self, stopped: Stopped) -> Any:
        """Stopping criteria for ``generate``: ``stopped()``, and ``--max-new-tokens`` new
        tokens whatever the model's own generation settings say."""
        import torch
        from transformers import StoppingCriteria, StoppingCriteriaList

        limit = self.limits.max_new_tokens

        class Stop(StoppingCriteria):
            """Called after each new token; a pipeline calls ``generate`` once per chunk of
            its inputs with the same criteria, so a length that is not the last plus one
            starts the count again."""

            start = last = 0

            def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
                length = int(input_ids.shape[-1])
                if length != self.last + 1:
                    self.start = length - 1  # the first call of a generation: one new token
                self.last = length
                done = stopped() or length - self.start >= limit
                return torch.full(
                    (input_ids.shape[0],), done, dtype=torch.bool, device=input_ids.device
                )

        return StoppingCriteriaList([Stop()])

    def check_stream_row(self, rows: int) -> None:
        if rows > self.limits.max_stream_rows:
            raise over_limit(
                f"pgml.transform_stream: more than the limit of {self.limits.max_stream_rows:,} "
                "rows",
                "--max-stream-rows",
                "Ask for fewer tokens (max_new_tokens).",
            )


def over_limit(message: str, flag: str, hint: str) -> PgmlError:
    env = "PGML_PROXY_" + flag.removeprefix("--").replace("-", "_").upper()
    return PgmlError("54000", message, hint=f"{hint} The limit is set by {flag} ({env}).")
