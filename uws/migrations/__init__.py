"""Alembic migrations of the job database (`uws.schema`).

``env.py`` is Alembic's environment, ``versions/`` holds one module per
revision (``vNNNN_what.py``, revision id ``NNNN``).  A new revision:
change `uws.store.metadata`, run ``alembic -c development.ini revision
--autogenerate --rev-id 0005 -m "what changes"`` on a database at the
previous head, review the file, and set `uws.store.SCHEMA_REVISION` to
the new id (docs/service.md, "Upgrading").
"""
