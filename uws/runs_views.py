"""HTTP ⇄ runs: the run tables, the run list and the run pages.

A run is the set of the caller's jobs sharing a RUNID (`uws.runs`).
API (``text/plain`` errors, as the UWS resources):

* ``GET /runs``: the caller's runs, JSON (RUNID, jobs by phase, the
  creation times of the first and last job, the URLs below);
* ``GET /runs/{runid}/summary.vot``: the run's VOTable 1.4
  (`qualityfits.runs.run_votable_bytes`: ``exposures``, one row per job,
  and ``ccds``, one row per CCD);
* ``GET /runs/{runid}/summary.fits``: the same tables as FITS.

Pages (`uws.web` templates): ``/ui/runs`` the caller's runs,
``/ui/runs/{runid}`` a run (sortable table, grades, trend plots,
focal-plane strip), ``/ui/runs/{runid}/table`` the part of it the
page's script refreshes (204 when ``since`` is still the run's key),
``/ui/runs/{runid}/plots/{name}.png`` its pictures.

A RUNID that is not a safe token is a 400; one with no job of the
caller a 404 (another owner's run is not revealed).
"""

from __future__ import annotations

import json
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any, Final

from pyramid.response import Response
from pyramid.view import view_config

from qualityfits.grades import LETTERS, MEANING
from qualityfits.runs import (
    RunExposure,
    run_columns,
    run_rows,
    run_votable_bytes,
)
from qualityfits.runs import write_run_fits as _write_run_fits
from uws import xml
from uws.phases import Phase
from uws.runs import (
    PLOT_NAMES,
    Run,
    exposures_of,
    find_run,
    has_plots,
    is_safe_run_id,
    plot_file,
    versions,
    who,
)
from uws.store import RunRef
from uws.views import (
    allow_methods,
    base_url,
    form_of,
    job_url,
    owner_of,
    service_of,
)
from uws.web import input_image_url, render

__all__ = ["RUN_ROUTES", "VOTABLE_TYPE"]

#: Route name -> pattern (added by `uws.app`).
RUN_ROUTES: Final = (
    ("runs", "/runs"),
    ("run_votable", "/runs/{run_id}/summary.vot"),
    ("run_fits", "/runs/{run_id}/summary.fits"),
    ("ui_runs", "/ui/runs"),
    ("ui_run", "/ui/runs/{run_id}"),
    ("ui_run_table", "/ui/runs/{run_id}/table"),
    ("ui_run_plot", "/ui/runs/{run_id}/plots/{name}.png"),
)
VOTABLE_TYPE: Final = "application/x-votable+xml"
FITS_TYPE: Final = "application/fits"
#: Captions of the run's pictures.
PLOT_CAPTIONS: Final = {
    "run_trends": "FWHM, ellipticity, sky brightness and depth of each "
                  "exposure against time (median over the CCDs, bar: "
                  "their range; colour: the grade)",
    "run_ccd_fwhm": "Focal-plane strip: each CCD's FWHM against its "
                    "exposure's median, one line per exposure",
}


def _run(request: Any) -> Run:
    return find_run(service_of(request), owner_of(request),
                    request.matchdict["run_id"])


def _exposures(request: Any, run: Run) -> list[RunExposure]:
    """Return the exposures of ``run`` as the caller sees them."""
    return exposures_of(service_of(request), owner_of(request), run,
                        base_url(request))


def _urls(base: str, run_id: str) -> dict[str, str]:
    return {"page": f"{base}/ui/runs/{run_id}",
            "summary_vot": f"{base}/runs/{run_id}/summary.vot",
            "summary_fits": f"{base}/runs/{run_id}/summary.fits"}


def _attachment(body: bytes, mime: str, name: str) -> Response:
    response = Response(body=body, content_type=mime,
                        charset="utf-8" if "xml" in mime else None)
    response.content_disposition = f'inline; filename="{name}"'
    response.cache_control = "no-cache"
    return response


# -- API ---------------------------------------------------------------
def _listed(ref: RunRef, base: str) -> dict[str, Any]:
    safe = is_safe_run_id(ref.run_id)
    urls = _urls(base, ref.run_id)
    return {
        "run_id": ref.run_id,
        "jobs": ref.n_jobs,
        "phases": {p.value: n for p, n in sorted(
            ref.phases.items(), key=lambda item: item[0].value)},
        "first_creation": xml.iso(ref.first),
        "last_creation": xml.iso(ref.last),
        **{k: (v if safe else None) for k, v in urls.items()},
    }


def _run_refs(request: Any) -> list[RunRef]:
    return service_of(request).store.list_runs(owner=who(owner_of(request)))


@view_config(route_name="runs")
def runs_view(request: Any) -> Response:
    """GET the caller's runs as JSON, the most recent first."""
    allow_methods(request, "GET", "HEAD")
    base = base_url(request)
    body = {"runs": [_listed(ref, base) for ref in _run_refs(request)]}
    return Response(body=json.dumps(body, indent=1).encode(),
                    content_type="application/json", charset="utf-8")


@view_config(route_name="run_votable")
def run_votable_view(request: Any) -> Response:
    """GET the run's VOTable (exposures and CCDs)."""
    allow_methods(request, "GET", "HEAD")
    run = _run(request)
    exposures = _exposures(request, run)
    body = run_votable_bytes(run.run_id, exposures, versions())
    return _attachment(body, VOTABLE_TYPE, f"{run.run_id}_summary.vot")


@view_config(route_name="run_fits")
def run_fits_view(request: Any) -> Response:
    """GET the run's tables as FITS (EXPOSURES and CCDS extensions)."""
    allow_methods(request, "GET", "HEAD")
    run = _run(request)
    exposures = _exposures(request, run)
    with tempfile.TemporaryDirectory(
            dir=service_of(request).job_root) as scratch:
        path = Path(scratch) / "summary.fits"
        _write_run_fits(run.run_id, exposures, versions(), path)
        body = path.read_bytes()
    return _attachment(body, FITS_TYPE, f"{run.run_id}_summary.fits")


# -- pages -------------------------------------------------------------
@view_config(route_name="ui_runs")
def runs_page(request: Any) -> Response:
    """List the caller's runs, the most recent first."""
    allow_methods(request, "GET", "HEAD")
    base = base_url(request)
    runs = [_listed(ref, base) for ref in _run_refs(request)]
    return render(request, "runs.html", runs=runs)


def _table(request: Any, run: Run) -> dict[str, Any]:
    """Return what the run page's table part shows."""
    base = base_url(request)
    exposures = _exposures(request, run)
    rows = []
    for row in run_rows(exposures):
        e = row.exposure
        rows.append({"cells": row.cells, "grade": row.grade,
                     "reasons": row.reasons, "link": e.link,
                     "job_page": f"{base}/ui/jobs/{e.job_id}",
                     "job_id": e.job_id, "phase": e.phase,
                     "failed": bool(e.error)})
    counts = Counter(row["grade"] for row in rows if row["grade"])
    waiting = [{"api": job_url(request, j.job_id), "phase": j.phase.value}
               for j in run.waiting]
    plots = []
    if has_plots(exposures):
        plots = [{"name": name, "caption": PLOT_CAPTIONS[name],
                  "url": f"{base}/ui/runs/{run.run_id}/plots/{name}.png"
                         f"?v={run.key}"}
                 for name in PLOT_NAMES]
    return {
        "run": run, "columns": run_columns(exposures), "rows": rows,
        "grades": [(letter, counts[letter], MEANING[letter])
                   for letter in LETTERS if counts[letter]],
        "waiting": json.dumps(waiting), "n_waiting": len(waiting),
        "plots": plots, "urls": _urls(base, run.run_id),
    }


@view_config(route_name="ui_run")
def run_page(request: Any) -> Response:
    """Show a run: its table, grades and pictures, updated live."""
    allow_methods(request, "GET", "HEAD")
    run = _run(request)
    return render(request, "run.html", samp_images=_samp_images(request, run),
                  **_table(request, run))


def _samp_images(request: Any, run: Run) -> list[dict[str, str]]:
    """Return the images of the run's COMPLETED jobs, oldest first.

    What the page's "Send to DS9 / Aladin" sends (``image.load.fits``):
    each job's uploaded image (its ``/parameters/image`` URL) or the URL
    it was given by (`uws.web.input_image_url`, as on the results page).
    """
    items = []
    for job in reversed(run.jobs):
        url = (input_image_url(request, job)
               if job.phase is Phase.COMPLETED else None)
        if url is not None:
            items.append({"url": url, "id": url,
                          "name": f"{job.job_id}-image",
                          "label": job.job_id})
    return items


@view_config(route_name="ui_run_table")
def run_table_fragment(request: Any) -> Response:
    """Return the run page's table part (204: unchanged since ``since``)."""
    allow_methods(request, "GET", "HEAD")
    run = _run(request)
    since = form_of(request, body=False).single("since")
    if since is not None and since == run.key:
        return Response(status=204)
    return render(request, "run_table.html", **_table(request, run))


@view_config(route_name="ui_run_plot")
def run_plot_view(request: Any) -> Response:
    """Return a picture of the run (drawn when the run has changed)."""
    allow_methods(request, "GET", "HEAD")
    run = _run(request)
    path = plot_file(service_of(request), owner_of(request), run,
                     base_url(request), request.matchdict["name"])
    response = Response(body=path.read_bytes(), content_type="image/png",
                        conditional_response=True)
    response.etag = run.key
    response.cache_control = "no-cache"
    return response
