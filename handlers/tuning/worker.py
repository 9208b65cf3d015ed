"""The training worker process: ``python -m handlers.tuning.worker JOB_FILE``.

Training runs here, not in the proxy, so that a crash, an out-of-memory kill or a cancel
ends this process only.  Progress goes to the proxy as one JSON object a line on the
standard output that the process started with; anything libraries print goes to stderr.
"""

from __future__ import annotations

import json
import os
import sys
import traceback
from pathlib import Path
from typing import Any


def main(argv: list[str]) -> int:
    events = open(os.dup(1), "w", buffering=1, encoding="utf-8")  # noqa: SIM115
    os.dup2(2, 1)

    def emit(**event: Any) -> None:
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
