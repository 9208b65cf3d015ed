"""Running the training worker processes through PyTorch's launcher and relaying what
they report."""

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
from handlers.tuning.launch import RANK_FAILED, describe_exit

log = logging.getLogger("pgml_proxy.training")

CANCEL_POLL_SECONDS = 0.2
STOP_GRACE_SECONDS = 2.0
"""After SIGTERM, how long the launcher gets to stop its workers before SIGKILL."""
STDERR_LINES = 40

OnEvent = Callable[[dict[str, Any]], Awaitable[None]]


class TrainingCancelled(PgmlError):
    def __init__(self) -> None:
        super().__init__("57014", "canceling statement due to user request")


def launch_command(job_file: Path, processes: int) -> list[str]:
    """``torch.distributed.run`` (standalone: its own rendezvous on a free local port)
    starting ``processes`` workers on ``job_file``."""
    return [
        sys.executable,
        "-m",
        "handlers.tuning.launch",
        "--standalone",
        f"--nproc-per-node={processes}",
        "-m",
        "handlers.tuning.worker",
        str(job_file),
    ]


def launch_environment(device: str) -> dict[str, str]:
    """The workers' environment: ``cuda:N`` becomes the one GPU they see."""
    env = dict(os.environ) | {"TOKENIZERS_PARALLELISM": "false"}
    if device.startswith("cuda:"):
        env["CUDA_VISIBLE_DEVICES"] = device.split(":", 1)[1]
    return env


async def run_training(
    job: dict[str, Any],
    workdir: Path,
    on_event: OnEvent,
    cancelled: Callable[[], bool],
    processes: int = 1,
) -> dict[str, Any]:
    """Train in ``processes`` worker processes; return rank 0's ``done`` event.

    A cancel, or the caller's task being cancelled (client gone), stops the launcher,
    which stops every worker; a launcher that does not stop in time is killed, and its
    workers end themselves when they see it gone.
    """
    job_file = workdir / "job.json"
    descriptor = os.open(job_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
        json.dump(job, handle)  # may hold tokens: readable by this user only
    process = await asyncio.create_subprocess_exec(
        *launch_command(job_file, processes),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        start_new_session=True,
        env=launch_environment(job["device"]),
    )
    log.info(
        "training launcher %d started %d worker(s) for %s",
        process.pid,
        processes,
        job["model_path"],
    )
    stderr_tail: deque[str] = deque(maxlen=STDERR_LINES)
    events: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue()
    readers = [
        asyncio.ensure_future(_read_events(process, events)),
        asyncio.ensure_future(_read_stderr(process, stderr_tail)),
    ]
    outcome: dict[str, Any] | None = None
    failures: list[dict[str, Any]] = []
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
                failures.append(event)
            else:
                await on_event(event)
            if cancelled():
                raise TrainingCancelled()
        code = await process.wait()
    finally:
        if process.returncode is None:
            await asyncio.shield(_stop(process))
        for reader in readers:
            reader.cancel()
        job_file.unlink(missing_ok=True)
    if outcome is not None and code == 0:
        return outcome
    raise _worker_error(code, failures, stderr_tail, processes)


async def _stop(process: asyncio.subprocess.Process) -> None:
    """SIGTERM to the launcher (it stops its workers), SIGKILL if it lingers."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, sig)
        try:
            await asyncio.wait_for(process.wait(), STOP_GRACE_SECONDS)
        except TimeoutError:
            continue
        break
    log.info("training launcher %d stopped", process.pid)


def _worker_error(
    code: int, failures: list[dict[str, Any]], tail: deque[str], processes: int
) -> PgmlError:
    """The client's error; the workers' own output (a traceback) goes to the log only.

    A process killed by a signal is the cause whatever the others then reported (a
    worker whose peer vanished fails in its next collective); else a worker's own
    exception; else how a process exited."""
    if tail:
        log.warning("training failed; the workers' last output:\n%s", "\n".join(tail))
    ranks = [f for f in failures if f.get("kind") == RANK_FAILED]
    raised = [f for f in failures if f.get("kind") != RANK_FAILED]
    signalled = [f for f in ranks if int(f.get("exitcode", 0)) < 0]
    if signalled:
        return _exit_error(int(signalled[0]["exitcode"]), _process(signalled[0], processes))
    if code < 0:
        return _exit_error(code, "the training worker")
    if raised:
        failure = raised[0]
        return PgmlError(
            "XX000", f"training failed: {failure.get('kind')}: {failure.get('message')}"
        )
    if ranks:
        return _exit_error(int(ranks[0].get("exitcode", 1)), _process(ranks[0], processes))
    return _exit_error(code, "the training worker")


def _process(failure: dict[str, Any], processes: int) -> str:
    if processes == 1:
        return "the training worker"
    return f"training process {failure.get('rank')} of {processes}"


def _exit_error(code: int, who: str) -> PgmlError:
    if code < 0:
        return PgmlError(
            "XX000",
            f"{who} was {describe_exit(code)}",
            hint="SIGKILL often means the machine ran out of memory; try a smaller "
            "per_device_train_batch_size or max_length.",
        )
    return PgmlError("XX000", f"{who} {describe_exit(code)}")


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
