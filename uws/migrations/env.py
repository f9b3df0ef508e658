"""Alembic's environment: the job database of the service's ini file.

``alembic -c development.ini upgrade head`` migrates the database of
``qfits.database_url`` in ``[app:main]`` (``%(here)s`` is the ini's
folder, as for pserve); `uws.schema` hands the URL over directly
(``config.attributes["url"]``).  The engine is the store's own
(`uws.store.make_engine`: on SQLite, WAL mode and foreign keys), and
``render_as_batch`` lets SQLite alter tables by copying them.
"""

from __future__ import annotations

from logging.config import fileConfig

from alembic import context

from uws.store import make_engine, metadata

APP_SECTION = "app:main"
URL_KEY = "qfits.database_url"


def database_url() -> str:
    """Return the URL to migrate: given by `uws.schema`, or the ini's."""
    config = context.config
    given = config.attributes.get("url")
    if given:
        return str(given)
    parser = config.file_config
    if config.config_file_name is None or not parser.has_option(
            APP_SECTION, URL_KEY):
        raise SystemExit(
            f"no database: the ini file needs {URL_KEY} in [{APP_SECTION}] "
            "(alembic -c development.ini upgrade head)")
    return parser.get(APP_SECTION, URL_KEY)


def run_migrations() -> None:
    """Migrate the database in one transaction."""
    if context.is_offline_mode():
        raise SystemExit(
            "offline mode (--sql) is not supported: the migrations "
            "convert rows; run them on the database")
    config = context.config
    if config.config_file_name is not None:
        fileConfig(config.config_file_name, disable_existing_loggers=False)
    engine = make_engine(database_url())
    try:
        with engine.connect() as connection:
            context.configure(connection=connection,
                              target_metadata=metadata,
                              render_as_batch=True)
            with context.begin_transaction():
                context.run_migrations()
    finally:
        engine.dispose()


run_migrations()
