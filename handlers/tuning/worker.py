"""The training worker process: ``python -m handlers.tuning.worker JOB_FILE``, started by
PyTorch's launcher (:mod:`handlers.tuning.launch`), once per rank.

Training runs here, not in the proxy, so that a crash, an out-of-memory kill or a cancel
ends these processes only.  Progress goes to the proxy as one JSON object a line on the
standard output that the process started with, from rank 0 only (every rank reports its
own failure); anything libraries print goes to stderr.  A rank whose launcher is gone
(killed) ends itself.
"""

from __future__ import annotations

import json
import os
import sys
import traceback
from pathlib import Path
from typing import Any

from handlers.tuning.launch import end_with_parent


def main(argv: list[str]) -> int:
    events = open(os.dup(1), "w", buffering=1, encoding="utf-8")  # noqa: SIM115
    os.dup2(2, 1)
    first = int(os.environ.get("RANK", "0")) == 0
    end_with_parent()

    def emit(**event: Any) -> None:
        if first or event.get("event") == "error":
            events.write(json.dumps(event, default=str) + "\n")

    try:
        from handlers.tuning.training import Job, train

        outcome = train(Job.read(Path(argv[1])), emit)
    except Exception as exc:  # reported to the proxy, which fails the call with it
        traceback.print_exc()
        lines = str(exc).strip().splitlines() or [type(exc).__name__]
        emit(event="error", kind=type(exc).__name__, message=lines[0])
        return 1
    emit(event="done", **outcome)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
