"""The garbage collector's schedule.

CPython's full collection walks every tracked object while holding the GIL: with torch
and transformers imported that is over 200,000 objects and more than 100 ms in which no
session is answered.  Modules, classes and functions live as long as the process, so
once the libraries are imported they are collected once and then frozen out of every
later collection (:func:`gc.freeze`); what stays in the collector's view is what the
proxy is working on.  The young generations keep CPython's own thresholds.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import sys
import time

log = logging.getLogger("pgml_proxy.heap")

CHECK_SECONDS = 5.0
"""How often :func:`keep` looks for newly imported modules."""
NEW_MODULES = 20
"""Modules imported since the last freeze that make it worth another."""


def settle() -> None:
    """Collect what is garbage now, then freeze everything left alive."""
    started = time.perf_counter()
    gc.collect()
    gc.freeze()
    log.debug(
        "heap settled in %.1f ms: %d objects frozen",
        (time.perf_counter() - started) * 1000,
        gc.get_freeze_count(),
    )


async def keep() -> None:
    """Settle the heap whenever a burst of imports has ended (the first model load,
    the first tune): the modules' objects leave the collector's view for good."""
    settled = len(sys.modules)
    while True:
        await asyncio.sleep(CHECK_SECONDS)
        count = len(sys.modules)
        if count - settled >= NEW_MODULES:
            await asyncio.sleep(CHECK_SECONDS)
            if len(sys.modules) == count:  # the imports are over
                settle()
                settled = count
