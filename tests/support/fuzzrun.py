"""Playing fuzz cases against a server, with a control client and the checks around them.

:func:`play` runs one :class:`~tests.support.fuzz.Case` on its own connection and reports
the errors it got back.  :class:`ControlClient` runs in a process of its own (so that the
fuzz threads cannot delay it) and sends ``SELECT 1`` on a fixed schedule, pipelined, so
that a stall of the server shows in every answer it delays, not in one.  :func:`fuzz`
plays many cases from several threads for a bounded time; :func:`fuzz_backends` and
:func:`wait_for_backends` count the upstream backends the fuzz sessions left behind.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import multiprocessing.connection
import socket
import struct
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from tests.support import replies
from tests.support.fuzz import APPLICATION, Case, Ending, TrafficGenerator, login_packet
from tests.support.pgserver import PostgresCluster

CONTROL_APPLICATION = "pgml-control"
SEND_TIMEOUT = 5.0


@dataclass
class Outcome:
    case: Case
    errors: list[dict[str, str]] = field(default_factory=list)
    closed_by_server: bool = False
    send_blocked: bool = False
    elapsed: float = 0.0

    @property
    def internal_errors(self) -> list[dict[str, str]]:
        """The proxy's own XX000 answers.  PostgreSQL's, relayed as it sent them, name
        the server's source file (``F``): a Query in the middle of an extended-protocol
        batch, then Sync and BEGIN, gets "StartTransactionCommand: unexpected state
        STARTED" from PostgreSQL 18 itself, with or without the proxy."""
        return [
            e for e in self.errors if e.get("C") == "XX000" and not e.get("F", "").endswith(".c")
        ]


def _send(sock: socket.socket, data: bytes, sizes: tuple[int, ...]) -> None:
    if not sizes:
        sock.sendall(data)
        return
    pos, i = 0, 0
    while pos < len(data):
        size = sizes[i % len(sizes)]
        sock.sendall(data[pos : pos + size])
        pos += size
        i += 1


def _reset(sock: socket.socket) -> None:
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


def play(case: Case, port: int, host: str = "127.0.0.1", quiet: float = 0.3) -> Outcome:
    """Run ``case`` on a new connection; read the replies (unless it vanishes), then leave."""
    outcome = Outcome(case)
    began = time.monotonic()
    sock = socket.create_connection((host, port), timeout=SEND_TIMEOUT)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    received = bytearray()
    try:
        if case.login and not _login(sock, f"{APPLICATION}:{case.index}"):
            outcome.closed_by_server = True
            return outcome
        for step in case.steps:
            sock.settimeout(SEND_TIMEOUT)
            _send(sock, step, case.chunk_sizes)
            if case.ending in (Ending.VANISH, Ending.VANISH_RESET):
                break
            data, closed = replies.read_reply(sock, quiet=quiet, limit=10.0, settle=0.05)
            received += data
            if closed:
                outcome.closed_by_server = True
                break
    except TimeoutError:
        outcome.send_blocked = True
    except OSError:
        outcome.closed_by_server = True
    finally:
        outcome.errors = replies.errors(bytes(received))
        _leave(sock, case.ending, outcome.closed_by_server)
        outcome.elapsed = time.monotonic() - began
    return outcome


def _login(sock: socket.socket, application: str) -> bool:
    """Start a session with trust authentication; whether it reached ReadyForQuery."""
    sock.sendall(login_packet(application))
    received = bytearray()
    while _READY not in received:
        chunk = sock.recv(65536)
        if not chunk:
            return False
        received += chunk
    return True


def _leave(sock: socket.socket, ending: Ending, closed: bool) -> None:
    with contextlib.suppress(OSError):
        if ending is Ending.TERMINATE and not closed:
            sock.settimeout(1.0)
            sock.sendall(b"X\x00\x00\x00\x04")
        if ending in (Ending.RESET, Ending.VANISH_RESET):
            _reset(sock)
            return
    sock.close()


# --- the control client ----------------------------------------------------------------


@dataclass
class Latencies:
    """The control client's answers: for each ``SELECT 1``, when it was due to be sent
    (``time.monotonic()``, the same clock in every process) and the seconds from then to
    its ReadyForQuery."""

    samples: list[tuple[float, float]]
    failures: list[str]

    @property
    def values(self) -> list[float]:
        return [latency for _, latency in self.samples]

    def window(self, start: float, end: float) -> Latencies:
        """The answers to the queries due in ``[start, end)``."""
        return Latencies([s for s in self.samples if start <= s[0] < end], self.failures)

    def percentile(self, p: float) -> float:
        if not self.samples:
            return float("inf")
        ordered = sorted(self.values)
        return ordered[min(len(ordered) - 1, int(len(ordered) * p / 100))]

    @property
    def max(self) -> float:
        return max(self.values, default=float("inf"))

    def slow(self, threshold: float) -> int:
        return sum(v > threshold for v in self.values)

    def slow_beyond(self, reference: Latencies, threshold: float) -> int:
        """Answers later than ``threshold`` beyond what the machine itself made everyone
        wait: ``reference`` is a control client that measured, at the same time, the same
        ``SELECT 1`` straight against PostgreSQL, and an answer's wait counts only beyond
        the longest wait of a reference query due while it waited (a busy machine stalls
        both; a stalled proxy only the answers through it)."""
        return sum(
            latency
            - max(
                (
                    waited
                    for due_ref, waited in reference.samples
                    if due - threshold <= due_ref <= due + latency
                ),
                default=0.0,
            )
            > threshold
            for due, latency in self.samples
            if latency > threshold
        )

    def summary(self) -> str:
        return (
            f"{len(self.samples)} answers, p50 {self.percentile(50) * 1000:.1f} ms, "
            f"p99 {self.percentile(99) * 1000:.1f} ms, max {self.max * 1000:.1f} ms, "
            f"{len(self.failures)} failures"
        )


_SELECT_1 = b"Q\x00\x00\x00\x0dSELECT 1\x00"
_READY = b"Z\x00\x00\x00\x05"


def _control_main(
    host: str, port: int, interval: float, conn: multiprocessing.connection.Connection
) -> None:
    """The control process: log in, say so, then a pipelined ``SELECT 1`` every
    ``interval`` seconds until told to stop; then send back what it measured."""
    samples: list[tuple[float, float]] = []
    failures: list[str] = []
    stop = threading.Event()
    ready = threading.Event()
    threading.Thread(target=lambda: (conn.recv(), stop.set()), daemon=True).start()
    while not stop.is_set():
        try:
            _control_session(host, port, interval, stop, ready, conn, samples)
        except OSError as exc:
            failures.append(f"{time.monotonic():.3f}: {exc!r}")
            stop.wait(0.2)
    conn.send((samples, failures))


def _control_session(
    host: str,
    port: int,
    interval: float,
    stop: threading.Event,
    ready: threading.Event,
    conn: multiprocessing.connection.Connection,
    samples: list[tuple[float, float]],
) -> None:
    sock = socket.create_connection((host, port), timeout=30.0)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    with sock:
        sock.sendall(login_packet(CONTROL_APPLICATION))
        buffer = bytearray()
        while _READY not in buffer:
            chunk = sock.recv(65536)
            if not chunk:
                raise ConnectionError("control session closed during login")
            buffer += chunk
        if not ready.is_set():
            ready.set()
            conn.send("ready")
        due: deque[float] = deque()
        lock = threading.Lock()
        reader_error: list[BaseException] = []

        def read() -> None:
            pending = bytearray()
            try:
                while True:
                    chunk = sock.recv(65536)
                    if not chunk:
                        raise ConnectionError("control session closed")
                    pending += chunk
                    now = time.monotonic()
                    count = pending.count(_READY)
                    if count:
                        del pending[: pending.rindex(_READY) + len(_READY)]
                        with lock:
                            for _ in range(count):
                                at = due.popleft()
                                samples.append((at, now - at))
            except OSError as exc:
                if not stop.is_set():
                    reader_error.append(exc)

        sock.settimeout(None)
        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        tick = time.monotonic()
        while not stop.is_set() and not reader_error:
            with lock:
                due.append(tick)
            sock.sendall(_SELECT_1)
            tick += interval
            stop.wait(max(0.0, tick - time.monotonic()))
        deadline = time.monotonic() + 30.0
        while due and not reader_error and time.monotonic() < deadline:
            time.sleep(0.01)
        with lock:
            now = time.monotonic()
            samples.extend((at, now - at) for at in due)
            due.clear()
        sock.shutdown(socket.SHUT_RDWR)
        reader.join(1.0)
        if reader_error:
            raise OSError(str(reader_error[0]))


class ControlClient:
    """``with ControlClient(port) as control: ...``; then ``control.latencies``.

    Entering waits until the control session is logged in, so what it measures is
    ``SELECT 1`` alone, not the login."""

    def __init__(self, port: int, host: str = "127.0.0.1", interval: float = 0.005) -> None:
        context = multiprocessing.get_context("spawn")
        self._conn, child = context.Pipe()
        self._process = context.Process(
            target=_control_main, args=(host, port, interval, child), daemon=True
        )
        self.latencies = Latencies([], [])

    def __enter__(self) -> ControlClient:
        self._process.start()
        if not self._conn.poll(60) or self._conn.recv() != "ready":
            self._process.kill()
            raise RuntimeError("the control client could not log in")
        return self

    def __exit__(self, *exc: object) -> None:
        self._conn.send("stop")
        if self._conn.poll(60):
            samples, failures = self._conn.recv()
            self.latencies = Latencies(samples, failures)
        else:
            self.latencies = Latencies([], ["the control client did not report"])
        self._process.join(5)
        if self._process.is_alive():
            self._process.kill()


# --- backends left behind --------------------------------------------------------------


def _named(application: str) -> str:
    """SQL that picks the backends of ``application``, or of ``application:<anything>``."""
    return (
        f"(application_name = '{application}' OR starts_with(application_name, '{application}:'))"
    )


def fuzz_backends(cluster: PostgresCluster, application: str = APPLICATION) -> list[str]:
    """``application_name pid state wait_event query`` of each backend the given clients
    opened that still exists."""
    out = cluster.psql(
        "SELECT application_name || ' ' || pid || ' ' || coalesce(state, '') || ' '"
        " || coalesce(wait_event, '') || ' '"
        " || left(regexp_replace(query, '\\s+', ' ', 'g'), 80)"
        f" FROM pg_stat_activity WHERE {_named(application)}"
    )
    return [line for line in out.splitlines() if line]


def wait_for_backends(
    cluster: PostgresCluster, timeout: float, application: str = APPLICATION
) -> list[str]:
    """Poll until no fuzz backend is left or ``timeout`` passes; return those left."""
    deadline = time.monotonic() + timeout
    while True:
        left = fuzz_backends(cluster, application)
        if not left or time.monotonic() >= deadline:
            return left
        time.sleep(0.1)


def terminate_backends(cluster: PostgresCluster, application: str = APPLICATION) -> None:
    cluster.psql(
        f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE {_named(application)}"
    )


# --- a bounded fuzz run -------------------------------------------------------------------


@dataclass
class FuzzReport:
    sessions: int = 0
    outcomes_with_internal_errors: list[Outcome] = field(default_factory=list)
    slowest: list[Outcome] = field(default_factory=list)

    @property
    def internal_errors(self) -> int:
        return sum(len(o.internal_errors) for o in self.outcomes_with_internal_errors)


def fuzz(
    generator: TrafficGenerator,
    port: int,
    seconds: float,
    *,
    workers: int = 4,
    first: int = 0,
    alive: Callable[[], bool] = lambda: True,
) -> FuzzReport:
    """Play cases ``first, first + 1, ...`` from ``workers`` threads for ``seconds``."""
    report = FuzzReport()
    deadline = time.monotonic() + seconds
    lock = threading.Lock()
    counter = iter(range(first, first + 10**9))

    def worker() -> None:
        while time.monotonic() < deadline and alive():
            with lock:
                index = next(counter)
            case = generator.case(index)
            try:
                outcome = play(case, port)
            except OSError:
                outcome = Outcome(case, closed_by_server=True)
            with lock:
                report.sessions += 1
                if outcome.internal_errors:
                    report.outcomes_with_internal_errors.append(outcome)
                report.slowest = sorted([*report.slowest, outcome], key=lambda o: -o.elapsed)[:5]

    with ThreadPoolExecutor(workers) as pool:
        for future in [pool.submit(worker) for _ in range(workers)]:
            future.result()
    return report
