"""Database fixtures for the UWS store: SQLite and a real PostgreSQL.

Import a fixture into a test module to run its tests on both::

    from dbfixtures import database_url  # noqa: F401

`database_url` is a database built by the migrations (``upgrade
head``, `uws.schema.upgrade`), as an operator builds one;
`empty_database_url` an empty one (the schema tests migrate it).

PostgreSQL is the server of ``QFITS_TEST_POSTGRES_URL``, which
scripts/test starts (scripts/pg-start); each test gets a fresh database
there, dropped afterwards. Without the variable the PostgreSQL tests are
skipped, or fail in CI.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import sqlalchemy as sa

from uws.schema import upgrade

POSTGRES_URL_VARIABLE = "QFITS_TEST_POSTGRES_URL"
IN_CI = bool(os.environ.get("CI"))


def postgres_server_url() -> sa.URL:
    """URL of the test PostgreSQL server; skip without it, fail in CI."""
    url = os.environ.get(POSTGRES_URL_VARIABLE)
    if not url:
        message = (f"PostgreSQL not running: scripts/test starts one "
                   f"({POSTGRES_URL_VARIABLE} is not set)")
        if IN_CI:
            pytest.fail(message)
        pytest.skip(message)
    return sa.make_url(url)


def _admin_engine(server: sa.URL) -> sa.Engine:
    return sa.create_engine(server, isolation_level="AUTOCOMMIT",
                            poolclass=sa.NullPool)


BACKENDS = ["sqlite", "postgresql"]


@contextmanager
def fresh_database(backend: str, tmp_path: Path) -> Iterator[str]:
    """Yield the URL of an empty database (PostgreSQL: dropped after)."""
    if backend == "sqlite":
        yield f"sqlite:///{tmp_path}/jobs.sqlite"
        return
    server = postgres_server_url()
    name = f"qfits_test_{uuid.uuid4().hex}"
    admin = _admin_engine(server)
    try:
        with admin.connect() as connection:
            connection.exec_driver_sql(f'CREATE DATABASE "{name}"')
        try:
            yield server.set(database=name).render_as_string(
                hide_password=False)
        finally:
            with admin.connect() as connection:
                connection.exec_driver_sql(
                    f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        admin.dispose()


@pytest.fixture(params=BACKENDS, ids=BACKENDS)
def empty_database_url(request: pytest.FixtureRequest,
                       tmp_path: Path) -> Iterator[str]:
    """SQLAlchemy URL of an empty database, once per back end."""
    with fresh_database(request.param, tmp_path) as url:
        yield url


@pytest.fixture(params=BACKENDS, ids=BACKENDS)
def database_url(request: pytest.FixtureRequest,
                 tmp_path: Path) -> Iterator[str]:
    """URL of a database at the schema's head, once per back end."""
    with fresh_database(request.param, tmp_path) as url:
        upgrade(url)
        yield url
