"""Processes of this machine as ``/proc`` shows them, for tests that find and signal the
proxy's own processes.  A process may end between two reads: it then reads as gone."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

PROC = Path("/proc")


@dataclass(frozen=True)
class Process:
    pid: int
    command: bytes
    """The command line, its words separated by NUL bytes."""


def state(pid: int) -> str:
    """The process's state letter (``Z``: ended, not yet reaped); "" when it is gone."""
    try:
        return (PROC / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return ""


def command(pid: int) -> bytes:
    """The process's command line (NUL-separated words); nothing when it is gone."""
    try:
        return (PROC / str(pid) / "cmdline").read_bytes()
    except OSError:
        return b""


def environment(pid: int) -> dict[str, str]:
    """The environment the process started with; empty when it is gone."""
    try:
        raw = (PROC / str(pid) / "environ").read_bytes()
    except OSError:
        return {}
    pairs = (entry.decode(errors="replace").partition("=") for entry in raw.split(b"\0"))
    return {name: value for name, _, value in pairs if name}


def running() -> Iterator[Process]:
    """Every process that has not ended (zombies left out)."""
    for entry in PROC.iterdir():
        if entry.name.isdigit():
            pid = int(entry.name)
            line = command(pid)
            if line and state(pid) not in ("", "Z"):
                yield Process(pid, line)
