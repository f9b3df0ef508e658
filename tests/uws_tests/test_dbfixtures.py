"""The database fixtures give working SQLite and PostgreSQL databases:
empty ones, and ones at the schema's head."""

from __future__ import annotations

import sqlalchemy as sa
from dbfixtures import database_url, empty_database_url  # noqa: F401

from uws.schema import HEAD, revision_of
from uws.store import JobStore


def test_round_trip(empty_database_url: str) -> None:  # noqa: F811
    engine = sa.create_engine(empty_database_url)
    try:
        metadata = sa.MetaData()
        table = sa.Table(
            "things", metadata,
            sa.Column("id", sa.Integer, primary_key=True),
            sa.Column("name", sa.String(40), nullable=False),
        )
        metadata.create_all(engine)
        with engine.begin() as connection:
            connection.execute(sa.insert(table), [{"name": "a"},
                                                  {"name": "b"}])
        with engine.connect() as connection:
            names = connection.scalars(
                sa.select(table.c.name).order_by(table.c.id)).all()
            assert names == ["a", "b"]
            if engine.dialect.name == "postgresql":
                version = connection.scalar(sa.text("SELECT version()"))
                assert version is not None
                assert version.startswith("PostgreSQL")
            else:
                assert engine.dialect.name == "sqlite"
    finally:
        engine.dispose()


def test_empty_databases_are_fresh(
        empty_database_url: str) -> None:  # noqa: F811
    engine = sa.create_engine(empty_database_url)
    try:
        assert sa.inspect(engine).get_table_names() == []
    finally:
        engine.dispose()


def test_databases_are_at_head_and_fresh(
        database_url: str) -> None:  # noqa: F811
    assert revision_of(database_url) == HEAD
    store = JobStore(database_url)
    try:
        assert store.count() == 0
    finally:
        store.close()
