"""Event-loop stalls: a control client's ``SELECT 1`` latency while another client sends
a statement that is heavy for the proxy to take apart (not for PostgreSQL to run).

:data:`HEAVY` holds the statements the issue names; :func:`measure` runs the control client
alone, then again while a second client sends one of them over and over.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

from tests.support import rawclient as rc
from tests.support.fuzz import nested
from tests.support.fuzzrun import ControlClient, Latencies
from tests.support.rawclient import RawClient, ServerClosed


def heavy_statements(scale: float = 1.0, twin: bool = False) -> dict[str, bytes]:
    """The statements, as Query messages; ``scale`` shrinks them for quick runs; ``twin``:
    with a plain value in place of each pgml call (PostgreSQL's own work on them)."""
    size = int((8 << 20) * scale)
    calls = max(2, int(3000 * scale))
    depth = max(10, int(20_000 * scale))
    call = "'0.1.0'::text" if twin else "pgml.version()"
    return {
        f"pgml statement of {size / (1 << 20):g} MB": rc.query(
            f"SELECT {call}, length('{'x' * size}')"
        ),
        f"{calls} pgml calls": rc.query(
            "SELECT array_length(ARRAY[" + ", ".join([call] * calls) + "], 1)"
        ),
        f"{depth} nested parentheses": rc.query(f"SELECT {call}, {nested(depth)}"),
    }


@dataclass
class Stall:
    idle: Latencies
    loaded: Latencies
    sent: int
    """How many times the heavy statement was sent during the loaded phase."""

    @property
    def p99_increase(self) -> float:
        return self.loaded.percentile(99) - self.idle.percentile(99)


class _Sender(threading.Thread):
    """Sends one statement again and again (reconnecting if the server hangs up)."""

    def __init__(self, port: int, message: bytes) -> None:
        super().__init__(daemon=True)
        self.port = port
        self.message = message
        self.stop = threading.Event()
        self.sent = 0
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            while not self.stop.is_set():
                with RawClient.connect("127.0.0.1", self.port, timeout=120.0) as client:
                    client.startup("postgres", application_name="pgml-heavy")
                    while not self.stop.is_set():
                        client.send(self.message)
                        self.sent += 1
                        try:
                            client.read_until_ready(timeout=120.0)
                        except ServerClosed:
                            break
        except BaseException as exc:  # reported by measure()
            self.error = exc


def measure(
    port: int, message: bytes, seconds: float, interval: float = 0.005, settle: float = 0.5
) -> Stall:
    """The control client's latencies with nothing else running, then while ``message``
    is sent repeatedly by another client, ``seconds`` each."""
    sender = _Sender(port, message)
    with ControlClient(port, interval=interval) as control:
        began = time.monotonic()
        time.sleep(seconds)
        idle_end = time.monotonic()
        sender.start()
        time.sleep(settle)
        loaded_start = time.monotonic()
        time.sleep(seconds)
        loaded_end = time.monotonic()
        sender.stop.set()
    sender.join(120)
    if sender.error is not None:
        raise sender.error
    latencies = control.latencies
    return Stall(
        latencies.window(began, idle_end),
        latencies.window(loaded_start, loaded_end),
        sender.sent,
    )
