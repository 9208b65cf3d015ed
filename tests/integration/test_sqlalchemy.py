"""SQLAlchemy 2 ORM through the proxy, sync (psycopg) and async (asyncpg).

Each scenario runs once against PostgreSQL directly and once through the proxy, in
schemas of their own; the URLs differ only in the port.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import pytest
from sqlalchemy import ForeignKey, Numeric, String, create_engine, delete, func, select, update
from sqlalchemy.dialects.postgresql import ARRAY, JSONB
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker, create_async_engine
from sqlalchemy.orm import (
    DeclarativeBase,
    Mapped,
    Session,
    mapped_column,
    relationship,
    selectinload,
    sessionmaker,
)

from tests.support.pgserver import PostgresCluster
from tests.support.proxyproc import ProxyProcess


class Base(DeclarativeBase):
    pass


class Author(Base):
    __tablename__ = "author"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(80), unique=True)
    books: Mapped[list[Book]] = relationship(
        back_populates="author", cascade="all, delete-orphan", order_by="Book.title"
    )


class Book(Base):
    __tablename__ = "book"

    id: Mapped[int] = mapped_column(primary_key=True)
    title: Mapped[str] = mapped_column(String(200))
    price: Mapped[Decimal] = mapped_column(Numeric(10, 2))
    tags: Mapped[list[str]] = mapped_column(ARRAY(String))
    extra: Mapped[dict[str, Any]] = mapped_column(JSONB)
    author_id: Mapped[int] = mapped_column(ForeignKey("author.id"))
    author: Mapped[Author] = relationship(back_populates="books")


CATALOG: dict[str, list[tuple[str, str, list[str]]]] = {
    "Ann": [("Ann One", "10.50", ["novel"]), ("Ann Two", "7.25", ["poems", "short"])],
    "Bob": [("Bob Only", "99.99", [])],
    "Cécile": [("Café ✓", "3.00", ["fr"]), ("Zèbre", "12.10", ["fr", "kids"])],
}

Summary = dict[str, Any]


def new_authors() -> list[Author]:
    return [
        Author(
            name=name,
            books=[
                Book(title=t, price=Decimal(p), tags=tags, extra={"pages": len(t) * 10})
                for t, p, tags in books
            ],
        )
        for name, books in CATALOG.items()
    ]


def expected_summary() -> Summary:
    """The scenario's results, computed in Python from ``CATALOG``."""
    totals = [
        (name, len(books), sum((Decimal(p) for _, p, _ in books), Decimal("0")))
        for name, books in sorted(CATALOG.items())
    ]
    titles = {name: sorted(t for t, _, _ in books) for name, books in CATALOG.items()}
    final = []
    for name, books in CATALOG.items():
        if name == "Bob":
            continue
        for title, price, tags in books:
            value = Decimal(price) + (1 if title == "Ann One" else 0)
            value *= 2 if name == "Ann" else 1
            final.append((title, value, tags, {"pages": len(title) * 10}, name))
    return {
        "totals": totals,
        "titles": titles,
        "tagged_fr": sorted(t for t, _, tags in CATALOG["Cécile"] if "fr" in tags),
        "updated": len(CATALOG["Ann"]),
        "final": sorted(final),
        "authors_left": 2,
    }


# Statements shared by both scenarios.
TOTALS = (
    select(Author.name, func.count(Book.id), func.sum(Book.price))
    .join(Author.books)
    .group_by(Author.name)
    .order_by(Author.name)
)
WITH_BOOKS = select(Author).options(selectinload(Author.books)).order_by(Author.id)
TAGGED_FR = select(Book.title).where(Book.tags.contains(["fr"])).order_by(Book.title)
FINAL = (
    select(Book.title, Book.price, Book.tags, Book.extra, Author.name)
    .join(Book.author)
    .order_by(Book.title)
)


def double_prices(author_id: int) -> Any:
    return update(Book).where(Book.author_id == author_id).values(price=Book.price * 2)


def sync_scenario(session: Session) -> Summary:
    """Insert, query, join, update and delete with a sync session."""
    session.add_all(new_authors())
    session.commit()
    out: Summary = {"totals": [tuple(r) for r in session.execute(TOTALS)]}
    out["titles"] = {a.name: [b.title for b in a.books] for a in session.scalars(WITH_BOOKS)}
    out["tagged_fr"] = list(session.scalars(TAGGED_FR))

    book = session.scalars(select(Book).where(Book.title == "Ann One")).one()
    book.price += 1
    session.flush()
    out["updated"] = session.execute(double_prices(book.author_id)).rowcount
    session.commit()

    session.delete(session.scalars(select(Author).where(Author.name == "Bob")).one())
    session.commit()
    session.expunge_all()
    out["final"] = [tuple(r) for r in session.execute(FINAL)]
    out["authors_left"] = session.scalar(select(func.count()).select_from(Author))
    assert session.scalar(select(func.count()).select_from(Book)) == len(out["final"])
    # Deleting a parent that still has rows referring to it fails with the server's error.
    ann = session.scalars(select(Author).where(Author.name == "Ann")).one()
    with pytest.raises(IntegrityError, match="foreign key"):
        session.execute(delete(Author).where(Author.id == ann.id))
    session.rollback()
    return out


async def async_scenario(session: AsyncSession) -> Summary:
    """The same scenario with an AsyncSession."""
    session.add_all(new_authors())
    await session.commit()
    out: Summary = {"totals": [tuple(r) for r in await session.execute(TOTALS)]}
    authors = await session.scalars(WITH_BOOKS)
    out["titles"] = {a.name: [b.title for b in a.books] for a in authors}
    out["tagged_fr"] = list(await session.scalars(TAGGED_FR))

    book = (await session.scalars(select(Book).where(Book.title == "Ann One"))).one()
    book.price += 1
    await session.flush()
    out["updated"] = (await session.execute(double_prices(book.author_id))).rowcount
    await session.commit()

    bob = (await session.scalars(select(Author).where(Author.name == "Bob"))).one()
    await session.refresh(bob, ["books"])
    await session.delete(bob)
    await session.commit()
    session.expunge_all()
    out["final"] = [tuple(r) for r in await session.execute(FINAL)]
    out["authors_left"] = await session.scalar(select(func.count()).select_from(Author))
    book_count = await session.scalar(select(func.count()).select_from(Book))
    assert book_count == len(out["final"])
    # Deleting a parent that still has rows referring to it fails with the server's error.
    ann = (await session.scalars(select(Author).where(Author.name == "Ann"))).one()
    with pytest.raises(IntegrityError, match="foreign key"):
        await session.execute(delete(Author).where(Author.id == ann.id))
    await session.rollback()
    return out


@pytest.fixture
def schemas(cluster: PostgresCluster) -> Iterator[tuple[str, str]]:
    """Two fresh schemas, one for the direct run and one for the proxied run."""
    names = tuple(f"sa_{kind}_{uuid.uuid4().hex[:8]}" for kind in ("direct", "proxy"))
    for name in names:
        cluster.psql(f"CREATE SCHEMA {name}")
    yield names[0], names[1]
    for name in names:
        cluster.psql(f"DROP SCHEMA {name} CASCADE")


def run_sync(port: int, schema: str) -> Summary:
    engine = create_engine(
        f"postgresql+psycopg://postgres@127.0.0.1:{port}/postgres",
        execution_options={"schema_translate_map": {None: schema}},
    )
    try:
        Base.metadata.create_all(engine)
        with sessionmaker(engine)() as session:
            return sync_scenario(session)
    finally:
        engine.dispose()


async def run_async(port: int, schema: str) -> Summary:
    engine = create_async_engine(
        f"postgresql+asyncpg://postgres@127.0.0.1:{port}/postgres",
        execution_options={"schema_translate_map": {None: schema}},
    )
    try:
        async with engine.begin() as conn:
            await conn.run_sync(Base.metadata.create_all)
        async with async_sessionmaker(engine, expire_on_commit=False)() as session:
            return await async_scenario(session)
    finally:
        await engine.dispose()


def stored_rows(cluster: PostgresCluster, schema: str) -> str:
    return cluster.psql(
        f"SELECT b.title, b.price, a.name FROM {schema}.book b "
        f"JOIN {schema}.author a ON a.id = b.author_id ORDER BY b.title"
    )


def test_sync_orm(cluster: PostgresCluster, proxy: ProxyProcess, schemas: tuple[str, str]) -> None:
    """``postgresql+psycopg://`` through the proxy behaves exactly like the direct URL."""
    direct_schema, proxy_schema = schemas
    direct = run_sync(cluster.port, direct_schema)
    proxied = run_sync(proxy.port, proxy_schema)
    assert proxied == direct
    assert proxied == expected_summary()
    assert stored_rows(cluster, proxy_schema) == stored_rows(cluster, direct_schema)


def test_async_orm(cluster: PostgresCluster, proxy: ProxyProcess, schemas: tuple[str, str]) -> None:
    """``postgresql+asyncpg://`` with AsyncSession through the proxy, same as direct."""
    direct_schema, proxy_schema = schemas
    direct = asyncio.run(run_async(cluster.port, direct_schema))
    proxied = asyncio.run(run_async(proxy.port, proxy_schema))
    assert proxied == direct
    assert proxied == expected_summary()
    assert stored_rows(cluster, proxy_schema) == stored_rows(cluster, direct_schema)
