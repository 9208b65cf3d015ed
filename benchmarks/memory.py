"""A process's resident memory, read from /proc, and its peak while something runs."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from types import TracebackType


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


class PeakRss:
    """``with PeakRss(pid) as peak:`` samples every 50 ms; ``peak.mb`` is the highest."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.mb = rss_mb(pid)
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._done.is_set():
            try:
                self.mb = max(self.mb, rss_mb(self.pid))
            except FileNotFoundError:
                return
            time.sleep(0.05)

    def __enter__(self) -> PeakRss:
        self._thread.start()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        self._done.set()
        self._thread.join()
