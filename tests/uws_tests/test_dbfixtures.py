"""The database fixture gives working SQLite and PostgreSQL databases."""

from __future__ import annotations

import sqlalchemy as sa
from dbfixtures import database_url  # noqa: F401


def test_round_trip(database_url: str) -> None:  # noqa: F811
    engine = sa.create_engine(database_url)
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


def test_databases_are_fresh(database_url: str) -> None:  # noqa: F811
    engine = sa.create_engine(database_url)
    try:
        assert sa.inspect(engine).get_table_names() == []
    finally:
        engine.dispose()
