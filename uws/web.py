"""The web pages: submit, follow, view and download, for people.

Pages for astronomers without scripts, on top of the same job service
as the UWS API (and of the API itself: the job page follows a job with
the API's blocking WAIT).  Rendered with Jinja2 templates
(``uws/templates``, autoescaped); the page scripts and the style sheet
are served from ``uws/static`` (no CDN: the service may have no
internet).  Every page works without scripts; the scripts add the
upload progress bar, the refusal of a too-large file before it is
sent, and the live report.

Routes (``WEB_ROUTES``): ``/`` the submit form, ``/ui/jobs`` the
caller's jobs, ``/ui/jobs/{id}`` the processing report,
``/ui/jobs/{id}/results`` the results, ``/ui/check`` "is my result
there?", plus the form targets and thumbnails.
"""

from __future__ import annotations

import contextlib
import json
import math
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import jinja2
from pyramid.httpexceptions import HTTPNotFound
from pyramid.response import Response
from pyramid.view import exception_view_config, view_config

from pbs_bridge.jobfolder import uploaded_name
from qualityfits import presentation
from qualityfits.grades import MEANING
from qualityfits.parameters import PARAMETERS
from uws.auth import Identity
from uws.errors import UnknownJobError, UsageError, UWSError
from uws.forms import Form
from uws.model import Job, Result
from uws.notify import RESULTS_PAGE
from uws.params import parse_instant
from uws.phases import FINAL, Phase
from uws.runs import check_run_id, run_page_path
from uws.security import TOKEN_FIELD, check_token, form_token
from uws.settings import human_bytes
from uws.views import (
    allow_methods,
    base_url,
    form_of,
    job_url,
    owner_of,
    parse_phase,
    see_other,
    service_of,
)

#: Route name -> pattern of the pages (the home page is ``home``).
WEB_ROUTES = (
    ("ui_submit", "/ui/submit"),
    ("ui_check", "/ui/check"),
    ("ui_jobs", "/ui/jobs"),
    ("ui_job", "/ui/jobs/{job_id}"),
    ("ui_report", "/ui/jobs/{job_id}/report"),
    ("ui_abort", "/ui/jobs/{job_id}/abort"),
    ("ui_delete", "/ui/jobs/{job_id}/delete"),
    ("ui_results", RESULTS_PAGE),  # the link the e-mail gives
    ("ui_thumb", "/ui/jobs/{job_id}/thumbs/{result_id}"),
)

HERE = Path(__file__).resolve().parent
STATIC = HERE / "static"
#: Jobs per page of the job list (`jobs_page`).
JOBS_PER_PAGE = 100
#: Width of a picture's thumbnail [pixels].
THUMB_WIDTH = 480
#: The result whose numbers the per-CCD table shows (``<stem>.summary.json``).
SUMMARY_JSON = "summary_json"
#: Pictures of the results page, in order: (result id, caption), as on
#: the static report page (`qualityfits.presentation.PICTURES`).
PICTURES = tuple((p.id, p.caption) for p in presentation.PICTURES)
#: MIME types of the results the SAMP buttons send (`samp_items`).
VOTABLE = "application/x-votable+xml"
FITS = "application/fits"
#: Steps of the processing, in words.
STEP_WORDS = {
    "fetch": "fetch the image", "check": "check the input",
    "read": "read the CCDs", "background": "sky background",
    "cosmic_rays": "cosmic rays", "detection": "source detection",
    "psf": "PSF", "classification": "stars and galaxies",
    "weights": "weight and flag maps", "metrics": "metrics",
}

_env = jinja2.Environment(
    loader=jinja2.FileSystemLoader(HERE / "templates"),
    autoescape=True, trim_blocks=True, lstrip_blocks=True,
    undefined=jinja2.StrictUndefined)


def _when(value: datetime | None) -> str:
    return "—" if value is None else value.strftime("%Y-%m-%d %H:%M:%S UTC")


def _size(value: int | None) -> str:
    return "—" if value is None else human_bytes(int(value), decimals=1)


def _seconds(value: float | None) -> str:
    if value is None:
        return "—"
    minutes, seconds = divmod(float(value), 60)
    return f"{int(minutes)} min {seconds:.0f} s" if minutes else \
        f"{seconds:.1f} s"


def _span(step: Any) -> str:
    """Return how long a step took (or has been running), in words."""
    if not step.start:
        return ""
    try:
        start = datetime.fromisoformat(step.start)
        end = datetime.fromisoformat(step.end) if step.end else \
            datetime.now(start.tzinfo)
    except ValueError:
        return ""
    return _seconds((end - start).total_seconds())


_env.filters.update(when=_when, size=_size, seconds=_seconds, span=_span)
_env.globals.update(run_page=run_page_path)


def render(request: Any, template: str, status: int = 200,
           **values: Any) -> Response:
    """Render a page template with the values every page needs."""
    service = service_of(request)
    try:
        owner = owner_of(request).name
    except UWSError:
        if template != "error.html":
            raise  # a page is for a signed-in caller: 401, login prompt
        owner = None  # the error page of a caller not signed in
    body = _env.get_template(template).render(
        base=base_url(request), owner=owner,
        csrf_token=form_token(request.registry.csrf_secret, owner),
        limit=service.settings.upload_limit,
        limit_text=human_bytes(service.settings.upload_limit),
        step_words=STEP_WORDS, **values)
    return Response(body=body.encode(), status=status,
                    content_type="text/html", charset="utf-8")


@dataclass(frozen=True)
class Link:
    """A product as the results page lists it."""

    result: Result
    url: str


def _links(request: Any, job: Job) -> list[Link]:
    url = job_url(request, job.job_id)
    return [Link(r, f"{url}/results/{r.id}") for r in job.results]


def _job(request: Any) -> Job:
    return service_of(request).get(request.matchdict["job_id"],
                                   owner_of(request))


# -- submit ------------------------------------------------------------
@view_config(route_name="home")
def home_view(request: Any) -> Response:
    """Show the submit form (and where the API is)."""
    allow_methods(request, "GET", "HEAD")
    return render(request, "submit.html", parameters=PARAMETERS,
                  inf=math.inf)


@view_config(route_name="ui_submit")
def submit_view(request: Any) -> Response:
    """Create and run a job from the submit form; 303 to its page.

    The form sends the image as a file (``image``) or a URL
    (``image_url``); empty fields and unchosen files are dropped.
    """
    allow_methods(request, "POST")
    owner = owner_of(request)
    form = form_of(request)
    try:
        _check_form_token(request, owner, form)
    except UWSError:
        form.discard()
        raise
    for name, upload in list(form.uploads.items()):
        if upload.size == 0 and not upload.filename:
            del form.uploads[name]
    for name, values in list(form.values.items()):
        kept = [v for v in values if v.strip()]
        if kept:
            form.values[name] = kept
        else:
            del form.values[name]
    run_id = form.values.get("runid")
    if run_id is not None and len(run_id) == 1:
        try:  # a run named on the form gets a page: a safe token
            check_run_id(run_id[0].strip())
        except UWSError:
            form.discard()
            raise
        form.values["runid"] = [run_id[0].strip()]
    url = form.values.pop("image_url", None)
    if url is not None:
        form.values["image"] = url
    form.values["phase"] = ["RUN"]
    job_id = service_of(request).create(owner, form)
    return see_other(f"{base_url(request)}/ui/jobs/{job_id}")


def _check_form_token(request: Any, owner: Identity, form: Form) -> None:
    """Refuse a page's form without the caller's token (`uws.security`)."""
    given = form.values.pop(TOKEN_FIELD, [None])
    check_token(request.registry.csrf_secret, owner.name,
                given[0] if len(given) == 1 else None)


# -- one job -----------------------------------------------------------
@view_config(route_name="ui_job")
def job_page(request: Any) -> Response:
    """Show the processing report of a job, followed live by its script."""
    allow_methods(request, "GET", "HEAD")
    job = _job(request)
    return render(request, "job.html", job=job, **_report(request, job))


@view_config(route_name="ui_report")
def report_fragment(request: Any) -> Response:
    """Return the report part of the job page (for the live update)."""
    allow_methods(request, "GET", "HEAD")
    job = _job(request)
    return render(request, "report.html", job=job, **_report(request, job))


def _report(request: Any, job: Job) -> dict[str, Any]:
    error = ""
    if job.error is not None:
        with contextlib.suppress(UWSError):
            error = service_of(request).error_detail(
                job.job_id, owner_of(request))
    image = next((p for p in job.parameters if p.name == "image"), None)
    return {"api": job_url(request, job.job_id), "error_text": error,
            "final": job.phase in FINAL, "image": image,
            # The client's file name of an uploaded image, when kept.
            "upload": (uploaded_name(image.text)
                       if image is not None and image.is_post else None)}


@view_config(route_name="ui_abort")
def abort_view(request: Any) -> Response:
    """Abort the job (the page's button); back to its page."""
    allow_methods(request, "POST")
    job_id = request.matchdict["job_id"]
    owner = owner_of(request)
    _check_form_token(request, owner, form_of(request))
    service_of(request).abort(job_id, owner)
    return see_other(f"{base_url(request)}/ui/jobs/{job_id}")


@view_config(route_name="ui_delete")
def delete_view(request: Any) -> Response:
    """Delete the job (the page's button); to the job list."""
    allow_methods(request, "POST")
    owner = owner_of(request)
    _check_form_token(request, owner, form_of(request))
    service_of(request).delete(request.matchdict["job_id"], owner)
    return see_other(f"{base_url(request)}/ui/jobs?deleted=1")


# -- results -----------------------------------------------------------
@view_config(route_name="ui_results")
def results_page(request: Any) -> Response:
    """Show the pictures, the per-CCD table and every product."""
    allow_methods(request, "GET", "HEAD")
    job = _job(request)
    links = _links(request, job)
    by_id = {link.result.id: link for link in links}
    pictures = [(by_id[rid], caption) for rid, caption in PICTURES
                if rid in by_id]
    table = _ccd_table(request, job)
    return render(request, "results.html", job=job, links=links,
                  pictures=pictures, table=table,
                  archive=by_id.get("archive"),
                  api=job_url(request, job.job_id),
                  samp=samp_items(request, job, links))


def input_image_url(request: Any, job: Job) -> str | None:
    """Return where a desktop tool downloads the job's image, if anywhere.

    An upload is served at the job's ``/parameters/image``; an image
    given by http(s) URL is that URL.
    """
    image = next((p for p in job.parameters if p.name == "image"), None)
    if image is None:
        return None
    if image.is_post:
        return f"{job_url(request, job.job_id)}/parameters/image"
    if image.text.startswith(("http://", "https://")):
        return image.text
    return None


def samp_items(request: Any, job: Job,
               links: list[Link]) -> dict[str, list[dict[str, str]]]:
    """Return what the page's SAMP buttons send (``uws/static/samp.js``).

    ``tables``: the VOTable results (``table.load.votable``);
    ``images``: the input image (its upload's URL, or the URL it was
    given by) and the FITS results that are not the FITS twin
    (``<id>_fits``) of a VOTable (``image.load.fits``).  Each item is
    ``{url, id, name, label}`` (``label`` the result id, for the
    page), the URL the job's own, absolute.
    """
    def item(url: str, rid: str) -> dict[str, str]:
        return {"url": url, "id": url, "name": f"{job.job_id}-{rid}",
                "label": rid}

    tables = [link for link in links if link.result.mime == VOTABLE]
    twins = {f"{link.result.id}_fits" for link in tables}
    image = input_image_url(request, job)
    images = [] if image is None else [item(image, "image")]
    images += [item(link.url, link.result.id) for link in links
               if link.result.mime == FITS and link.result.id not in twins]
    return {"tables": [item(link.url, link.result.id) for link in tables],
            "images": images}


def _ccd_table(request: Any, job: Job) -> dict[str, Any] | None:
    """Build the per-CCD table from the job's ``summary.json``, if any.

    The columns, their headings and the rows are
    `qualityfits.presentation.ccd_table`'s, as on the static report page.
    """
    if not any(r.id == SUMMARY_JSON for r in job.results):
        return None
    found = service_of(request).result_file(job.job_id, owner_of(request),
                                            SUMMARY_JSON)
    try:
        summary = json.loads(found.path.read_bytes())
        table = presentation.ccd_table(summary)
        hdus = presentation.hdu_lines(summary.get("hdus", []))
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        return {"error": f"the summary cannot be read: {exc!r}"}
    return {
        "headings": [{"text": text, "title": title} for text, title
                     in zip(table.headings, table.titles, strict=True)],
        "rows": [{"cells": row.texts,
                  "flagged": row.flagged, "failed": row.failed,
                  "median": row.median} for row in table.rows],
        "note": table.note,
        "grade": _grade(summary),
        "hdus": hdus,
    }


def _grade(summary: Any) -> dict[str, Any] | None:
    """Return the exposure's grade from a summary (None before grades)."""
    grade = summary.get("exposure", {}).get("grade")
    if not isinstance(grade, dict) or grade.get("letter") not in MEANING:
        return None
    return {"letter": grade["letter"], "meaning": MEANING[grade["letter"]],
            "reasons": [str(r) for r in grade.get("reasons", [])],
            "notes": [str(n) for n in grade.get("notes", [])]}


@view_config(route_name="ui_thumb")
def thumb_view(request: Any) -> Response:
    """Return a small PNG of a picture result (made once, then kept)."""
    allow_methods(request, "GET", "HEAD")
    job_id = request.matchdict["job_id"]
    result_id = request.matchdict["result_id"]
    service = service_of(request)
    found = service.result_file(job_id, owner_of(request), result_id)
    if found.mime != "image/png":
        raise HTTPNotFound(f"{result_id} is not a picture")
    # Derived files live where the job folder keeps them (derived/).
    thumb = service.folder(job_id).thumbnail(result_id)
    if not thumb.exists():
        from PIL import Image  # noqa: PLC0415 - matplotlib's Pillow

        thumb.parent.mkdir(parents=True, exist_ok=True)
        with Image.open(found.path) as picture:
            picture.thumbnail((THUMB_WIDTH, THUMB_WIDTH * 4))
            tmp = thumb.with_suffix(".tmp")
            picture.save(tmp, format="PNG", optimize=True)
            tmp.replace(thumb)
    response = Response(body=thumb.read_bytes(), content_type="image/png")
    response.cache_control = "max-age=86400"
    return response


# -- errors, for people -------------------------------------------------
#: Titles of the error page by HTTP status.
ERROR_TITLES = {400: "This request cannot be done", 401: "Please sign in",
                403: "Not allowed", 404: "Not found", 413: "File too large",
                503: "The service cannot take this now"}


@exception_view_config(UWSError, path_info=r"^/(ui/.*)?$",
                       request_method="GET")
def page_error_view(exc: UWSError, request: Any) -> Response:
    """Render an error met by a page as a page (the API's are text)."""
    response = render(request, "error.html", status=exc.status,
                      title=ERROR_TITLES.get(exc.status, "Error"),
                      message=exc.message)
    if exc.status == 401:
        response.headers.update(request.registry.authenticator.challenge())
    return response


# -- lists and look-up -------------------------------------------------
@view_config(route_name="ui_jobs")
def jobs_page(request: Any) -> Response:
    """List the caller's jobs, newest first, filtered by phase.

    A page at a time (`JOBS_PER_PAGE`): an "Older jobs" link goes on
    after the last job shown (``before`` its creation time to the
    microsecond and ``before_job`` its id: the next page is right even
    when jobs come and go in between).
    """
    allow_methods(request, "GET", "HEAD")
    query = form_of(request, body=False)
    wanted = (query.single("phase") or "").strip()
    phases = [parse_phase(wanted, "phase")] if wanted else []
    before = _list_cursor(query.single("before"), query.single("before_job"))
    refs = service_of(request).list_jobs(owner_of(request),
                                         phases_=phases, before=before,
                                         last=JOBS_PER_PAGE + 1)
    older = None
    if len(refs) > JOBS_PER_PAGE:
        refs = refs[:JOBS_PER_PAGE]
        last = refs[-1]
        when = last.creation_time.astimezone(UTC)
        older = {**({"phase": wanted} if wanted else {}),
                 "before": when.strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
                 "before_job": last.job_id}
    return render(request, "jobs.html", refs=refs, wanted=wanted,
                  phases=[p.value for p in Phase if p is not
                          Phase.ARCHIVED],
                  deleted=bool(query.single("deleted")),
                  older=older, newest=before is None)


def _list_cursor(before: str | None,
                 before_job: str | None) -> tuple[datetime, str] | None:
    """Return where a page of the job list starts (None: the newest)."""
    if before is None and before_job is None:
        return None
    if before is None or not before_job:
        raise UsageError("before and before_job go together: the creation "
                         "time and the id of the job shown last (the "
                         '"Older jobs" link gives both)')
    return parse_instant(before, "before"), before_job


@view_config(route_name="ui_check")
def check_view(request: Any) -> Response:
    """Say whether a job's results are there (job id and e-mail)."""
    allow_methods(request, "GET", "HEAD")
    query = form_of(request, body=False)
    job_id = (query.single("job") or "").strip()
    email = (query.single("email") or "").strip()
    if not job_id:
        return render(request, "check.html", job_id="", email="",
                      message="", job=None)
    service = service_of(request)
    job = None
    with contextlib.suppress(UnknownJobError):
        job = service.get(job_id, owner_of(request))
    given = "" if job is None else next(
        (p.text for p in job.parameters if p.name == "email"), "")
    if job is None or (given and given.lower() != email.lower()):
        return render(request, "check.html", status=404, job_id=job_id,
                      email=email, job=None,
                      message="No job with this id and "
                      "e-mail address (jobs are deleted at their "
                      "destruction time).")
    if job.phase is Phase.COMPLETED:
        return see_other(base_url(request)
                         + RESULTS_PAGE.format(job_id=job_id))
    return render(request, "check.html", job_id=job_id, email=email,
                  message=f"Job {job_id} is {job.phase.value}: "
                  + ("no results yet." if job.phase not in FINAL else
                     "it has no results."), job=job)
