"""The job list's index per owner (``ix_jobs_owner_list``).

A caller's job list is filtered on its owner: with only the index of
the list's order (``ix_jobs_list``, which begins with the creation
time), SQLite chose the index on (owner, phase, creation time) and
sorted the owner's every job for each page of the list (26 ms a page
of 1000 among 10 000 jobs, against 1 ms reading this index in order;
benchmarks/README.md).  This index begins with the owner, then the
list's order and the columns it shows: a page is read from the index
alone, in order.  ``ix_jobs_list`` stays, for the lists of every owner
(an identity that sees all jobs).

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-06
"""

from __future__ import annotations

from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

#: The owner, the list's order (creation time, id) and what it shows.
OWNER_LIST_COLUMNS = ["owner", "creation_time", "job_id", "phase",
                      "run_id"]


def upgrade() -> None:
    """Add the index."""
    op.create_index("ix_jobs_owner_list", "jobs", OWNER_LIST_COLUMNS)


def downgrade() -> None:
    """Drop the index."""
    op.drop_index("ix_jobs_owner_list", table_name="jobs")
