"""Each job's stored bytes (``jobs.stored_bytes``), the job list's index.

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


#: The job list's index: its order (creation time, id) and the columns
#: it shows, so that its pages read the index only (replaces the index
#: on the creation time alone, its first column).
LIST_COLUMNS = ["creation_time", "job_id", "phase", "run_id", "owner"]


def upgrade() -> None:
    """Add the column (0 for the jobs already there) and the list index."""
    op.add_column("jobs", sa.Column("stored_bytes", sa.BigInteger(),
                                    nullable=False, server_default="0"))
    op.create_index("ix_jobs_list", "jobs", LIST_COLUMNS)
    op.drop_index("ix_jobs_creation", table_name="jobs")


def downgrade() -> None:
    """Drop the column.

    ``ALTER TABLE ... DROP COLUMN`` (SQLite 3.35 and later), not a batch
    copy: SQLite's copy drops the ``jobs`` table, and with foreign keys
    on, that deletes every job's parameters and results (ON DELETE
    CASCADE).
    """
    op.create_index("ix_jobs_creation", "jobs", ["creation_time"])
    op.drop_index("ix_jobs_list", table_name="jobs")
    op.drop_column("jobs", "stored_bytes")
