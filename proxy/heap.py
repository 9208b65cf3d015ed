"""The garbage collector's schedule.

CPython's full collection walks every tracked object while holding the GIL: with torch
and transformers imported that is over 200,000 objects and more than 100 ms in which no
session is answered.  Modules, classes and functions live as long as the process, so
once the libraries are imported they are frozen out of every later collection
(:func:`gc.freeze`); what stays in the collector's view is what the proxy is working on.
Only the settling at start-up, before any client is served, walks the whole heap.  Later
ones (while and after the first model load imports torch) come every half second of an
import burst, collect the young generations only (a fraction of a millisecond) and freeze
the rest, garbage of the imports included: a bounded, one-off cost.  A full walk then
would stop every session for a quarter of a second, longer on a busy machine, and so
would CPython's own full collections that the burst's new objects set off if they were
left in view until it ended.  The young generations keep CPython's own thresholds.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import sys
import time

log = logging.getLogger("pgml_proxy.heap")

CHECK_SECONDS = 0.5
"""How often :func:`keep` looks for newly imported modules."""
NEW_MODULES = 20
"""Modules imported since the last freeze that make it worth another."""


def settle(*, whole: bool) -> None:
    """Collect what is garbage now (the whole heap, or the young generations only), then
    freeze everything left alive."""
    started = time.perf_counter()
    gc.collect(2 if whole else 1)
    gc.freeze()
    log.debug("heap settled in %.1f ms", (time.perf_counter() - started) * 1000)


async def keep() -> None:
    """Settle the heap as modules are imported (the first model load, the first tune):
    their objects leave the collector's view for good."""
    settled = len(sys.modules)
    while True:
        await asyncio.sleep(CHECK_SECONDS)
        count = len(sys.modules)
        if count - settled >= NEW_MODULES:
            settle(whole=False)
            settled = count
