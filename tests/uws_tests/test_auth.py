"""Who may see and touch a job: anonymous, HTTP basic, a proxy's header.

Real clients against a real service: the user file is written by
``python -m uws.auth FILE USER`` (password on standard input), as an
operator would; alice and bob each see and touch only their own jobs
(403 on the other's, 401 without credentials); anonymous jobs have a
nil ownerId.
"""

from __future__ import annotations

import base64
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from lxml import etree
from uwskit import UWS, XSI_NIL, LiveService, wait_for

PROJECT = Path(__file__).resolve().parents[2]
PASSWORDS = {"alice": "wonderland", "bob": "the builder:2"}
#: Never fetched: the jobs here are not run.
IMAGE = "http://127.0.0.1:9/image.fits"

Starter = Callable[..., LiveService]


# -- helpers ---------------------------------------------------------------
def add_user(path: Path, user: str, password: str) -> None:
    """Add a user the way an operator does: ``python -m uws.auth``."""
    done = subprocess.run(
        [sys.executable, "-m", "uws.auth", str(path), user],
        input=f"{password}\n", text=True, capture_output=True, cwd=PROJECT,
        check=False, timeout=60)
    assert done.returncode == 0, done.stderr


def create(http: requests.Session, live: LiveService, **fields: Any) -> str:
    """POST a job as ``http``'s user; return its URL."""
    files = fields.pop("files", None)
    r = http.post(live.jobs, data={"IMAGE": IMAGE, **fields}, files=files,
                  allow_redirects=False)
    assert r.status_code == 303, r.text
    return str(r.headers["Location"])


def xml(r: requests.Response) -> Any:
    """The XML document of a 200 answer."""
    assert r.status_code == 200, (r.status_code, r.text)
    return etree.fromstring(r.content)


def owner_of(element: Any) -> str | None:
    """The ownerId of a job or jobref (None when nil)."""
    owner = element.find(f"{UWS}ownerId")
    assert owner is not None
    if owner.get(XSI_NIL) == "true":
        assert not owner.text
        return None
    return str(owner.text)


def listed(http: requests.Session, live: LiveService) -> dict[str, Any]:
    """The caller's job list: job id -> jobref."""
    jobs = xml(http.get(live.jobs))
    return {str(ref.get("id")): ref for ref in jobs.iter(f"{UWS}jobref")}


def job_id(url: str) -> str:
    """The id at the end of a job URL."""
    return url.rsplit("/", 1)[1]


def status_text(r: requests.Response, status: int, *fragments: str) -> None:
    """Check a refusal: status, text/plain, each fragment in the text."""
    assert r.status_code == status, (r.status_code, r.text)
    assert r.headers["Content-Type"].startswith("text/plain")
    for fragment in fragments:
        assert fragment in r.text, (fragment, r.text)


def check_separation(live: LiveService, alice: requests.Session,
                     bob: requests.Session) -> None:
    """Alice's job is hers alone; bob's is his; each list is its own."""
    mine = create(alice, live, RUNID="alice's")
    theirs = create(bob, live)
    # The owner is shown in the job, the jobref and the owner resource.
    job = xml(alice.get(mine))
    assert owner_of(job) == "alice"
    assert alice.get(f"{mine}/owner").text == "alice"
    alice_list = listed(alice, live)
    assert set(alice_list) == {job_id(mine)}
    assert owner_of(alice_list[job_id(mine)]) == "alice"
    bob_list = listed(bob, live)
    assert set(bob_list) == {job_id(theirs)}
    assert owner_of(bob_list[job_id(theirs)]) == "bob"
    assert owner_of(xml(bob.get(theirs))) == "bob"
    # Every resource of alice's job is refused to bob.
    not_yours = f"PermissionDenied: job {job_id(mine)} is not yours"
    for path in ("", "/phase", "/parameters", "/parameters/image",
                 "/results", "/error", "/owner", "/quote",
                 "/executionduration", "/destruction"):
        status_text(bob.get(f"{mine}{path}"), 403, not_yours)
    for r in (
            bob.delete(mine, allow_redirects=False),
            bob.post(mine, data={"ACTION": "DELETE"},
                     allow_redirects=False),
            bob.post(f"{mine}/phase", data={"PHASE": "RUN"},
                     allow_redirects=False),
            bob.post(f"{mine}/phase", data={"PHASE": "ABORT"},
                     allow_redirects=False),
            bob.post(f"{mine}/parameters", data={"ZEROPOINT": "25"},
                     allow_redirects=False),
            bob.post(f"{mine}/executionduration",
                     data={"EXECUTIONDURATION": "60"},
                     allow_redirects=False),
            bob.post(f"{mine}/destruction",
                     data={"DESTRUCTION": "2030-01-01T00:00:00Z"},
                     allow_redirects=False),
            bob.get(mine, params={"WAIT": "5"})):
        status_text(r, 403, not_yours)
    # Nothing changed; alice still has her job, and deletes it.
    job = xml(alice.get(mine))
    assert job.findtext(f"{UWS}phase") == "PENDING"
    assert job.findtext(f"{UWS}executionDuration") == "3600"
    assert [p.get("id") for p in job.iter(f"{UWS}parameter")] == ["image"]
    # An unknown job is 404 for everybody (no hint either way).
    status_text(bob.get(f"{live.jobs}/0123456789abcdef"), 404, "NotFound")
    r = alice.delete(mine, allow_redirects=False)
    assert r.status_code == 303
    status_text(alice.get(mine), 404, "NotFound")
    assert set(listed(bob, live)) == {job_id(theirs)}


# -- basic -----------------------------------------------------------------
@pytest.fixture
def user_file(tmp_path: Path) -> Path:
    """A user file with alice and bob, written by ``python -m uws.auth``."""
    path = tmp_path / "users"
    for user, password in PASSWORDS.items():
        add_user(path, user, password)
    return path


@pytest.fixture
def basic(start_service: Starter, user_file: Path) -> LiveService:
    """A service with HTTP basic authentication."""
    return start_service(auth="basic", auth_user_file=str(user_file))


def client(user: str | None = None, password: str | None = None,
           **headers: str) -> requests.Session:
    """A client session with basic credentials or headers."""
    http = requests.Session()
    if user is not None:
        http.auth = (user, PASSWORDS[user] if password is None
                     else password)
    http.headers.update(headers)
    return http


@pytest.fixture
def alice() -> Iterator[requests.Session]:
    """Alice's client (basic)."""
    with client("alice") as http:
        yield http


@pytest.fixture
def bob() -> Iterator[requests.Session]:
    """Bob's client (basic)."""
    with client("bob") as http:
        yield http


def test_the_user_file_holds_hashes(user_file: Path):
    lines = user_file.read_text().splitlines()
    assert [ln.split(":", 1)[0] for ln in lines] == ["alice", "bob"]
    for line, password in zip(lines, PASSWORDS.values(), strict=True):
        assert line.split(":", 1)[1].startswith("pbkdf2_sha256$")
        assert password not in line
    # Replacing a password keeps one line per user.
    add_user(user_file, "alice", "new password")
    assert [ln.split(":", 1)[0]
            for ln in user_file.read_text().splitlines()] == ["bob", "alice"]


def test_basic_without_credentials_is_401(basic: LiveService,
                                          sample_image: Path):
    with client() as anonymous:
        for r in (anonymous.get(basic.jobs),
                  anonymous.get(f"{basic.jobs}/0123456789abcdef"),
                  anonymous.get(f"{basic.jobs}/0123456789abcdef/phase")):
            status_text(r, 401, "NotAuthenticated: authentication required")
            assert r.headers["WWW-Authenticate"] == (
                'Basic realm="QualityFITS-UWS", charset="UTF-8"')
        # An upload without credentials is refused before it is read.
        with sample_image.open("rb") as fh:
            r = anonymous.post(basic.jobs, data={"PHASE": "RUN"},
                               files={"image": fh}, allow_redirects=False)
        status_text(r, 401, "NotAuthenticated")
        assert "WWW-Authenticate" in r.headers
    assert basic.service.store.count() == 0
    staging = basic.service.staging_root
    assert not staging.exists() or list(staging.iterdir()) == []


@pytest.mark.parametrize(("user", "password"), [
    ("alice", "Wonderland"), ("alice", ""), ("carol", "wonderland"),
    ("bob", "the builder")])
def test_basic_wrong_password_is_401(basic: LiveService, user: str,
                                     password: str):
    with client(user, password) as http:
        r = http.get(basic.jobs)
    status_text(r, 401, "NotAuthenticated: unknown user or wrong password")
    assert r.headers["WWW-Authenticate"].startswith("Basic realm=")


@pytest.mark.parametrize("header", [
    "Basic !!!not-base64!!!", "Bearer abc", "Basic",
    "Basic " + base64.b64encode(b"\xff\xfe:x").decode()])
def test_basic_malformed_credentials_are_401(basic: LiveService,
                                             header: str):
    r = requests.get(basic.jobs, headers={"Authorization": header},
                     timeout=30)
    status_text(r, 401, "NotAuthenticated")


def test_basic_owners_are_separated(basic: LiveService,
                                    alice: requests.Session,
                                    bob: requests.Session):
    check_separation(basic, alice, bob)


def test_basic_user_added_while_running(basic: LiveService,
                                        user_file: Path):
    with client() as carol:
        carol.auth = ("carol", "c4rol")
        status_text(carol.get(basic.jobs), 401, "NotAuthenticated")
        add_user(user_file, "carol", "c4rol")
        url = create(carol, basic)
        assert owner_of(xml(carol.get(url))) == "carol"


# -- header ----------------------------------------------------------------
@pytest.fixture
def proxied(start_service: Starter) -> LiveService:
    """A service behind a proxy that names the user in X-Remote-User."""
    return start_service(auth="header")


def test_header_owners_are_separated(proxied: LiveService):
    with client(**{"X-Remote-User": "alice"}) as alice, \
            client(**{"X-Remote-User": "bob"}) as bob:
        check_separation(proxied, alice, bob)


@pytest.mark.parametrize("headers", [{}, {"X-Remote-User": ""}],
                         ids=["absent", "empty"])
def test_header_missing_is_401(proxied: LiveService,
                               headers: dict[str, str]):
    for r in (requests.get(proxied.jobs, headers=headers, timeout=30),
              requests.post(proxied.jobs, data={"IMAGE": IMAGE},
                            headers=headers, allow_redirects=False,
                            timeout=30)):
        status_text(r, 401, "NotAuthenticated: authentication required "
                    "(no X-Remote-User header from the proxy)")
        # RFC 9110 needs a challenge on a 401; the proxy authenticates,
        # so the default names no scheme a browser would prompt for.
        assert (r.headers["WWW-Authenticate"]
                == 'Proxy realm="QualityFITS-UWS"')
    assert proxied.service.store.count() == 0


def test_header_basic_credentials_are_not_an_identity(
        proxied: LiveService):
    with client("alice") as http:
        status_text(http.get(proxied.jobs), 401, "NotAuthenticated")


# -- anonymous -------------------------------------------------------------
def test_anonymous_jobs_have_no_owner(live: LiveService):
    url = create(live.http, live)
    job = xml(live.http.get(url))
    assert owner_of(job) is None
    refs = listed(live.http, live)
    assert owner_of(refs[job_id(url)]) is None
    r = live.http.get(f"{url}/owner")
    assert r.status_code == 200
    assert r.text == ""
    # Everybody sees every job: any credentials are ignored.
    with client() as other:
        other.auth = ("mallory", "x")
        assert set(listed(other, live)) == {job_id(url)}
        assert owner_of(xml(other.get(url))) is None


# -- pages, throttling (issue 16, items 3 and 9) ------------------------------
@pytest.mark.parametrize("path", ["/", "/ui/jobs", "/ui/check",
                                  "/ui/jobs/0123456789abcdef",
                                  "/ui/jobs/0123456789abcdef/results"])
def test_pages_ask_for_a_login(basic: LiveService, path: str):
    """A browser without credentials gets the login prompt, not a 500."""
    r = requests.get(f"{basic.url}{path}", timeout=30)
    assert r.status_code == 401, (r.status_code, r.text)
    assert r.headers["Content-Type"].startswith("text/html")
    assert r.headers["WWW-Authenticate"].startswith('Basic realm="')
    assert "Please sign in" in r.text


def test_pages_behind_the_proxy_say_401(proxied: LiveService):
    r = requests.get(f"{proxied.url}/ui/jobs", timeout=30)
    assert r.status_code == 401, (r.status_code, r.text)
    assert "no X-Remote-User header from the proxy" in r.text
    assert r.headers["WWW-Authenticate"].startswith("Proxy realm=")


def test_failed_logins_are_throttled(basic: LiveService):
    policy = basic.app.registry.authenticator
    with client("alice", "guess") as guesser:
        for _ in range(10):
            status_text(guesser.get(basic.jobs), 401, "wrong password")
        status_text(guesser.get(basic.jobs), 429, "TooManyRequests:",
                    "10 failed logins", "try again in")
    # Right password, same user, same address: still waits (no check).
    with client("alice") as right:
        status_text(right.get(basic.jobs), 429, "TooManyRequests:")
    # Another user from the same address is not held back.
    with client("bob") as other:
        assert other.get(basic.jobs).status_code == 200
    # Wrong passwords are never cached: the cache holds bob alone.
    assert len(policy._verified) == 1


# -- cross-site requests (issue 16, item 5) -----------------------------------
def test_a_foreign_origin_cannot_create_or_delete(basic: LiveService,
                                                  alice):
    mine = create(alice, basic)
    for header, value in (("Origin", "https://evil.example"),
                          ("Origin", "null"),
                          ("Referer", "https://evil.example/page.html"),
                          ("Origin", basic.url.replace("127.0.0.1",
                                                       "localhost"))):
        r = alice.post(basic.jobs, data={"IMAGE": IMAGE},
                       headers={header: value}, allow_redirects=False)
        status_text(r, 403, "cross-site request refused", header)
        r = alice.delete(mine, headers={header: value},
                         allow_redirects=False)
        status_text(r, 403, "cross-site request refused")
    assert set(listed(alice, basic)) == {job_id(mine)}
    # The service's own pages (same origin) and API clients (no Origin).
    r = alice.post(basic.jobs, data={"IMAGE": IMAGE},
                   headers={"Origin": basic.url,
                            "Referer": f"{basic.url}/"},
                   allow_redirects=False)
    assert r.status_code == 303, r.text
    assert create(alice, basic)  # no Origin: a script


def test_page_forms_need_their_token(basic: LiveService, alice):
    page = alice.get(f"{basic.url}/").text
    token = page.split('name="csrf_token" value="', 1)[1].split('"', 1)[0]
    assert len(token) == 40
    form = {"image_url": IMAGE}
    r = alice.post(f"{basic.url}/ui/submit", data=form,
                   allow_redirects=False)
    status_text(r, 403, "this form is stale or comes from another site")
    with client("bob") as bob:  # another user's token is not alice's
        bobs = bob.get(f"{basic.url}/").text.split(
            'name="csrf_token" value="', 1)[1].split('"', 1)[0]
    assert bobs != token
    r = alice.post(f"{basic.url}/ui/submit",
                   data={**form, "csrf_token": bobs}, allow_redirects=False)
    assert r.status_code == 403
    assert listed(alice, basic) == {}
    r = alice.post(f"{basic.url}/ui/submit",
                   data={**form, "csrf_token": token}, allow_redirects=False)
    assert r.status_code == 303, r.text
    job = r.headers["Location"].rsplit("/", 1)[1]
    r = alice.post(f"{basic.url}/ui/jobs/{job}/delete",
                   allow_redirects=False)
    status_text(r, 403, "reload the page")
    r = alice.post(f"{basic.url}/ui/jobs/{job}/delete",
                   data={"csrf_token": token}, allow_redirects=False)
    assert r.status_code == 303
    assert listed(alice, basic) == {}


# -- quotas (issue 16, item 6) ------------------------------------------------
def test_quotas_are_per_owner(start_service: Starter, user_file: Path,
                              alice, bob):
    live = start_service(auth="basic", auth_user_file=str(user_file),
                         max_stored_jobs="3", max_active_jobs="1",
                         worker_command="sleep 30")
    jobs = [create(alice, live) for _ in range(3)]
    r = alice.post(live.jobs, data={"IMAGE": IMAGE}, allow_redirects=False)
    status_text(r, 403, "alice's 3 stored jobs are the limit "
                "(qfits.max_stored_jobs)")
    assert create(bob, live)  # bob's own quota
    assert alice.post(f"{jobs[0]}/phase", data={"PHASE": "RUN"},
                      allow_redirects=False).status_code == 303
    r = alice.post(f"{jobs[1]}/phase", data={"PHASE": "RUN"},
                   allow_redirects=False)
    status_text(r, 429, "TooManyRequests: alice's 1 queued or executing "
                "jobs are the limit (qfits.max_active_jobs)")
    assert alice.get(f"{jobs[1]}/phase").text == "PENDING"
    # Deleting frees room.
    assert alice.delete(jobs[2], allow_redirects=False).status_code == 303
    assert create(alice, live)
    # The running worker is stopped and reaped before the service goes.
    wait_for(lambda: alice.get(f"{jobs[0]}/phase").text == "EXECUTING",
             30, "the first job running")
    workers = _popens(live.service.runner)
    assert len(workers) == 1
    assert alice.post(f"{jobs[0]}/phase", data={"PHASE": "ABORT"},
                      allow_redirects=False).status_code == 303
    wait_for(lambda: all(p.poll() is not None for p in workers), 30,
             "the worker gone")


def _popens(runner: Any) -> list[Any]:
    return [c.popen for c in runner._children.values() if c.popen]
