"""The training launcher: ``python -m handlers.tuning.launch [torch.distributed.run
arguments] -m handlers.tuning.worker JOB_FILE``.

PyTorch's own launcher (``torch.distributed.run``, torchrun) starts one worker process per
rank, sets up their process group (NCCL on GPUs, gloo on the CPU) and, when one fails,
stops the others.  This module runs it, reports a rank that died without saying why (a
signal, an exit status) to the proxy as an ``error`` event, and ends the launcher when the
proxy that started it is gone (each worker then ends itself in turn).

Each worker writes what it and its libraries print, native code's last words included (an
``abort()``'s message), to its own file beside the job file (:func:`rank_log`), so that a
failure can be told with the failed process's own lines.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
import time
from pathlib import Path

PARENT_POLL_SECONDS = 0.2
RANK_FAILED = "RankFailed"
"""The ``kind`` of the error event about a process that died without saying why."""


def main(argv: list[str]) -> int:
    end_with_parent()
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import main as launch

    try:
        launch(argv)
    except ChildFailedError as failed:
        # every failed rank, not the first one seen: on a busy machine the launcher may see
        # a peer's failure (its gloo connection closed) before the death that caused it
        for rank, failure in sorted(failed.failures.items()):
            event = {
                "event": "error",
                "kind": RANK_FAILED,
                "rank": rank,
                "exitcode": failure.exitcode,
                "message": describe_exit(failure.exitcode),
            }
            print(json.dumps(event), flush=True)
        return 1
    return 0


def rank_log(job_file: Path, rank: int) -> Path:
    """The file where rank ``rank`` of the training of ``job_file`` writes its output."""
    return job_file.parent / f"rank-{rank}.log"


def describe_exit(code: int) -> str:
    if code < 0:
        return f"killed by signal {-code} ({signal.Signals(-code).name})"
    return f"exited with status {code}"


def end_with_parent() -> None:
    """Exit at once when the process that started this one is gone."""
    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(PARENT_POLL_SECONDS)
        os._exit(1)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
