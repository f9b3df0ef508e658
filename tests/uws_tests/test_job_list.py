"""The job list is read and written a page at a time (issue 16, item 6).

`JobStore.list_pages` on each database (SQLite, PostgreSQL): every job
once, newest first, ties in creation time included, LAST and AFTER
across pages.  Through the real app (WSGI, no server between): the
response is produced as it is read; the store's queries are counted
with SQLAlchemy's own event hook on the real engine, and a job deleted
between two pieces of the response is missing from the pieces that
follow: rows are read after the first piece was written, not before.
"""

from __future__ import annotations

import gc
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa
from dbfixtures import database_url  # noqa: F401 - a fixture
from lxml import etree
from uwskit import SCHEMAS, UWS, LiveService
from webob import Request

from uws.auth import ANONYMOUS
from uws.model import utcnow
from uws.phases import Phase
from uws.schema import upgrade
from uws.store import (
    ANY_OWNER,
    LIST_CACHE_KIB,
    LIST_READERS,
    JobStore,
    NewJob,
)
from uws.xml import iso

T0 = datetime(2026, 12, 1, 12, 0, 0, 123000, tzinfo=UTC)


def _add(store: JobStore, job_id: str, created: datetime,
         owner: str | None = None) -> None:
    store.create(NewJob(
        job_id=job_id, owner=owner, run_id=None, creation_time=created,
        execution_duration=60, destruction=created + timedelta(days=300),
        parameters=()))


@pytest.fixture
def store(database_url: str) -> Any:  # noqa: F811
    upgrade(database_url)
    made = JobStore(database_url)
    yield made
    made.close()


def test_pages_list_every_job_once_newest_first(store: JobStore) -> None:
    # Seven jobs share one creation time: the pages (of 3) split them.
    same = [f"tie{i}" for i in range(7)]
    for job_id in same:
        _add(store, job_id, T0)
    for i in range(5):
        _add(store, f"old{i}", T0 - timedelta(seconds=10 + i))
        _add(store, f"new{i}", T0 + timedelta(milliseconds=1 + i))
    _add(store, "alices", T0, owner="alice")
    pages = list(store.list_pages(owner=None, page=3))
    assert [len(p) for p in pages] == [3, 3, 3, 3, 3, 2]
    ids = [ref.job_id for page in pages for ref in page]
    assert ids == ([f"new{i}" for i in reversed(range(5))]
                   + sorted(same, reverse=True)
                   + [f"old{i}" for i in range(5)])
    assert all(ref.creation_time.tzinfo is UTC for p in pages for ref in p)
    assert pages[1][2].creation_time == T0  # milliseconds kept
    # LAST across pages, AFTER, and the whole list at once.
    last = list(store.list_pages(owner=None, last=8, page=3))
    assert [ref.job_id for p in last for ref in p] == ids[:8]
    assert [len(p) for p in last] == [3, 3, 2]
    after = store.list_jobs(owner=None, after=T0)
    assert [ref.job_id for ref in after] == ids[:5]
    assert len(store.list_jobs(owner=ANY_OWNER)) == len(ids) + 1
    assert store.list_jobs(owner="alice")[0].job_id == "alices"
    # No job: no page.
    assert list(store.list_pages(owner="bob")) == []
    # The rows of the job-list document: the same jobs, pages and times.
    rows = list(store.list_rows(owner=None, page=3))
    assert rows == [[(ref.job_id, ref.phase.value, ref.run_id, ref.owner,
                      iso(ref.creation_time)) for ref in p] for p in pages]
    assert rows[1][2][4] == "2026-12-01T12:00:00.123Z"


def test_rows_carry_every_instant_as_iso_text(store: JobStore) -> None:
    # Whole seconds, sub-millisecond digits (truncated, as `iso` does),
    # the turn of a year.
    times = [datetime(2026, 12, 1, 12, 0, 0, tzinfo=UTC),
             datetime(2026, 12, 1, 12, 0, 0, 999999, tzinfo=UTC),
             datetime(2026, 12, 31, 23, 59, 59, 1000, tzinfo=UTC)]
    for i, when in enumerate(times):
        _add(store, f"t{i}", when, owner="carol")
    rows = [row for page in store.list_rows(owner="carol") for row in page]
    assert [row[4] for row in rows] == ["2026-12-31T23:59:59.001Z",
                                        "2026-12-01T12:00:00.999Z",
                                        "2026-12-01T12:00:00.000Z"]
    assert [row[4] for row in rows] == [iso(t) for t in reversed(times)]


def test_a_list_of_many_pages_leaves_no_more_garbage(store: JobStore) -> None:
    # Objects in reference cycles outlive a list until a full
    # collection, and 20 lists at once left enough of them to pin the
    # interpreter's arenas: a list of ten pages may leave no more than
    # a list of one (a statement built per page left ~7 each).
    for i in range(30):
        _add(store, f"job{i:02d}", T0 + timedelta(seconds=i))
    store.list_page = 3

    def garbage(last: int) -> int:
        gc.collect()
        gc.disable()
        try:
            pages = list(store.list_rendered(len, owner=None, last=last))
            found = gc.collect()
        finally:
            gc.enable()
        assert sum(pages) == last
        return found

    garbage(3)  # SQLAlchemy's caches filled
    one, ten = garbage(3), garbage(30)
    assert ten <= one, (one, ten)


def test_lists_read_sqlite_through_their_own_small_connections(
        tmp_path: Any) -> None:
    # A list of a SQLite file goes through LIST_READERS connections of
    # its own with a small page cache, not through the store's pool
    # (whose connections would each keep the index pages they read).
    url = f"sqlite:///{tmp_path}/jobs.sqlite"
    upgrade(url)
    store = JobStore(url)
    try:
        for i in range(12):
            _add(store, f"job{i:02d}", T0 + timedelta(seconds=i))
        on_store = _Queries(store.engine)
        on_lists = _Queries(store.list_engine)
        assert len(store.list_jobs(owner=None)) == 12
        assert len(list(store.list_pages(owner=None, page=5))) == 3
        assert (on_store.count, on_lists.count) == (0, 1 + 3)
        with store.list_engine.connect() as conn:
            kib = conn.exec_driver_sql("PRAGMA cache_size").scalar()
        assert kib == -LIST_CACHE_KIB
        assert store.list_engine.pool.size() == LIST_READERS
    finally:
        store.close()


class _Queries:
    """Count the job-list queries the store sends (SQLAlchemy's hook)."""

    def __init__(self, engine: sa.Engine) -> None:
        self.count = 0
        sa.event.listen(engine, "before_cursor_execute", self._seen)

    def _seen(self, _conn: Any, _cursor: Any, statement: str,
              *_args: Any) -> None:
        if "ORDER BY jobs.creation_time DESC" in statement:
            self.count += 1


def test_the_list_is_written_as_it_is_read(start_service: Any) -> None:
    live: LiveService = start_service()
    store = live.service.store
    now = utcnow()
    for i in range(25):
        _add(store, f"job{i:02d}", now - timedelta(seconds=100 - i))
    store.list_page = 10
    queries = _Queries(store.list_engine)
    request = Request.blank("/jobs", base_url="http://127.0.0.1:1")
    status, headers, app_iter = request.call_application(live.app)
    assert status == "200 OK"
    assert ("Content-Type", "text/xml; charset=utf-8") in headers
    assert queries.count == 1  # the first page, read before answering
    pieces = iter(app_iter)
    head, first = next(pieces), next(pieces)
    assert head.startswith(b"<?xml")
    assert first.count(b"<uws:jobref ") == 10
    assert queries.count == 1  # nothing more read yet
    # The oldest job goes now, another changes phase (the pages that
    # hold them are still to come) and a new one comes (newer than all).
    live.service.delete("job00", ANONYMOUS)
    store.transition("job03", [Phase.PENDING], Phase.ABORTED)
    _add(store, "newest", utcnow())
    rest = b"".join(pieces)
    assert queries.count == 3  # 10 + 10 + 4 rows
    root = etree.fromstring(head + first + rest)
    listed = [ref.get("id") for ref in root.iter(f"{UWS}jobref")]
    assert listed == [f"job{i:02d}" for i in reversed(range(1, 25))]
    phases = {ref.get("id"): ref.findtext(f"{UWS}phase")
              for ref in root.iter(f"{UWS}jobref")}
    assert phases["job03"] == "ABORTED"
    assert set(phases.values()) == {"PENDING", "ABORTED"}
    if (SCHEMAS / "UWS.xsd").exists():
        schema = etree.XMLSchema(etree.parse(str(SCHEMAS / "UWS.xsd")))
        schema.assertValid(root)


def test_a_filtered_list_reads_only_its_pages(start_service: Any) -> None:
    live: LiveService = start_service()
    store = live.service.store
    now = utcnow()
    for i in range(30):
        _add(store, f"job{i:02d}", now - timedelta(seconds=100 - i))
    store.transition("job29", [Phase.PENDING], Phase.ABORTED)
    store.list_page = 10
    queries = _Queries(store.list_engine)
    r = live.http.get(live.jobs, params={"LAST": "12", "PHASE": "PENDING"})
    assert r.status_code == 200, r.text
    ids = [ref.get("id") for ref in
           etree.fromstring(r.content).iter(f"{UWS}jobref")]
    assert ids == [f"job{i:02d}" for i in range(28, 16, -1)]
    assert queries.count == 2  # LIMIT 10, then LIMIT 2


@pytest.mark.parametrize("owner", [None, "alice", ANY_OWNER],
                         ids=["anonymous", "alice", "everybody"])
def test_each_page_is_read_from_an_index_in_order(tmp_path: Any,
                                                  owner: object) -> None:
    """SQLite's plan of the list's queries: no sort of the owner's jobs.

    Before revision 0004 an owner's list used the index on (owner,
    phase, creation time) and sorted every job of the owner again for
    each page (``USE TEMP B-TREE FOR ORDER BY``).
    """
    url = f"sqlite:///{tmp_path}/jobs.sqlite"
    upgrade(url)
    store = JobStore(url)
    try:
        for i in range(40):
            _add(store, f"a{i:02d}", T0 + timedelta(seconds=i),
                 owner=("alice", None, "bob")[i % 3])
        sent: list[tuple[str, Any]] = []
        sa.event.listen(store.list_engine, "before_cursor_execute",
                        lambda _c, _k, sql, params, *_a:
                        sent.append((sql, params)))
        pages = list(store.list_pages(owner=owner, page=5))
        assert len(pages) >= 2  # the keyset query is planned too
        lists = [(sql, p) for sql, p in sent if "ORDER BY" in sql]
        assert len(lists) >= 2
        with store.engine.connect() as conn:
            raw = conn.connection.dbapi_connection
            assert raw is not None
            for sql, params in lists:
                plan = " | ".join(row[3] for row in raw.execute(
                    f"EXPLAIN QUERY PLAN {sql}", params))
                assert "TEMP B-TREE" not in plan, plan
                assert "COVERING INDEX" in plan, plan
    finally:
        store.close()
