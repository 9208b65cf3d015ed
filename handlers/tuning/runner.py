"""Running the training worker process and relaying what it reports."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import sys
from collections import deque
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from handlers.errors import PgmlError

log = logging.getLogger("pgml_proxy.training")

CANCEL_POLL_SECONDS = 0.2
STDERR_LINES = 40

OnEvent = Callable[[dict[str, Any]], Awaitable[None]]


class TrainingCancelled(PgmlError):
    def __init__(self) -> None:
        super().__init__("57014", "canceling statement due to user request")


async def run_training(
    job: dict[str, Any], workdir: Path, on_event: OnEvent, cancelled: Callable[[], bool]
) -> dict[str, Any]:
    """Train in a child process; return its ``done`` event.

    A cancel, or the caller's task being cancelled (client gone), kills the worker's
    whole process group at once.
    """
    job_file = workdir / "job.json"
    descriptor = os.open(job_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
        json.dump(job, handle)  # may hold tokens: readable by this user only
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "handlers.tuning.worker",
        str(job_file),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        start_new_session=True,
        env=os.environ | {"TOKENIZERS_PARALLELISM": "false"},
    )
    log.info("training worker %d started for %s", process.pid, job["model_path"])
    stderr_tail: deque[str] = deque(maxlen=STDERR_LINES)
    events: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue()
    readers = [
        asyncio.ensure_future(_read_events(process, events)),
        asyncio.ensure_future(_read_stderr(process, stderr_tail)),
    ]
    outcome: dict[str, Any] | None = None
    failure: dict[str, Any] | None = None
    try:
        while True:
            try:
                event = await asyncio.wait_for(events.get(), CANCEL_POLL_SECONDS)
            except TimeoutError:
                if cancelled():
                    raise TrainingCancelled() from None
                continue
            if event is None:
                break
            if event.get("event") == "done":
                outcome = event
            elif event.get("event") == "error":
                failure = event
            else:
                await on_event(event)
            if cancelled():
                raise TrainingCancelled()
        code = await process.wait()
    finally:
        if process.returncode is None:
            _kill(process.pid)
            with contextlib.suppress(ProcessLookupError):
                await asyncio.shield(process.wait())
        for reader in readers:
            reader.cancel()
        job_file.unlink(missing_ok=True)
    if outcome is not None and code == 0:
        return outcome
    raise _worker_error(code, failure, stderr_tail)


def _kill(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)
    log.info("training worker %d stopped", pid)


def _worker_error(code: int, failure: dict[str, Any] | None, tail: deque[str]) -> PgmlError:
    """The client's error; the worker's own output (a traceback) goes to the log only."""
    if tail:
        log.warning("training worker failed; its last output:\n%s", "\n".join(tail))
    if failure is not None:
        return PgmlError(
            "XX000", f"training failed: {failure.get('kind')}: {failure.get('message')}"
        )
    if code < 0:
        name = signal.Signals(-code).name
        return PgmlError(
            "XX000",
            f"the training worker was killed by signal {-code} ({name})",
            hint="SIGKILL often means the machine ran out of memory; try a smaller "
            "per_device_train_batch_size or max_length.",
        )
    return PgmlError("XX000", f"the training worker exited with status {code}")


async def _read_events(
    process: asyncio.subprocess.Process, events: asyncio.Queue[dict[str, Any] | None]
) -> None:
    assert process.stdout is not None
    async for line in process.stdout:
        try:
            events.put_nowait(json.loads(line))
        except json.JSONDecodeError:
            log.warning("training worker said: %s", line.decode("utf-8", "replace").rstrip())
    events.put_nowait(None)


async def _read_stderr(process: asyncio.subprocess.Process, tail: deque[str]) -> None:
    assert process.stderr is not None
    async for raw in process.stderr:
        line = raw.decode("utf-8", "replace").rstrip()
        tail.append(line)
        log.debug("training worker %d: %s", process.pid, line)
