"""Failed logins slow down the next ones: per role and client address, and per address
over all roles, with a wait that doubles with each failure past a few free tries.

A success ends the role's count for that address; the address's own count (guesses of
many role names) is only forgotten with time. Only one login of a role from an address,
and a few of an address, are checked at a time, so parallel guesses wait their turn.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

FREE_TRIES = 3
"""Failed logins of one role from one address before the first wait."""
FREE_TRIES_PER_ADDRESS = 10
"""Failed logins from one address, any roles, before the first wait."""
AT_ONCE_PER_ADDRESS = 4
"""Logins of one address checked at the same time."""
FORGET_SECONDS = 15 * 60
"""A count without a failure this long starts again from zero."""


class Throttled(Exception):
    """A login tried too soon after failures (or while another one of it is checked)."""

    def __init__(self, retry_after: float) -> None:
        super().__init__(f"retry after {retry_after:.1f} s")
        self.retry_after = retry_after

    @property
    def seconds(self) -> int:
        """The wait as ``Retry-After`` gives it: whole seconds, at least one."""
        return max(1, math.ceil(self.retry_after))


@dataclass(slots=True)
class _Count:
    failures: int = 0
    last: float = 0.0
    busy: int = 0


class Throttle:
    """Counts of failed logins by (role, address) and by address."""

    def __init__(self, delay: float, max_delay: float) -> None:
        self.delay = delay
        self.max_delay = max_delay
        self._counts: dict[tuple[str, ...], _Count] = {}
        self._swept = time.monotonic()

    def _wait(self, count: _Count, free: int, now: float) -> float:
        if count.failures < free:
            return 0.0
        wait = min(self.max_delay, self.delay * 2.0 ** (count.failures - free))
        return max(0.0, count.last + wait - now)

    def _count(self, key: tuple[str, ...], now: float) -> _Count:
        count = self._counts.get(key)
        if count is None or (not count.busy and now - count.last > FORGET_SECONDS):
            count = self._counts[key] = _Count(last=now)
        return count

    def begin(self, role: str, address: str) -> None:
        """Allow one login of ``role`` from ``address`` to be checked now, or raise
        Throttled; every begin is followed by :meth:`end`."""
        now = time.monotonic()
        mine = self._count(("role", role, address), now)
        everyone = self._count(("address", address), now)
        wait = max(
            self._wait(mine, FREE_TRIES, now), self._wait(everyone, FREE_TRIES_PER_ADDRESS, now)
        )
        if wait > 0:
            raise Throttled(wait)
        if mine.busy or everyone.busy >= AT_ONCE_PER_ADDRESS:
            raise Throttled(1.0)
        mine.busy += 1
        everyone.busy += 1

    def end(self, role: str, address: str, ok: bool | None) -> None:
        """The login begun is over: refused (False), accepted (True), or neither (None,
        e.g. the database was down)."""
        now = time.monotonic()
        mine = self._counts[("role", role, address)]
        everyone = self._counts[("address", address)]
        mine.busy -= 1
        everyone.busy -= 1
        if ok is False:
            for count in (mine, everyone):
                count.failures += 1
                count.last = now
        elif ok:
            del self._counts[("role", role, address)]
        self._forget(now)

    def _forget(self, now: float) -> None:
        """Drop the counts that would start from zero anyway (once a minute)."""
        if now - self._swept < 60:
            return
        self._swept = now
        self._counts = {
            key: count
            for key, count in self._counts.items()
            if count.busy or now - count.last <= FORGET_SECONDS
        }
