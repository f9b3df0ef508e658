"""The schema before the migrations (what ``create_all`` made).

On a database that already has these tables (made by the store's
``metadata.create_all`` before this revision existed) it creates
nothing: Alembic then records the revision, and the jobs stay.

Revision ID: 0001
Revises:
Create Date: 2026-12-06
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

#: Each table's columns, to recognise a database made by create_all.
COLUMNS = {
    "jobs": {
        "job_id", "owner", "run_id", "phase", "creation_time",
        "queued_time", "start_time", "end_time", "execution_duration",
        "destruction", "estimate_s", "email", "error_type",
        "error_message", "error_detail", "backend_id", "host", "queue",
        "max_rss_kb", "wall_s", "cpu_s",
    },
    "parameters": {"job_id", "name", "value", "by_reference", "is_post",
                   "position"},
    "results": {"job_id", "result_id", "path", "mime", "size",
                "description", "position"},
}


def _adopt() -> bool:
    """Whether the tables are there already (then check their columns)."""
    inspector = sa.inspect(op.get_bind())
    present = set(inspector.get_table_names()) & set(COLUMNS)
    if not present:
        return False
    for table, expected in COLUMNS.items():
        found = ({c["name"] for c in inspector.get_columns(table)}
                 if table in present else set())
        if found != expected:
            raise RuntimeError(
                f"cannot adopt the database: table {table!r} has columns "
                f"{sorted(found)}, expected {sorted(expected)}")
    return True


def upgrade() -> None:
    """Create the tables, or adopt those made by create_all."""
    if _adopt():
        return
    op.create_table(
        "jobs",
        sa.Column("job_id", sa.String(40), nullable=False),
        sa.Column("owner", sa.String(255), nullable=True),
        sa.Column("run_id", sa.String(64), nullable=True),
        sa.Column("phase", sa.String(16), nullable=False),
        sa.Column("creation_time", sa.DateTime(), nullable=False),
        sa.Column("queued_time", sa.DateTime(), nullable=True),
        sa.Column("start_time", sa.DateTime(), nullable=True),
        sa.Column("end_time", sa.DateTime(), nullable=True),
        sa.Column("execution_duration", sa.Integer(), nullable=False),
        sa.Column("destruction", sa.DateTime(), nullable=False),
        sa.Column("estimate_s", sa.Float(), nullable=False),
        sa.Column("email", sa.String(255), nullable=True),
        sa.Column("error_type", sa.String(16), nullable=True),
        sa.Column("error_message", sa.Text(), nullable=True),
        sa.Column("error_detail", sa.Boolean(), nullable=False),
        sa.Column("backend_id", sa.String(64), nullable=False),
        sa.Column("host", sa.String(255), nullable=False),
        sa.Column("queue", sa.String(64), nullable=False),
        sa.Column("max_rss_kb", sa.BigInteger(), nullable=True),
        sa.Column("wall_s", sa.Float(), nullable=True),
        sa.Column("cpu_s", sa.Float(), nullable=True),
        sa.PrimaryKeyConstraint("job_id", name="jobs_pkey"),
    )
    op.create_index("ix_jobs_owner_phase_creation", "jobs",
                    ["owner", "phase", "creation_time"])
    op.create_index("ix_jobs_creation", "jobs", ["creation_time"])
    op.create_index("ix_jobs_phase", "jobs", ["phase"])
    op.create_index("ix_jobs_destruction", "jobs", ["destruction"])
    op.create_table(
        "parameters",
        sa.Column("job_id", sa.String(40), nullable=False),
        sa.Column("name", sa.String(64), nullable=False),
        sa.Column("value", sa.Text(), nullable=False),
        sa.Column("by_reference", sa.Boolean(), nullable=False),
        sa.Column("is_post", sa.Boolean(), nullable=False),
        sa.Column("position", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(["job_id"], ["jobs.job_id"],
                                name="parameters_job_id_fkey",
                                ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("job_id", "name", name="parameters_pkey"),
    )
    op.create_table(
        "results",
        sa.Column("job_id", sa.String(40), nullable=False),
        sa.Column("result_id", sa.String(64), nullable=False),
        sa.Column("path", sa.Text(), nullable=False),
        sa.Column("mime", sa.String(128), nullable=False),
        sa.Column("size", sa.BigInteger(), nullable=False),
        sa.Column("description", sa.Text(), nullable=False),
        sa.Column("position", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(["job_id"], ["jobs.job_id"],
                                name="results_job_id_fkey",
                                ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("job_id", "result_id",
                                name="results_pkey"),
    )


def downgrade() -> None:
    """Drop the tables (and the jobs in them)."""
    op.drop_table("results")
    op.drop_table("parameters")
    op.drop_index("ix_jobs_destruction", table_name="jobs")
    op.drop_index("ix_jobs_phase", table_name="jobs")
    op.drop_index("ix_jobs_creation", table_name="jobs")
    op.drop_index("ix_jobs_owner_phase_creation", table_name="jobs")
    op.drop_table("jobs")
