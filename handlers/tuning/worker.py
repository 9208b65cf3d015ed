"""The training worker process: ``python -m handlers.tuning.worker JOB_FILE``, started by
PyTorch's launcher (:mod:`handlers.tuning.launch`), once per rank.

Training runs here, not in the proxy, so that a crash, an out-of-memory kill or a cancel
ends these processes only.  Progress goes to the proxy as one JSON object a line on the
standard output that the process started with, from rank 0 only (every rank reports its
own failure); anything it and its libraries print goes to its own log file
(:func:`handlers.tuning.launch.rank_log`).  A rank whose launcher is gone (killed) ends
itself.

A rank ends in step with its peers: once every rank has finished, they leave the process
group together and the process exits at once, without the interpreter's teardown.  A rank
that tore down its process group (and the native threads behind it) on its own while a
peer still worked could abort in that teardown, which is what a busy machine made of an
exit left to chance.
"""

from __future__ import annotations

import faulthandler
import json
import os
import sys
import traceback
from pathlib import Path
from typing import Any

from handlers.tuning.launch import end_with_parent, rank_log


def main(argv: list[str]) -> int:
    rank = int(os.environ.get("RANK", "0"))
    events = open(os.dup(1), "w", buffering=1, encoding="utf-8")  # noqa: SIM115
    output = os.open(rank_log(Path(argv[1]), rank), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    os.dup2(output, 1)
    os.dup2(output, 2)
    os.close(output)
    # A fatal signal prints the stack of the thread it stopped (an abort in native code is
    # the aborting thread's).  Not every thread's: walking the frames of a thread that runs
    # on meanwhile can crash the dump, and the process then dies of SIGSEGV, not its signal.
    faulthandler.enable(all_threads=False)
    end_with_parent()

    def emit(**event: Any) -> None:
        line = json.dumps(event, default=str) + "\n"
        sys.stdout.write(line)  # every rank's own log tells how far it got
        sys.stdout.flush()
        if rank == 0 or event.get("event") == "error":
            events.write(line)

    try:
        from handlers.tuning.training import Job, train

        outcome = train(Job.read(Path(argv[1])), emit)
    except Exception as exc:  # reported to the proxy, which fails the call with it
        traceback.print_exc()
        from handlers.tuning.failures import sqlstate_of

        lines = str(exc).strip().splitlines() or [type(exc).__name__]
        kind = type(exc).__name__
        emit(event="error", kind=kind, message=lines[0], sqlstate=sqlstate_of(exc), rank=rank)
        return 1
    leave_process_group()
    emit(event="done", **outcome)
    return 0


def leave_process_group() -> None:
    """Wait for every rank to finish, then close this rank's part of the process group."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def exit_now(code: int) -> None:
    """Flush what was printed and end the process without the interpreter's teardown."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    exit_now(main(sys.argv))
