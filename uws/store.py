"""Persistence of jobs: SQLAlchemy Core over SQLite or PostgreSQL.

The store owns every SQL statement of the service and returns plain
`uws.model` objects, never rows.  It knows no phase rule: the job
service decides, and asks the store for compare-and-set updates
(`JobStore.transition`) so that two threads never both move a job.

Times are stored as naive UTC timestamps (microseconds kept) and come
back timezone-aware; parameter values are stored typed (JSON: text, or a
number for the numeric parameters).

The schema is Alembic's (`uws/migrations`, driven by `uws.schema` or
``alembic -c development.ini upgrade head``): the store creates no
table, and refuses a database whose revision is not
`SCHEMA_REVISION` (`SchemaError`, naming the command to run).
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final, TypeVar

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from uws.model import (
    ErrorSummary,
    Job,
    JobInfo,
    JobListRow,
    JobRef,
    Parameter,
    Result,
    iso,
)
from uws.phases import Phase

#: Constraint names as PostgreSQL gives them by default, so that a
#: database made by ``create_all`` before the migrations existed (unnamed
#: constraints) has the same names as one built by them; indexes are
#: named explicitly.  Alembic needs names to alter constraints later.
NAMING_CONVENTION: Final = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "%(table_name)s_%(column_0_N_name)s_key",
    "ck": "%(table_name)s_%(constraint_name)s_check",
    "fk": "%(table_name)s_%(column_0_N_name)s_fkey",
    "pk": "%(table_name)s_pkey",
}

metadata = sa.MetaData(naming_convention=NAMING_CONVENTION)


class JSONText(sa.types.TypeDecorator[Any]):
    """JSON in a TEXT column (SQLite's stand-in for JSON).

    A column declared JSON has NUMERIC affinity in SQLite, which stores
    the text ``25.0`` as the integer 25 (a float parameter would come
    back an int); TEXT keeps the JSON text as written.
    """

    impl = sa.Text
    cache_ok = True

    def process_bind_param(self, value: Any,
                           dialect: sa.Dialect) -> str:  # noqa: ARG002
        """Return the JSON text of ``value``."""
        return json.dumps(value)

    def process_result_value(self, value: str | None,
                             dialect: sa.Dialect) -> Any:  # noqa: ARG002
        """Return the value of the JSON text."""
        return None if value is None else json.loads(value)

#: The Alembic revision (uws/migrations/versions) that `metadata`
#: describes: the store works on a database at this revision only.
SCHEMA_REVISION: Final = "0004"

#: What an operator runs to bring a database to `SCHEMA_REVISION`.
UPGRADE_COMMAND: Final = "alembic -c development.ini upgrade head"

jobs_table = sa.Table(
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
    sa.Column("error_detail", sa.Boolean(), nullable=False, default=False),
    sa.Column("backend_id", sa.String(64), nullable=False, default=""),
    sa.Column("host", sa.String(255), nullable=False, default=""),
    sa.Column("queue", sa.String(64), nullable=False, default=""),
    sa.Column("max_rss_kb", sa.BigInteger(), nullable=True),
    sa.Column("wall_s", sa.Float(), nullable=True),
    sa.Column("cpu_s", sa.Float(), nullable=True),
    #: Bytes of the job's folder (inputs, results), for the quota
    #: ``qfits.max_stored_bytes``: set when inputs are installed and
    #: when the job ends.
    sa.Column("stored_bytes", sa.BigInteger(), nullable=False,
              server_default="0"),
    sa.Index("ix_jobs_owner_phase_creation", "owner", "phase",
             "creation_time"),
    # The job list's order and columns: its pages read the index only.
    sa.Index("ix_jobs_list", "creation_time", "job_id", "phase", "run_id",
             "owner"),
    # The same for one owner's list (revision 0004): without it, SQLite
    # sorted the owner's every job for each page.
    sa.Index("ix_jobs_owner_list", "owner", "creation_time", "job_id",
             "phase", "run_id"),
    sa.Index("ix_jobs_phase", "phase"),
    sa.Index("ix_jobs_destruction", "destruction"),
)

parameters_table = sa.Table(
    "parameters", metadata,
    sa.Column("job_id", sa.String(40),
              sa.ForeignKey("jobs.job_id", ondelete="CASCADE"),
              primary_key=True),
    sa.Column("name", sa.String(64), primary_key=True),
    # str | int | float | bool (uws.model.ParameterValue), never null.
    sa.Column("value", sa.JSON().with_variant(JSONText(), "sqlite"),
              nullable=False),
    sa.Column("by_reference", sa.Boolean(), nullable=False),
    sa.Column("is_post", sa.Boolean(), nullable=False),
    sa.Column("position", sa.Integer(), nullable=False),
)

results_table = sa.Table(
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

#: Columns a caller may set with `JobStore.update` / `transition`.
UPDATABLE = frozenset({
    "run_id", "queued_time", "start_time", "end_time",
    "execution_duration", "destruction", "estimate_s", "error_type",
    "error_message", "error_detail", "backend_id", "host", "queue",
    "max_rss_kb", "wall_s", "cpu_s", "email", "stored_bytes",
})

#: Job-list pages read (and rendered, `JobStore.list_rendered`) at
#: once, whatever the number of lists being written: 20 concurrent
#: lists of 10 000 jobs then use 2 connections, not 20 (each with its
#: SQLite page cache), and hold no more than 2 pages of rows; a page is
#: a short query, and writing it is bound by the interpreter anyway.
#: benchmarks/README.md.
LIST_READERS: Final = 2

#: SQLite's page cache of each connection that reads job lists [KiB]:
#: a list reads an index once, in order, and each page of it is one
#: short query; with SQLite's default (2 MB) a list of 10 000 jobs left
#: ~0.7 MB of that index cached in each pooled connection that read a
#: page of it, kept for good.  The pages come from the system's file
#: cache instead, for the same CPU (benchmarks/README.md).
LIST_CACHE_KIB: Final = 64

#: Length of an instant as SQLAlchemy writes it in SQLite, always with
#: microseconds (``2026-01-02 03:04:05.123456``): `JobStore.list_rows`
#: slices it into ISO text; another form is parsed.
_TEXT_INSTANT: Final = 26

#: What `JobStore.list_rendered` makes of each page.
T = TypeVar("T")

#: Sentinel: list every owner's jobs (the reaper, the poller).
ANY_OWNER = object()


class StoreError(RuntimeError):
    """The database cannot be reached or refused a statement."""


class SchemaError(StoreError):
    """The database is not at the schema revision this code needs."""


def database_revision(conn: Connection) -> str | None:
    """Return the database's Alembic revision (None: not migrated).

    None for an empty database and for one whose tables were made by
    ``metadata.create_all`` before the migrations existed.
    """
    if not sa.inspect(conn).has_table("alembic_version"):
        return None
    value = conn.execute(
        sa.text("SELECT version_num FROM alembic_version")).scalar()
    return None if value is None else str(value)


def schema_message(found: str | None, *, has_tables: bool) -> str:
    """Say why a database at revision ``found`` is refused, and the fix."""
    if found is not None:
        state = f"is at schema revision {found}"
    elif has_tables:
        state = ("has no schema revision (its tables were made before "
                 "the migrations existed; the upgrade adopts them, jobs "
                 "kept)")
    else:
        state = "is empty (no schema revision)"
    return (f"the job database {state}; this service needs revision "
            f"{SCHEMA_REVISION}: run `{UPGRADE_COMMAND}` (with the "
            "service's ini file; docs/service.md, \"Upgrading\")")


@dataclass(frozen=True)
class NewJob:
    """What the service inserts when a job is created."""

    job_id: str
    owner: str | None
    run_id: str | None
    creation_time: datetime
    execution_duration: int
    destruction: datetime
    parameters: tuple[Parameter, ...]
    email: str | None = None
    estimate_s: float = 0.0
    stored_bytes: int = 0


@dataclass(frozen=True)
class ActiveJob:
    """What the poller needs of a job that is queued or running."""

    job_id: str
    phase: Phase
    backend_id: str
    start_time: datetime | None
    execution_duration: int
    queued_time: datetime | None


@dataclass(frozen=True)
class RunRef:
    """A run (the jobs sharing a RUNID) as `JobStore.list_runs` lists it.

    ``phases`` counts its jobs by phase; ``first`` and ``last`` are the
    creation times of its oldest and newest jobs.
    """

    run_id: str
    phases: dict[Phase, int]
    first: datetime
    last: datetime

    @property
    def n_jobs(self) -> int:
        """Return the number of jobs of the run."""
        return sum(self.phases.values())


def _naive(value: datetime | None) -> datetime | None:
    if value is None:
        return None
    if value.tzinfo is not None:
        value = value.astimezone(UTC).replace(tzinfo=None)
    return value


def _stored_instant(value: str | datetime) -> datetime:
    """Return a creation time as the list reads it, timezone-aware UTC.

    SQLite's text (the list reads it as text) or PostgreSQL's naive UTC
    datetime.
    """
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    return value.replace(tzinfo=UTC)


def _aware(value: datetime | None) -> datetime | None:
    return None if value is None else value.replace(tzinfo=UTC)


def _aware_required(value: datetime) -> datetime:
    return value.replace(tzinfo=UTC)


def make_engine(url: str, *, pool_size: int = 20, max_overflow: int = 20,
                cache_kib: int | None = None) -> Engine:
    """Create the engine; SQLite gets WAL mode and a busy timeout.

    ``cache_kib``: SQLite's page cache per connection (default: SQLite's,
    2 MB).
    """
    if url.startswith("sqlite"):
        database = sa.engine.make_url(url).database
        if database and database != ":memory:":
            Path(database).parent.mkdir(parents=True, exist_ok=True)
        engine = sa.create_engine(
            url, connect_args={"check_same_thread": False, "timeout": 30},
            pool_size=pool_size, max_overflow=max_overflow)

        @sa.event.listens_for(engine, "connect")
        def _pragmas(dbapi_conn: Any, _record: Any) -> None:
            cursor = dbapi_conn.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.execute("PRAGMA foreign_keys=ON")
            if cache_kib is not None:
                cursor.execute(f"PRAGMA cache_size=-{int(cache_kib)}")
            cursor.close()

        return engine
    return sa.create_engine(url, pool_size=20, max_overflow=20,
                            pool_pre_ping=True)


class JobStore:
    """Jobs, their parameters and results in a SQL database.

    Parameters
    ----------
    url : str
        SQLAlchemy database URL (``sqlite:///path``,
        ``postgresql+psycopg://...``) of a database at
        `SCHEMA_REVISION`.

    Raises
    ------
    SchemaError
        The database is empty, or at another revision (the message
        names it, the one needed and the command to run).
    StoreError
        The database cannot be reached.
    """

    #: Rows per query of a job list (`list_pages`).  Pages of 1000 kept
    #: 20 more 1 MB arenas of the interpreter after 20 concurrent lists
    #: of 10 000 when each list held its page while writing it; since
    #: a page is rendered in its read slot (`list_rendered`) at most
    #: `LIST_READERS` pages of rows exist at once (benchmarks/README.md).
    list_page = 250

    def __init__(self, url: str) -> None:
        self.url = url
        self._list_slots = threading.BoundedSemaphore(LIST_READERS)
        try:
            self.engine = make_engine(url)
            with self.engine.connect() as conn:
                found = database_revision(conn)
                has_tables = sa.inspect(conn).has_table(jobs_table.name)
        except sa.exc.SQLAlchemyError as exc:
            raise StoreError(f"cannot open the job database: {exc}") from exc
        if found != SCHEMA_REVISION:
            self.engine.dispose()
            raise SchemaError(schema_message(found, has_tables=has_tables))
        #: The job lists' connections: a SQLite file's own,
        #: `LIST_READERS` with a small page cache (`LIST_CACHE_KIB`);
        #: another database's are the store's (its cache is the
        #: server's).
        self.list_engine = self.engine
        if (self.engine.dialect.name == "sqlite"
                and self.engine.url.database not in {None, "", ":memory:"}):
            self.list_engine = make_engine(
                url, pool_size=LIST_READERS, max_overflow=0,
                cache_kib=LIST_CACHE_KIB)

    def close(self) -> None:
        """Release the connections."""
        self.engine.dispose()
        self.list_engine.dispose()

    def ping(self) -> None:
        """Raise `StoreError` unless the database answers."""
        try:
            with self.engine.connect() as conn:
                conn.execute(sa.text("SELECT 1"))
        except sa.exc.SQLAlchemyError as exc:
            raise StoreError(f"the job database does not answer: {exc}"
                             ) from exc

    # -- writing -----------------------------------------------------------
    def create(self, job: NewJob) -> None:
        """Insert a PENDING job and its parameters."""
        with self.engine.begin() as conn:
            conn.execute(jobs_table.insert().values(
                job_id=job.job_id, owner=job.owner, run_id=job.run_id,
                phase=Phase.PENDING.value,
                creation_time=_naive(job.creation_time),
                execution_duration=job.execution_duration,
                destruction=_naive(job.destruction),
                estimate_s=job.estimate_s, email=job.email,
                stored_bytes=job.stored_bytes, error_detail=False,
                backend_id="", host="", queue=""))
            self._insert_parameters(conn, job.job_id, job.parameters, 0)

    @staticmethod
    def _insert_parameters(conn: Connection, job_id: str,
                           params: Iterable[Parameter], start: int) -> None:
        rows = [{"job_id": job_id, "name": p.name, "value": p.value,
                 "by_reference": p.by_reference, "is_post": p.is_post,
                 "position": start + i} for i, p in enumerate(params)]
        if rows:
            conn.execute(parameters_table.insert(), rows)

    def set_parameters(self, job_id: str, params: Sequence[Parameter],
                       *, only_in: Phase, estimate_s: float | None = None,
                       ) -> bool:
        """Add or replace parameters while the job is in ``only_in``.

        Returns False (and changes nothing) when the job has left that
        phase meanwhile.
        """
        with self.engine.begin() as conn:
            phase = conn.execute(
                sa.select(jobs_table.c.phase)
                .where(jobs_table.c.job_id == job_id)
                .with_for_update()).scalar()
            if phase != only_in.value:
                return False
            names = [p.name for p in params]
            conn.execute(parameters_table.delete().where(
                parameters_table.c.job_id == job_id,
                parameters_table.c.name.in_(names)))
            top = conn.execute(
                sa.select(sa.func.max(parameters_table.c.position))
                .where(parameters_table.c.job_id == job_id)).scalar()
            self._insert_parameters(conn, job_id, params,
                                    (top if top is not None else -1) + 1)
            if estimate_s is not None:
                conn.execute(jobs_table.update()
                             .where(jobs_table.c.job_id == job_id)
                             .values(estimate_s=estimate_s))
        return True

    def update(self, job_id: str, **values: Any) -> bool:
        """Set columns of `UPDATABLE`; return whether the job exists."""
        return self.transition(job_id, None, None, **values)

    def transition(self, job_id: str, sources: Iterable[Phase] | None,
                   target: Phase | None, **values: Any) -> bool:
        """Move a job to ``target`` if its phase is one of ``sources``.

        A compare-and-set: returns False when the job is gone or its
        phase is not (any more) in ``sources``.  ``values`` are set in
        the same statement.
        """
        bad = set(values) - UPDATABLE
        if bad:
            raise ValueError(f"not updatable: {sorted(bad)}")
        values = {k: _naive(v) if isinstance(v, datetime) else v
                  for k, v in values.items()}
        if target is not None:
            values["phase"] = target.value
        stmt = jobs_table.update().where(jobs_table.c.job_id == job_id)
        if sources is not None:
            stmt = stmt.where(
                jobs_table.c.phase.in_([p.value for p in sources]))
        with self.engine.begin() as conn:
            return conn.execute(stmt.values(**values)).rowcount == 1

    def set_results(self, job_id: str, results: Sequence[Result]) -> None:
        """Replace the job's results."""
        with self.engine.begin() as conn:
            conn.execute(results_table.delete().where(
                results_table.c.job_id == job_id))
            if results:
                conn.execute(results_table.insert(), [
                    {"job_id": job_id, "result_id": r.id, "path": r.path,
                     "mime": r.mime, "size": r.size,
                     "description": r.description, "position": i}
                    for i, r in enumerate(results)])

    def delete(self, job_id: str) -> bool:
        """Delete a job with its parameters and results."""
        with self.engine.begin() as conn:
            for table in (results_table, parameters_table):
                conn.execute(table.delete().where(
                    table.c.job_id == job_id))
            return conn.execute(jobs_table.delete().where(
                jobs_table.c.job_id == job_id)).rowcount == 1

    # -- reading -----------------------------------------------------------
    def get(self, job_id: str) -> Job | None:
        """Return the job with its parameters and results, or None."""
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(jobs_table).where(
                jobs_table.c.job_id == job_id)).first()
            if row is None:
                return None
            params = conn.execute(
                sa.select(parameters_table.c.name, parameters_table.c.value,
                          parameters_table.c.by_reference,
                          parameters_table.c.is_post)
                .where(parameters_table.c.job_id == job_id)
                .order_by(parameters_table.c.position)).all()
            results = conn.execute(
                sa.select(results_table.c.result_id, results_table.c.path,
                          results_table.c.mime, results_table.c.size,
                          results_table.c.description)
                .where(results_table.c.job_id == job_id)
                .order_by(results_table.c.position)).all()
        return _job(row, params, results)

    def phase_of(self, job_id: str) -> Phase | None:
        """Return the job's phase (one cheap query), or None."""
        with self.engine.connect() as conn:
            value = conn.execute(sa.select(jobs_table.c.phase).where(
                jobs_table.c.job_id == job_id)).scalar()
        return None if value is None else Phase(value)

    def email_of(self, job_id: str) -> str | None:
        """Return the job's ``email`` parameter (None: none, or no job).

        Raises `StoreError` when the database does not answer.
        """
        try:
            with self.engine.connect() as conn:
                value = conn.execute(sa.select(jobs_table.c.email).where(
                    jobs_table.c.job_id == job_id)).scalar()
        except sa.exc.SQLAlchemyError as exc:
            raise StoreError(f"cannot read the job's e-mail address: {exc}"
                             ) from exc
        return None if value is None else str(value)

    def list_jobs(self, *, owner: object, phases: Sequence[Phase] = (),
                  after: datetime | None = None,
                  last: int | None = None,
                  run_id: str | None = None,
                  before: tuple[datetime, str] | None = None,
                  ) -> list[JobRef]:
        """List jobs, newest first (`list_pages`, all pages at once)."""
        return [ref for page in self.list_pages(
            owner=owner, phases=phases, after=after, last=last,
            run_id=run_id, before=before)
            for ref in page]

    def list_pages(self, *, owner: object, phases: Sequence[Phase] = (),
                   after: datetime | None = None, last: int | None = None,
                   run_id: str | None = None,
                   before: tuple[datetime, str] | None = None,
                   page: int | None = None) -> Iterator[list[JobRef]]:
        """Yield the job list, newest first, a page at a time.

        Each page is one short query on a connection of its own (keyset
        pagination on creation time and id, which order the list
        without ties): nothing holds a connection or more than a page
        of rows while the caller writes out what it has, and a list of
        any length costs the memory of one page.  A job created while
        the list is read is newer than the pages still to come (absent,
        as if the list had been read before); a job deleted meanwhile
        is absent from the pages that follow.

        Parameters
        ----------
        owner : str, None or ANY_OWNER
            Only this owner's jobs (None: anonymous jobs); `ANY_OWNER`:
            everybody's.
        phases : sequence of Phase
            Union of phases; empty: every phase but ARCHIVED.
        after : datetime, optional
            Only jobs created strictly after this instant.
        last : int, optional
            Only the ``last`` most recent of those.
        run_id : str, optional
            Only the jobs of this run (RUNID).
        before : (datetime, str), optional
            Only the jobs after this (creation time, job id) in the
            list's order (older, or as old with a smaller id): the list
            that follows a job shown last (the web page's next page),
            whether that job still exists or not.
        page : int, optional
            Rows per query (default `list_page`).
        """
        return self._list_rows(
            owner, phases, after, last, run_id, before, page,
            lambda rows: [JobRef(job_id, Phase(phase), run_id_, who,
                                 _stored_instant(when))
                          for job_id, phase, run_id_, who, when in rows])

    def list_rows(self, *, owner: object, phases: Sequence[Phase] = (),
                  after: datetime | None = None, last: int | None = None,
                  run_id: str | None = None,
                  page: int | None = None) -> Iterator[list[JobListRow]]:
        """Yield the job list as `list_pages` does, in plain tuples.

        The same pages, each job a `uws.model.JobListRow` (its creation
        time already ISO 8601 text): what the job-list document needs,
        read without a `JobRef` or a datetime per job (a list of 10 000
        jobs is read and written in a third of the time).  Parameters
        as `list_pages`.
        """
        return self.list_rendered(_same, owner=owner, phases=phases,
                                  after=after, last=last, run_id=run_id,
                                  page=page)

    def list_rendered(self, render: Callable[[list[JobListRow]], T], *,
                      owner: object, phases: Sequence[Phase] = (),
                      after: datetime | None = None,
                      last: int | None = None, run_id: str | None = None,
                      page: int | None = None) -> Iterator[T]:
        """Yield ``render`` of each page of `list_rows`, as it is read.

        ``render`` (e.g. `uws.xml.jobref_writer`) is called as soon as
        the page is read, in the page's slot (`LIST_READERS`): at most
        that many pages of rows exist at once in the process, however
        many lists are being written, and what is yielded is one object
        per page.  20 lists of 10 000 jobs holding a page of row tuples
        each while they were written kept the interpreter ~4 MB larger
        after them (benchmarks/README.md).  Other parameters as
        `list_pages`.
        """
        return self._list_rows(owner, phases, after, last, run_id, None,
                               page, lambda rows: render(_list_rows(rows)))

    def _list_rows(self, owner: object, phases: Sequence[Phase],
                   after: datetime | None, last: int | None,
                   run_id: str | None, before: tuple[datetime, str] | None,
                   page: int | None,
                   render: Callable[[Sequence[Any]], T]) -> Iterator[T]:
        """Yield ``render`` of the list's rows a page at a time.

        Rows of (job id, phase value, run id, owner, creation time as
        the driver gives it: SQLite's text, PostgreSQL's naive UTC
        datetime); ``render`` runs in the page's slot (`list_rendered`).
        """
        c = jobs_table.c
        size = page or self.list_page
        created: Any = c.creation_time
        if self.engine.dialect.name == "sqlite":
            # SQLAlchemy's reading of SQLite's text timestamps took half
            # the time of a list: the text is parsed only where needed.
            created = sa.type_coerce(created, sa.String)
        stmt = sa.select(c.job_id, c.phase, c.run_id, c.owner, created)
        if owner is not ANY_OWNER:
            stmt = stmt.where(c.owner.is_(None) if owner is None
                              else c.owner == owner)
        if phases:
            stmt = stmt.where(c.phase.in_([p.value for p in phases]))
        else:
            stmt = stmt.where(c.phase != Phase.ARCHIVED.value)
        if after is not None:
            stmt = stmt.where(c.creation_time > _naive(after))
        if run_id is not None:
            stmt = stmt.where(c.run_id == run_id)
        stmt = stmt.order_by(c.creation_time.desc(), c.job_id.desc()).limit(
            sa.bindparam("rows", type_=sa.Integer()))
        # The statements are built once per list, each page's keyset
        # and size bound as parameters: a statement built per page left
        # ~7 objects in reference cycles (SQLAlchemy's expressions),
        # freed only by a full collection, pinning the interpreter's
        # arenas of 20 concurrent lists (benchmarks/README.md).
        following = stmt.where(
            sa.tuple_(c.creation_time, c.job_id) < sa.tuple_(
                sa.bindparam("seen_time", type_=c.creation_time.type),
                sa.bindparam("seen_id", type_=c.job_id.type)))
        left = last
        seen = None if before is None else (_naive(before[0]), before[1])
        while left is None or left > 0:
            wanted = size if left is None else min(size, left)
            with self._list_slots, self.list_engine.connect() as conn:
                rows = (conn.execute(stmt, {"rows": wanted}) if seen is None
                        else conn.execute(following, {
                            "rows": wanted, "seen_time": seen[0],
                            "seen_id": seen[1]})).all()
                got = len(rows)
                if got:
                    seen = (_stored_instant(rows[-1][4]).replace(
                        tzinfo=None), rows[-1][0])
                    rendered = render(rows)
                del rows  # not kept while the caller writes the page
            if got:
                yield rendered
                del rendered
            if got < wanted:
                return
            if left is not None:
                left -= got

    def list_runs(self, *, owner: object) -> list[RunRef]:
        """List the runs (RUNIDs) of ``owner`` as `list_jobs` sees them.

        One `RunRef` per RUNID with its jobs counted by phase (ARCHIVED
        left out), the most recently created run first.
        """
        c = jobs_table.c
        stmt = sa.select(c.run_id, c.phase, sa.func.count(),
                         sa.func.min(c.creation_time),
                         sa.func.max(c.creation_time)).where(
            c.run_id.is_not(None), c.phase != Phase.ARCHIVED.value)
        if owner is not ANY_OWNER:
            stmt = stmt.where(c.owner.is_(None) if owner is None
                              else c.owner == owner)
        stmt = stmt.group_by(c.run_id, c.phase)
        with self.engine.connect() as conn:
            rows = conn.execute(stmt).all()
        runs: dict[str, RunRef] = {}
        for run_id, phase, count, first, last in rows:
            ref = runs.get(run_id) or RunRef(
                run_id, {}, _aware_required(first), _aware_required(last))
            ref.phases[Phase(phase)] = int(count)
            runs[run_id] = RunRef(
                run_id, ref.phases, min(ref.first, _aware_required(first)),
                max(ref.last, _aware_required(last)))
        return sorted(runs.values(), key=lambda r: (r.last, r.run_id),
                      reverse=True)

    def active(self, phases: Iterable[Phase]) -> list[ActiveJob]:
        """Jobs in these phases, in the order they were queued."""
        c = jobs_table.c
        stmt = (sa.select(c.job_id, c.phase, c.backend_id, c.start_time,
                          c.execution_duration, c.queued_time)
                .where(c.phase.in_([p.value for p in phases]))
                .order_by(c.queued_time, c.creation_time, c.job_id))
        with self.engine.connect() as conn:
            rows = conn.execute(stmt).all()
        return [ActiveJob(r.job_id, Phase(r.phase), r.backend_id,
                          _aware(r.start_time), r.execution_duration,
                          _aware(r.queued_time)) for r in rows]

    def queued_estimates(self) -> list[tuple[str, float]]:
        """(job id, estimate) of QUEUED jobs in queue order."""
        c = jobs_table.c
        stmt = (sa.select(c.job_id, c.estimate_s)
                .where(c.phase == Phase.QUEUED.value)
                .order_by(c.queued_time, c.creation_time, c.job_id))
        with self.engine.connect() as conn:
            return [(r.job_id, r.estimate_s) for r in conn.execute(stmt)]

    def expired(self, now: datetime) -> list[str]:
        """Ids of jobs whose destruction time has passed."""
        stmt = sa.select(jobs_table.c.job_id).where(
            jobs_table.c.destruction <= _naive(now))
        with self.engine.connect() as conn:
            return list(conn.execute(stmt).scalars())

    def count_of(self, owner: str | None,
                 phases: Sequence[Phase] = ()) -> int:
        """Return the number of ``owner``'s jobs (in ``phases``: all)."""
        c = jobs_table.c
        who = c.owner.is_(None) if owner is None else c.owner == owner
        stmt = sa.select(sa.func.count()).select_from(jobs_table).where(who)
        if phases:
            stmt = stmt.where(c.phase.in_([p.value for p in phases]))
        with self.engine.connect() as conn:
            return int(conn.execute(stmt).scalar() or 0)

    def usage_of(self, owner: str | None) -> tuple[int, int]:
        """Return the number of ``owner``'s jobs and their stored bytes."""
        c = jobs_table.c
        who = c.owner.is_(None) if owner is None else c.owner == owner
        stmt = sa.select(sa.func.count(),
                         sa.func.coalesce(sa.func.sum(c.stored_bytes), 0)
                         ).select_from(jobs_table).where(who)
        with self.engine.connect() as conn:
            count, size = conn.execute(stmt).one()
        return int(count or 0), int(size or 0)

    def count(self) -> int:
        """Return the number of jobs (every phase, every owner)."""
        with self.engine.connect() as conn:
            return int(conn.execute(
                sa.select(sa.func.count()).select_from(jobs_table)
            ).scalar() or 0)


def _same(rows: list[JobListRow]) -> list[JobListRow]:
    return rows


def _list_rows(rows: Sequence[Any]) -> list[JobListRow]:
    """Return a page of the list as `uws.model.JobListRow` tuples."""
    return [(job_id, phase, run_id, who,
             f"{when[:10]}T{when[11:23]}Z"
             if isinstance(when, str) and len(when) == _TEXT_INSTANT
             else iso(_stored_instant(when)))
            for job_id, phase, run_id, who, when in rows]


def _job(row: Any, params: Sequence[Any], results: Sequence[Any]) -> Job:
    error = None
    if row.error_type:
        error = ErrorSummary(row.error_type, row.error_message or "",
                             bool(row.error_detail))
    info = JobInfo(host=row.host, queue=row.queue,
                   backend_id=row.backend_id, max_rss_kb=row.max_rss_kb,
                   wall_s=row.wall_s, cpu_s=row.cpu_s)
    return Job(
        job_id=row.job_id, phase=Phase(row.phase), owner=row.owner,
        run_id=row.run_id,
        creation_time=_aware_required(row.creation_time),
        queued_time=_aware(row.queued_time),
        start_time=_aware(row.start_time), end_time=_aware(row.end_time),
        execution_duration=row.execution_duration,
        destruction=_aware_required(row.destruction),
        parameters=tuple(Parameter(p.name, p.value, p.by_reference,
                                   p.is_post) for p in params),
        results=tuple(Result(r.result_id, r.path, r.mime, r.size,
                             r.description) for r in results),
        error=error, info=info, backend_id=row.backend_id,
        estimate_s=row.estimate_s,
    )
