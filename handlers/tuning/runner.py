"""Running the training worker processes through PyTorch's launcher, or on a Ray
cluster (:mod:`handlers.tuning.on_ray`), and relaying what they report."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import re
import signal
import sys
from collections import deque
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from handlers.errors import PgmlError
from handlers.tuning.failures import INTERNAL
from handlers.tuning.launch import RANK_FAILED, describe_exit, rank_log

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


def ray_command(job_file: Path, processes: int, address: str, device: str) -> list[str]:
    """The Ray driver running ``processes`` training workers on the cluster at
    ``address``, each with a GPU when the proxy's device is CUDA."""
    gpus = "1" if device.startswith("cuda") else "0"
    return [
        sys.executable,
        "-m",
        "handlers.tuning.on_ray",
        "--address",
        address,
        "--workers",
        str(processes),
        "--gpus-per-worker",
        gpus,
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
    ray_address: str | None = None,
) -> dict[str, Any]:
    """Train in ``processes`` worker processes, on the Ray cluster at ``ray_address``
    when there is one; return rank 0's ``done`` event.

    A cancel, or the caller's task being cancelled (client gone), stops the launcher,
    which stops every worker; a launcher that does not stop in time is killed, and its
    workers end themselves when they see it gone.
    """
    job_file = workdir / "job.json"
    descriptor = os.open(job_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
        json.dump(job, handle)  # may hold tokens: readable by this user only
    if ray_address is None:
        command = launch_command(job_file, processes)
    else:
        command = ray_command(job_file, processes, ray_address, job["device"])
    process = await asyncio.create_subprocess_exec(
        *command,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        start_new_session=True,
        env=launch_environment(job["device"]),
    )
    log.info(
        "training launcher %d started %d worker(s) for %s%s",
        process.pid,
        processes,
        job["model_path"],
        "" if ray_address is None else f" on the Ray cluster at {ray_address}",
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
    raise _worker_error(code, failures, stderr_tail, processes, job_file)


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
    code: int,
    failures: list[dict[str, Any]],
    tail: deque[str],
    processes: int,
    job_file: Path | None = None,
) -> PgmlError:
    """The client's error, with the failed process's own last lines as DETAIL; its whole
    output (a traceback) goes to the log only.

    A process killed by a signal is the cause whatever the others then reported (a
    worker whose peer vanished fails in its next collective); else a worker's own
    exception, with the SQLSTATE the worker gave it (:mod:`handlers.tuning.failures`);
    else how a process exited; a rank ended by SIGTERM last, as the launcher stops every
    other rank with it once one has failed.  A killed launcher is the cause
    of all.  ``tail`` is the launcher's own output."""
    ranks = [f for f in failures if f.get("kind") == RANK_FAILED]
    raised = [f for f in failures if f.get("kind") != RANK_FAILED]
    stopped = [f for f in ranks if int(f.get("exitcode", 0)) == -signal.SIGTERM]
    signalled = [f for f in ranks if int(f.get("exitcode", 0)) < 0 and f not in stopped]
    exited = [f for f in ranks if int(f.get("exitcode", 0)) >= 0]
    cause = next(iter([] if code < 0 else signalled + raised + exited + stopped), None)
    output = list(tail)
    if cause is not None and job_file is not None:
        output = _read_lines(rank_log(job_file, int(cause.get("rank", 0))))
    if output:
        log.warning("training failed; the failed process's last output:\n%s", "\n".join(output))
    detail = _last_error_lines(output)
    if cause is None:
        return _exit_error(code, "the training worker", detail)
    if cause in raised:
        kind, message = cause.get("kind"), cause.get("message")
        sqlstate = str(cause.get("sqlstate", INTERNAL))
        return PgmlError(sqlstate, f"training failed: {kind}: {message}", detail=detail)
    return _exit_error(int(cause.get("exitcode", 1)), _process(cause, processes), detail)


SIGNAL_HINTS: dict[int, str] = {
    signal.SIGKILL: "SIGKILL is what the kernel's out-of-memory killer sends (unless someone "
    "killed the process): try a smaller per_device_train_batch_size or max_length.",
    signal.SIGABRT: "The process aborted itself: a library met a fatal error. Its last lines "
    "are in DETAIL; the proxy's log has all of its output.",
    signal.SIGSEGV: "The process crashed in native code. Its last lines are in DETAIL; the "
    "proxy's log has all of its output.",
    signal.SIGBUS: "The process crashed in native code (often a full /dev/shm or disk). Its "
    "last lines are in DETAIL; the proxy's log has all of its output.",
    signal.SIGTERM: "Something outside the proxy stopped the process (an administrator, a "
    "container shutting down).",
    signal.SIGINT: "Something outside the proxy interrupted the process.",
}
DETAIL_LINES = 6


def _process(failure: dict[str, Any], processes: int) -> str:
    if processes == 1:
        return "the training worker"
    return f"training process {failure.get('rank')} of {processes}"


def _exit_error(code: int, who: str, detail: str | None) -> PgmlError:
    """A process that ended without reporting an exception: 58000 (system error), as
    something outside the proxy's code ended it."""
    if code < 0:
        return PgmlError(
            "58000", f"{who} was {describe_exit(code)}", detail=detail, hint=SIGNAL_HINTS.get(-code)
        )
    return PgmlError("58000", f"{who} {describe_exit(code)}", detail=detail)


def _read_lines(path: Path) -> list[str]:
    """The lines of the last 64 KiB of a worker's log (a missing log: none): all of them,
    as a fatal signal's message comes before the stack it prints."""
    try:
        with path.open("rb") as handle:
            handle.seek(max(0, handle.seek(0, os.SEEK_END) - 64 * 1024))
            text = handle.read().decode("utf-8", "replace")
    except OSError:
        return []
    return text.splitlines()


STACK_LINES = re.compile(
    r"(Traceback \(most recent call last\)|((Current thread|Thread) 0x[0-9a-f]+ |Stack )"
    r"\(most recent call first\)|Extension modules:)"
)
"""The unindented lines of a Python traceback and of ``faulthandler``'s stacks (their
frames are indented)."""


def _last_error_lines(lines: list[str]) -> str | None:
    """The last few lines a process printed, without the stacks of a traceback or of a
    fatal signal: what the process said of its end, not where in the code it was."""
    said = [
        line.strip()
        for line in lines
        if line.strip() and not line[:1].isspace() and not STACK_LINES.match(line)
    ]
    if not said:
        return None
    return "\n".join(line[:300] for line in said[-DETAIL_LINES:])


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
