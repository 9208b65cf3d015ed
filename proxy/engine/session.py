"""The statement engine of one client session: it answers the client messages that
involve pgml functions (a Query, or extended-protocol messages about pgml statements)."""

from __future__ import annotations

from collections.abc import Hashable
from typing import Protocol

from handlers.functions import Services, unsupported
from proxy.engine.executor import Execution
from proxy.engine.extended import ExtendedState
from proxy.engine.prepared import PreparedStatements
from proxy.engine.query import answer_query, refuse
from proxy.engine.sessionsql import BoundParams
from proxy.engine.streams import Cursors
from proxy.engine.upstream import Upstream
from proxy.wire import encoding
from proxy.wire.codec import Frontend, Message


class SessionInfo(Protocol):
    """What the engine knows of the session it serves."""

    id: int
    user: str
    database: str


class Engine:
    def __init__(self, upstream: Upstream, services: Services, session: SessionInfo) -> None:
        self.upstream = upstream
        self.services = services
        self.session = session
        self.extended = ExtendedState(self)
        self.cursors = Cursors(self)
        self.prepared = PreparedStatements()
        """The SQL-level prepared statements that call pgml functions."""
        self._cancelled = False
        self.confirmed: set[Hashable] = set()
        """Checks of the session's that have passed (see :meth:`Execution.check`)."""

    @property
    def database(self) -> str:
        return self.session.database

    def wants(self, message: Message) -> bool:
        """Whether the engine answers this client message (one that does not mention
        pgml itself: it may name a pgml statement or portal)."""
        if message.type == Frontend.QUERY:
            self.extended.forget_unnamed()
            ours = self.prepared.named_in(message.body)
        else:
            ours = self.extended.wants(message) or (
                message.type == Frontend.PARSE and self.prepared.named_in(message.body)
            )
        return self.cursors.concerns(message) or ours

    def text_codec(self) -> str:
        """Python's codec for the session's client_encoding (UTF-8 for one it lacks:
        then its pgml statements are refused)."""
        return encoding.python_codec(self.upstream.queue.client_encoding) or "utf-8"

    def cancel(self) -> None:
        """The client asked to cancel: the work under way stops at its next check."""
        self._cancelled = True

    def cancelled(self) -> bool:
        return self._cancelled

    def execution(
        self,
        *,
        params: BoundParams | None = None,
        label_types: dict[str, str] | None = None,
        helper: str = "",
        drop_at_commit: bool = False,
    ) -> Execution:
        return Execution(
            self.upstream,
            self.services,
            database=self.database,
            cancelled=self.cancelled,
            caller=self.session.user,
            params=params,
            label_types=label_types,
            helper=helper,
            drop_at_commit=drop_at_commit,
            confirmed=self.confirmed,
        )

    def close(self) -> None:
        """The session has ended."""
        self.cursors.close()

    async def answer(self, message: Message) -> None:
        self._cancelled = False
        if message.type == Frontend.SYNC:
            self.upstream.relay(message.raw, Frontend.SYNC)
            self.upstream.close_unclosed()
            self.upstream.push()
            return
        client_encoding = self.upstream.queue.client_encoding
        text = encoding.python_codec(client_encoding)
        if text is None:
            error = unsupported(
                f'pgml functions cannot be called with client_encoding "{client_encoding}"',
                hint="SET client_encoding to one that pgml-proxy reads, e.g. UTF8.",
            )
            if message.type == Frontend.QUERY:
                refuse(self, error)
            else:
                self.extended.fail(error)
            return
        encoding.use(text, client_encoding)
        if self.cursors.concerns(message) and await self.cursors.answer(message):
            return
        if message.type == Frontend.QUERY:
            self.extended.forget_unnamed()
            await answer_query(self, message)
        elif message.type == Frontend.PARSE or self.extended.wants(message):
            await self.extended.answer(message)
        else:  # it named a cursor of the proxy's, handed over to PostgreSQL now
            self.upstream.relay(message.raw, message.type)
            self.upstream.push()
