"""Each job's stored bytes: ``jobs.stored_bytes``.

The bytes of the job's folder (inputs and results), recorded when the
inputs are installed and when the job ends, so that an owner's total
(``qfits.max_stored_bytes``) is one ``SUM`` and no walk of the folders.
Jobs that exist before this revision count 0 (the migration does not
know the job folder); they are gone by ``qfits.destruction_max`` at the
latest, and every job made after it counts.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-06
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    """Add the column (0 for the jobs already there)."""
    op.add_column("jobs", sa.Column("stored_bytes", sa.BigInteger(),
                                    nullable=False, server_default="0"))


def downgrade() -> None:
    """Drop the column.

    ``ALTER TABLE ... DROP COLUMN`` (SQLite 3.35 and later), not a batch
    copy: SQLite's copy drops the ``jobs`` table, and with foreign keys
    on, that deletes every job's parameters and results (ON DELETE
    CASCADE).
    """
    op.drop_column("jobs", "stored_bytes")
