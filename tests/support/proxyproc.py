"""Run ``pgml-proxy`` as a real subprocess, the way users run it."""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tests.support.pgserver import free_port

ROOT = Path(__file__).resolve().parents[2]


class ProxyProcess:
    """``python -m proxy`` with the given flags; its log goes to a file tests can read.
    ``module`` runs another entry point of the same command line (benchmarks use one that
    changes the proxy first); ``cwd`` is its working directory (this checkout's code runs
    wherever that is).  It runs in a session of its own, as a service does and as each
    of PostgreSQL's processes does: where the kernel shares the CPU out by session
    (autogroups), it then competes with a busy test run as the server does, not as one
    more thread of the test run's session."""

    def __init__(
        self,
        *args: str,
        env: dict[str, str] | None = None,
        module: str = "proxy",
        cwd: Path = ROOT,
    ) -> None:
        self.module = module
        self.port = free_port()
        self.args = ["--port", str(self.port), *args]
        self.env = {**os.environ, **(env or {})}
        self.cwd = cwd
        if cwd != ROOT:
            paths = [str(ROOT), *filter(None, [self.env.get("PYTHONPATH")])]
            self.env["PYTHONPATH"] = os.pathsep.join(paths)
        self.log_path = Path(tempfile.mkstemp(prefix="pgml-proxy-", suffix=".log")[1])
        self.process: subprocess.Popen[str] | None = None
        self.ready_line = ""
        self.started_in = 0.0

    def start(self, timeout: float = 30.0) -> ProxyProcess:
        began = time.monotonic()
        with self.log_path.open("w") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", self.module, *self.args],
                cwd=self.cwd,
                env=self.env,
                stdout=subprocess.PIPE,
                stderr=log,
                text=True,
                start_new_session=True,
            )
        assert self.process.stdout is not None
        ready, _, _ = select.select([self.process.stdout], [], [], timeout)
        line = self.process.stdout.readline() if ready else ""
        if "pgml-proxy ready" not in line:
            self.stop()
            raise RuntimeError(f"proxy did not start: {line!r}\n{self.log()}")
        self.ready_line = line.strip()
        self.started_in = time.monotonic() - began
        return self

    def dsn(
        self,
        user: str = "postgres",
        password: str | None = None,
        database: str = "postgres",
        **params: str,
    ) -> str:
        secret = f":{password}" if password else ""
        query = "&".join(f"{k}={v}" for k, v in params.items())
        return f"postgresql://{user}{secret}@127.0.0.1:{self.port}/{database}" + (
            f"?{query}" if query else ""
        )

    def log(self) -> str:
        return self.log_path.read_text()

    def signal(self, sig: signal.Signals) -> None:
        assert self.process is not None
        self.process.send_signal(sig)

    def wait(self, timeout: float) -> int:
        assert self.process is not None
        return self.process.wait(timeout)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self.process is not None and self.process.stdout is not None:
            self.process.stdout.close()
