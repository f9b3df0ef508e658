"""Typed parameter values: ``parameters.value`` becomes JSON.

The values were text: ``repr`` of a float for ``zeropoint`` and
``pixscale``, strings for the rest.  Those two become JSON numbers when
they read as finite numbers; every other value becomes a JSON string.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-06
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

#: The parameters whose values were ``repr(float)`` strings.
NUMERIC = frozenset({"zeropoint", "pixscale"})

_BATCH = 2000

#: The column's type: JSON, stored as TEXT on SQLite (a JSON column has
#: NUMERIC affinity there, which would turn ``25.0`` into the integer 25).
JSON_COLUMN = sa.JSON().with_variant(sa.Text(), "sqlite")


def typed(name: str, text: str) -> str | float:
    """Return the typed value of a parameter stored as text."""
    if name in NUMERIC:
        try:
            number = float(text)
        except ValueError:
            return text
        if math.isfinite(number):
            return number
    return text


def as_text(value: Any) -> str:
    """Return the text of a typed value (as revision 0001 stored it)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(value)
    return str(value)


def _copy(source: tuple[str, sa.types.TypeEngine[Any]],
          target: tuple[str, sa.types.TypeEngine[Any]],
          convert: Callable[[str, Any], Any]) -> None:
    """Set column ``target`` from ``source`` in every row, in batches."""
    bind = op.get_bind()
    table = sa.table("parameters", sa.column("job_id", sa.String(40)),
                     sa.column("name", sa.String(64)),
                     sa.column(*source), sa.column(*target))
    c = table.c
    update = (table.update()
              .where(c.job_id == sa.bindparam("b_job_id"),
                     c.name == sa.bindparam("b_name"))
              .values({target[0]: sa.bindparam("b_value",
                                                type_=target[1])}))
    last: tuple[str, str] | None = None
    while True:
        query = (sa.select(c.job_id, c.name, c[source[0]])
                 .order_by(c.job_id, c.name).limit(_BATCH))
        if last is not None:
            query = query.where(sa.tuple_(c.job_id, c.name) > last)
        rows = bind.execute(query).all()
        if not rows:
            return
        bind.execute(update, [
            {"b_job_id": job_id, "b_name": name,
             "b_value": convert(name, value)}
            for job_id, name, value in rows])
        last = (rows[-1][0], rows[-1][1])


def upgrade() -> None:
    """Add a JSON column, fill it from the text, let it take the name."""
    with op.batch_alter_table("parameters") as batch:
        batch.add_column(sa.Column("new_value", JSON_COLUMN, nullable=True))
    _copy(("value", sa.Text()), ("new_value", sa.JSON()), typed)
    with op.batch_alter_table("parameters") as batch:
        batch.drop_column("value")
        batch.alter_column("new_value", new_column_name="value",
                           existing_type=JSON_COLUMN, nullable=False)


def downgrade() -> None:
    """Back to text: numbers as ``repr(float)``, as before."""
    with op.batch_alter_table("parameters") as batch:
        batch.alter_column("value", new_column_name="new_value",
                           existing_type=JSON_COLUMN, nullable=True)
    with op.batch_alter_table("parameters") as batch:
        batch.add_column(sa.Column("value", sa.Text(), nullable=True))
    _copy(("new_value", sa.JSON()), ("value", sa.Text()),
          lambda _name, value: as_text(value))
    with op.batch_alter_table("parameters") as batch:
        batch.drop_column("new_value")
        batch.alter_column("value", existing_type=sa.Text(),
                           nullable=False)
