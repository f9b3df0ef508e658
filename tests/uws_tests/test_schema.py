"""The job database's schema: Alembic migrations, adoption, refusal.

Every test runs on SQLite and on a real PostgreSQL (`dbfixtures`).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic import command
from dbfixtures import database_url, empty_database_url  # noqa: F401

from uws import schema
from uws.model import Parameter, Result
from uws.phases import Phase
from uws.store import (
    UPGRADE_COMMAND,
    JobStore,
    NewJob,
    SchemaError,
    make_engine,
)

ROOT = Path(__file__).resolve().parents[2]
NOW = datetime(2026, 12, 6, 12, 0, 0, 123456, tzinfo=UTC)


def legacy_metadata() -> sa.MetaData:
    """The tables as `JobStore` made them with ``create_all`` before
    the migrations existed (a frozen copy: unnamed constraints, text
    parameter values)."""
    metadata = sa.MetaData()
    sa.Table(
        "jobs", metadata,
        sa.Column("job_id", sa.String(40), primary_key=True),
        sa.Column("owner", sa.String(255), nullable=True),
        sa.Column("run_id", sa.String(64), nullable=True),
        sa.Column("phase", sa.String(16), nullable=False),
        sa.Column("creation_time", sa.DateTime(), nullable=False),
        sa.Column("queued_time", sa.DateTime(), nullable=True),
        sa.Column("start_time", sa.DateTime(), nullable=True),
        sa.Column("end_time", sa.DateTime(), nullable=True),
        sa.Column("execution_duration", sa.Integer(), nullable=False),
        sa.Column("destruction", sa.DateTime(), nullable=False),
        sa.Column("estimate_s", sa.Float(), nullable=False, default=0.0),
        sa.Column("email", sa.String(255), nullable=True),
        sa.Column("error_type", sa.String(16), nullable=True),
        sa.Column("error_message", sa.Text(), nullable=True),
        sa.Column("error_detail", sa.Boolean(), nullable=False,
                  default=False),
        sa.Column("backend_id", sa.String(64), nullable=False, default=""),
        sa.Column("host", sa.String(255), nullable=False, default=""),
        sa.Column("queue", sa.String(64), nullable=False, default=""),
        sa.Column("max_rss_kb", sa.BigInteger(), nullable=True),
        sa.Column("wall_s", sa.Float(), nullable=True),
        sa.Column("cpu_s", sa.Float(), nullable=True),
        sa.Index("ix_jobs_owner_phase_creation", "owner", "phase",
                 "creation_time"),
        sa.Index("ix_jobs_creation", "creation_time"),
        sa.Index("ix_jobs_phase", "phase"),
        sa.Index("ix_jobs_destruction", "destruction"),
    )
    sa.Table(
        "parameters", metadata,
        sa.Column("job_id", sa.String(40),
                  sa.ForeignKey("jobs.job_id", ondelete="CASCADE"),
                  primary_key=True),
        sa.Column("name", sa.String(64), primary_key=True),
        sa.Column("value", sa.Text(), nullable=False),
        sa.Column("by_reference", sa.Boolean(), nullable=False),
        sa.Column("is_post", sa.Boolean(), nullable=False),
        sa.Column("position", sa.Integer(), nullable=False),
    )
    sa.Table(
        "results", metadata,
        sa.Column("job_id", sa.String(40),
                  sa.ForeignKey("jobs.job_id", ondelete="CASCADE"),
                  primary_key=True),
        sa.Column("result_id", sa.String(64), primary_key=True),
        sa.Column("path", sa.Text(), nullable=False),
        sa.Column("mime", sa.String(128), nullable=False),
        sa.Column("size", sa.BigInteger(), nullable=False),
        sa.Column("description", sa.Text(), nullable=False),
        sa.Column("position", sa.Integer(), nullable=False),
    )
    return metadata


#: Parameters as the service stored them as text before revision 0002.
TEXT_PARAMETERS = [
    ("image", "https://example.org/a.fits", True, False),
    ("flat", "inputs/flat.fits", True, True),
    ("zeropoint", repr(25.5), False, False),
    ("pixscale", repr(0.1 + 0.08), False, False),
    ("email", "observer@example.org", False, False),
]

#: The same, typed, as revision 0002 makes them.
TYPED_PARAMETERS = (
    Parameter("image", "https://example.org/a.fits", by_reference=True),
    Parameter("flat", "inputs/flat.fits", by_reference=True,
              is_post=True),
    Parameter("zeropoint", 25.5),
    Parameter("pixscale", 0.1 + 0.08),
    Parameter("email", "observer@example.org"),
)


def insert_text_job(url: str, job_id: str = "legacy1",
                    parameters: list[tuple[str, str, bool, bool]]
                    | None = None) -> None:
    """Insert a finished job with text parameters and a result."""
    tables = legacy_metadata().tables
    engine = make_engine(url)
    try:
        with engine.begin() as conn:
            conn.execute(tables["jobs"].insert().values(
                job_id=job_id, owner="alice", run_id="night-1",
                phase="COMPLETED", creation_time=NOW.replace(tzinfo=None),
                start_time=NOW.replace(tzinfo=None),
                end_time=(NOW + timedelta(seconds=42)).replace(tzinfo=None),
                execution_duration=3600,
                destruction=(NOW + timedelta(days=7)).replace(tzinfo=None),
                estimate_s=12.5, email="observer@example.org",
                error_detail=False, backend_id="4242", host="node1",
                queue="batch", max_rss_kb=950000, wall_s=41.5, cpu_s=40.0))
            conn.execute(tables["parameters"].insert(), [
                {"job_id": job_id, "name": n, "value": v,
                 "by_reference": r, "is_post": p, "position": i}
                for i, (n, v, r, p) in enumerate(
                    parameters or TEXT_PARAMETERS)])
            conn.execute(tables["results"].insert().values(
                job_id=job_id, result_id="summary",
                path="results/summary.json", mime="application/json",
                size=1234, description="the summary", position=0))
    finally:
        engine.dispose()


def refusal(url: str) -> str:
    with pytest.raises(SchemaError) as info:
        JobStore(url)
    return str(info.value)


def test_head_is_the_newest_migration():
    assert schema.script_heads() == (schema.HEAD,)


def test_upgrade_builds_what_the_models_describe(
        empty_database_url: str):  # noqa: F811
    schema.upgrade(empty_database_url)
    assert schema.revision_of(empty_database_url) == schema.HEAD
    schema.check(empty_database_url)  # alembic check: no difference
    schema.upgrade(empty_database_url)  # at head: nothing to do
    store = JobStore(empty_database_url)
    try:
        assert store.count() == 0
    finally:
        store.close()


def test_create_all_database_is_adopted(
        empty_database_url: str):  # noqa: F811
    engine = make_engine(empty_database_url)
    legacy_metadata().create_all(engine)
    engine.dispose()
    insert_text_job(empty_database_url)
    assert schema.revision_of(empty_database_url) is None
    assert "no schema revision (its tables were made before" in refusal(
        empty_database_url)

    schema.upgrade(empty_database_url)

    assert schema.revision_of(empty_database_url) == schema.HEAD
    schema.check(empty_database_url)
    store = JobStore(empty_database_url)
    try:
        job = store.get("legacy1")
        assert job is not None
        assert (job.phase, job.owner, job.run_id) == (
            Phase.COMPLETED, "alice", "night-1")
        assert job.creation_time == NOW
        assert job.end_time == NOW + timedelta(seconds=42)
        assert (job.backend_id, job.info.host, job.info.max_rss_kb,
                job.estimate_s) == ("4242", "node1", 950000, 12.5)
        assert job.parameters == TYPED_PARAMETERS
        assert type(job.parameters[2].value) is float
        assert job.results == (Result("summary", "results/summary.json",
                                      "application/json", 1234,
                                      "the summary"),)
        assert store.email_of("legacy1") == "observer@example.org"
        # The adopted tables keep working: delete cascades as before.
        assert store.delete("legacy1")
        assert store.count() == 0
    finally:
        store.close()


def test_revision_2_types_the_text_values(
        empty_database_url: str):  # noqa: F811
    schema.upgrade(empty_database_url, "0001")
    odd = [("zeropoint", "not a number", False, False),
           ("pixscale", "nan", False, False),
           ("flat", "123", True, False),  # not numeric: stays text
           ("image", "inputs/image.fits", True, True)]
    insert_text_job(empty_database_url)
    insert_text_job(empty_database_url, "legacy2", odd)
    schema.upgrade(empty_database_url)
    store = JobStore(empty_database_url)
    try:
        first = store.get("legacy1")
        second = store.get("legacy2")
    finally:
        store.close()
    assert first is not None
    assert second is not None
    assert first.parameters == TYPED_PARAMETERS
    assert [p.value for p in second.parameters] == [
        "not a number", "nan", "123", "inputs/image.fits"]
    # And back: the text of revision 0001 again.
    command.downgrade(schema.alembic_config(empty_database_url), "0001")
    engine = make_engine(empty_database_url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(sa.text(
                "SELECT job_id, name, value FROM parameters "
                "ORDER BY job_id, position")).all()
    finally:
        engine.dispose()
    assert [(j, n, v) for j, n, v in rows] == [
        ("legacy1", n, v) for n, v, _, _ in TEXT_PARAMETERS] + [
        ("legacy2", n, v) for n, v, _, _ in odd]


def test_the_store_refuses_a_database_not_at_head(
        empty_database_url: str):  # noqa: F811
    message = refusal(empty_database_url)
    assert message == (
        "the job database is empty (no schema revision); this service "
        f"needs revision {schema.HEAD}: run `{UPGRADE_COMMAND}` (with the "
        "service's ini file; docs/service.md, \"Upgrading\")")
    assert UPGRADE_COMMAND == "alembic -c development.ini upgrade head"
    schema.upgrade(empty_database_url, "0001")
    message = refusal(empty_database_url)
    assert message.startswith(
        "the job database is at schema revision 0001; this service needs "
        f"revision {schema.HEAD}: run `{UPGRADE_COMMAND}`")


@pytest.mark.parametrize("value", [
    "https://example.org/image.fits", "", "25.5", 25.5, 25.0, 0.1 + 0.2,
    1e-300, 1e300, 26.123456789012345, -0.0, 3, 0, True, False])
def test_parameter_values_keep_their_type(database_url: str,  # noqa: F811
                                          value: object):
    store = JobStore(database_url)
    try:
        store.create(NewJob(
            job_id="typed", owner=None, run_id=None, creation_time=NOW,
            execution_duration=60, destruction=NOW + timedelta(days=1),
            parameters=(Parameter("x", value),)))  # type: ignore[arg-type]
        job = store.get("typed")
    finally:
        store.close()
    assert job is not None
    (back,) = job.parameters
    assert back.value == value
    assert type(back.value) is type(value)
    assert back.text == (repr(value) if isinstance(value, float)
                         else str(value).lower()
                         if isinstance(value, bool) else str(value))


# -- the alembic command on the ini file ----------------------------------
def _alembic(ini: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "alembic", "-c", str(ini), *args],
        cwd=ini.parent, capture_output=True, text=True, timeout=120,
        check=False)


def test_alembic_command_migrates_the_database_of_the_ini(
        empty_database_url: str, tmp_path: Path):  # noqa: F811
    """``alembic -c development.ini upgrade head`` then ``check``, on a
    copy of the ini whose database is the test's (SQLite: the ini's own
    ``sqlite:///%(here)s/var/jobs.sqlite``, in the copy's folder)."""
    folder = tmp_path / "deploy"
    folder.mkdir()
    ini = folder / "development.ini"
    shutil.copy(ROOT / "development.ini", ini)
    url = f"sqlite:///{folder}/var/jobs.sqlite"
    if empty_database_url.startswith("postgresql"):
        url = empty_database_url
        text = ini.read_text()
        line = "qfits.database_url = sqlite:///%(here)s/var/jobs.sqlite\n"
        assert line in text
        ini.write_text(text.replace(
            line, f"qfits.database_url = {url.replace('%', '%%')}\n"))
    upgraded = _alembic(ini, "upgrade", "head")
    assert upgraded.returncode == 0, upgraded.stderr
    assert "Running upgrade  -> 0001" in upgraded.stderr
    assert f"Running upgrade 0003 -> {schema.HEAD}" in upgraded.stderr
    assert schema.revision_of(url) == schema.HEAD
    checked = _alembic(ini, "check")
    assert checked.returncode == 0, checked.stderr
    assert "No new upgrade operations detected" in checked.stdout
    again = _alembic(ini, "upgrade", "head")
    assert again.returncode == 0, again.stderr
    assert "Running upgrade" not in again.stderr
