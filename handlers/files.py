"""Which server files a caller may have the proxy read.

Anyone may have it read what lies inside the datasets and models folders (``--datasets-dir``,
``--models-dir``): the real path, symbolic links followed, of a file, and of every file
under a folder, must stay inside one of them.  Anything else needs the privileges of
``pg_read_server_files``, as ``COPY ... FROM`` a file does, asked in the caller's own
session (their current role) at most once per statement, and only when a call reaches a
path outside the folders.  A refusal is the same whether the path exists or not, and names
only what the caller gave.
"""

from __future__ import annotations

import glob
import os
import re
import weakref
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from handlers.errors import PgmlError, invalid_argument

T = TypeVar("T")

ROLE = "pg_read_server_files"
REMOTE_SCHEMES = ("http://", "https://", "hf://")
"""URLs that name no file of the server."""
_GLOB = re.compile(r"[*?\[]")


class NeedsRight(PgmlError):
    """A path outside the folders was reached before the caller's privilege was asked.

    It is the refusal itself when it cannot be asked (and so never lets a read through)."""


@dataclass(frozen=True, slots=True)
class FileRights:
    """The folders anyone may read, and whether this caller may read any server file
    (None: not asked yet)."""

    roots: tuple[Path, ...] = ()
    anywhere: bool | None = None
    role: str = ""
    """The caller's role, as an identifier (for the GRANT the refusal suggests)."""

    @classmethod
    def of(cls, *folders: Path | None) -> FileRights:
        """Rights over ``folders`` (real paths taken; None left out), not asked yet."""
        return cls(tuple(Path(os.path.realpath(f.expanduser())) for f in folders if f))

    def with_answer(self, anywhere: bool, role: str) -> FileRights:
        """These rights once the caller's privilege is known."""
        return FileRights(self.roots, anywhere, role)

    def require(self, path: str | Path, shown: str) -> str:
        """``path`` as it is to be read (its real path; a glob pattern stays a pattern), when
        the caller may read it and, for a folder, every file under it; else 42501 naming
        ``shown`` (what the caller gave)."""
        text = os.path.expanduser(str(path))
        pattern = _GLOB.search(text) is not None
        folder, rest = _split_pattern(text) if pattern else (text, "")
        real = os.path.join(_real(folder), rest) if rest else _real(folder)
        if self.anywhere:
            return real
        if ".." in rest.split(os.sep) or not self._inside(_real(folder)):
            raise self.refusal(shown)  # before anything outside is looked at
        found = [_real(match) for match in glob.glob(text, recursive=True)] if pattern else []
        if all(self._inside(c) and self._inside_all(c) for c in [_real(folder), *found]):
            return real
        raise self.refusal(shown)

    def refusal(self, shown: str) -> PgmlError:
        kind = NeedsRight if self.anywhere is None else PgmlError
        return kind(
            "42501",
            f'permission denied to read server file "{shown}"',
            detail=f'Only roles with privileges of the "{ROLE}" role may have pgml-proxy read '
            "files outside its datasets and models folders.",
            hint=f"GRANT {ROLE} TO {self.role or 'the role'}; or put the file in "
            "--datasets-dir or --models-dir.",
        )

    def _inside(self, real: str) -> bool:
        return any(real == str(root) or real.startswith(str(root) + os.sep) for root in self.roots)

    def _inside_all(self, real: str) -> bool:
        """Every file and folder under ``real`` (links followed) is inside a root."""
        return all(self._inside(inner) for inner in _under(real))


def _real(path: str) -> str:
    return os.path.realpath(os.path.abspath(path))


def _split_pattern(pattern: str) -> tuple[str, str]:
    """A glob pattern's folder before its first wildcard, and the rest."""
    wildcard = _GLOB.search(pattern)
    head = pattern[: wildcard.start()] if wildcard else pattern
    folder = os.path.dirname(head)
    return folder or ".", pattern[len(folder) :].lstrip(os.sep)


def _under(real: str) -> Iterator[str]:
    """The real paths of everything under the folder ``real`` (nothing for a file),
    following links once each."""
    if not os.path.isdir(real):
        return
    seen = {real}
    pending = [real]
    while pending:
        folder = pending.pop()
        try:
            names = os.listdir(folder)
        except OSError:
            continue
        for name in names:
            inner = _real(os.path.join(folder, name))
            yield inner
            if inner not in seen and os.path.isdir(inner):
                seen.add(inner)
                pending.append(inner)


def named(text: str, folders: dict[Path, str]) -> str:
    """``text`` with each folder of the server in ``folders`` (longest first) replaced by
    the name the caller knows it by."""
    for folder, name in sorted(folders.items(), key=lambda item: -len(str(item[0]))):
        text = text.replace(str(folder), name)
    return text


def is_path(name: str) -> bool:
    """Whether a name is a path of the server (absolute, ``~``, ``./`` or ``../``) rather
    than a name to look up (a hub id, or a name in one of the folders)."""
    return name.startswith(("/", "~", ".")) or os.path.isabs(name)


def local_value(value: str, what: str) -> bool:
    """Whether an argument that names a file or folder names one of the server; refuse
    URLs other than http(s):// and hf:// (fsspec's ``file://``, ``zip://``, chains)."""
    if value.startswith(REMOTE_SCHEMES) and "::" not in value:
        return False
    if "://" in value or "::" in value:
        raise invalid_argument(
            f'{what} must be a path or an http(s):// or hf:// URL, not "{value}"'
        )
    return True


_ANSWERS: weakref.WeakKeyDictionary[Any, FileRights] = weakref.WeakKeyDictionary()
"""The caller's answer, by statement (its ``CallContext.session``)."""


def rights_of(ctx: Any) -> FileRights:
    """The caller's rights as far as this statement has asked them."""
    known = _ANSWERS.get(ctx.session)
    return known if known is not None else FileRights(ctx.services.file_roots)


async def ask(ctx: Any) -> FileRights:
    """Ask the caller's session whether its current role has the privileges of
    ``pg_read_server_files`` (superusers have), once per statement."""
    known = _ANSWERS.get(ctx.session)
    if known is not None:
        return known
    rows = await ctx.session.run_sql(
        f"SELECT pg_catalog.pg_has_role(current_user, '{ROLE}', 'USAGE')::text, "
        "quote_ident(current_user)"
    )
    answer = FileRights(ctx.services.file_roots).with_answer(rows[0][0] == "true", str(rows[0][1]))
    _ANSWERS[ctx.session] = answer
    return answer


async def with_rights(ctx: Any, work: Callable[[FileRights], T], thread: bool = True) -> T:
    """``work`` given the caller's rights: first as far as they are known, and again with
    the privilege asked if it reached a path outside the folders (so a call that names no
    such path costs no round trip).  ``work`` must make its :meth:`FileRights.require`
    checks before it reads anything; it runs off the loop unless ``thread`` is false (a
    few stat calls)."""

    async def attempt(rights: FileRights) -> T:
        return await ctx.services.run(work, rights) if thread else work(rights)

    try:
        return await attempt(rights_of(ctx))
    except NeedsRight:
        pass  # not asked yet: ask, then go again
    return await attempt(await ask(ctx))
