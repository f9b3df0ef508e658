"""The job folder: every file round-trips, outcomes are read as written."""

from __future__ import annotations

import json

import pytest

from pbs_bridge.jobfolder import (
    Completed,
    ContractError,
    Failed,
    JobFolder,
    Progress,
    StepState,
    Vanished,
    WorkerError,
    WorkerSpec,
    upload_name,
    uploaded_name,
)
from qualityfits.manifest import Manifest, Product
from qualityfits.parameters import QualityParameters


@pytest.fixture
def folder(tmp_path):
    made = JobFolder(tmp_path / "0123abcd")
    made.path.mkdir()
    return made


def _manifest() -> Manifest:
    return Manifest(
        image="field.fits", qualityfits="0.1.0", n_extensions=2,
        failed_extensions=("ccd01",), flags=("FEW_STARS",),
        products=(Product("summary", "field_summary.vot",
                          "application/x-votable+xml", 1234,
                          "Statistics per CCD"),
                  Product("archive", "field_qf.tar.gz", "application/gzip",
                          99, "Every product in one archive")))


def test_spec_round_trip(folder):
    parameters = QualityParameters(zeropoint=26.1, pixscale=0.187,
                                   mask_convention="zero").to_json()
    spec = WorkerSpec(job_id="0123abcd", image="inputs/image.fits",
                      flat="https://example.org/flat.fits",
                      parameters=parameters, ccd_jobs=2,
                      fetch_limit=1000, fetch_timeout=5.0, run_id="night")
    folder.write_spec(spec)
    assert json.loads(folder.spec_file.read_text())["version"] == 2
    back = folder.read_spec()
    assert back == spec
    assert QualityParameters.from_json(back.parameters) == \
        QualityParameters(zeropoint=26.1, pixscale=0.187,
                          mask_convention="zero")


def test_a_version_1_spec_is_still_read(folder):
    """A job queued before an upgrade keeps its two science values."""
    folder.spec_file.write_text(json.dumps({
        "version": 1, "job_id": "j", "image": "inputs/image.fits",
        "zeropoint": 25.5, "pixscale": None, "ccd_jobs": 1}))
    spec = folder.read_spec()
    assert spec.parameters == {"zeropoint": 25.5}
    assert QualityParameters.from_json(spec.parameters).zeropoint == 25.5


@pytest.mark.parametrize(("text", "words"), [
    ('{"version": 3, "job_id": "j", "image": "x"}',
     "version 3, this program reads version 1 or 2"),
    ('{"version": 2, "job_id": "j", "image": "x", "zeropoint": 1}',
     "unknown keys ['zeropoint']"),
    ("[]", "not a JSON object"),
])
def test_bad_specs_are_refused(folder, text, words):
    folder.spec_file.write_text(text)
    with pytest.raises(ContractError, match=words.replace("[", r"\[")):
        folder.read_spec()


def test_progress_round_trip(folder):
    assert folder.progress() is None  # not written yet
    progress = Progress(
        steps=(StepState("fetch", "skipped"),
               StepState("read", "done", "2026-12-06T10:00:00Z",
                         "2026-12-06T10:00:01Z", "2/2 CCDs")),
        host="node3", pid=42, started="2026-12-06T10:00:00Z",
        max_rss_kb=2048, cpu_s=1.5, extra={"job_id": "j"})
    folder.write_progress(progress)
    assert folder.progress() == progress
    folder.progress_file.write_text('{"version": 1, "steps": 3}')
    assert folder.progress() is None  # unreadable: as if absent


def test_outcomes(folder):
    assert folder.outcome() == Vanished()
    manifest = _manifest()
    folder.results.mkdir()
    manifest.write(folder.manifest_file)
    assert folder.outcome() == Completed(manifest)
    # An error document wins over a manifest (a failure while writing
    # the archive).
    folder.write_error(WorkerError("usage", "no star usable for the PSF",
                                   "details"))
    outcome = folder.outcome()
    assert isinstance(outcome, Failed)
    assert outcome.error == WorkerError("usage",
                                        "no star usable for the PSF",
                                        "details")
    folder.clear_outcome()
    assert folder.outcome() == Vanished()


@pytest.mark.parametrize(("where", "text", "words"), [
    ("manifest", "{not json", "unreadable results manifest"),
    ("manifest", '{"version": "0.1.0", "products": []}',
     "unreadable results manifest"),
    ("error", '{"version": 1, "type": "odd", "message": "m"}',
     "unreadable error document"),
    ("error", "", "unreadable error document"),
])
def test_unreadable_outcomes_are_failures_saying_why(folder, where, text,
                                                     words):
    folder.results.mkdir()
    path = folder.manifest_file if where == "manifest" else folder.error_file
    path.write_text(text)
    outcome = folder.outcome()
    assert isinstance(outcome, Failed)
    assert outcome.error.type == "fatal"
    assert outcome.error.message.startswith(words)


def test_log_tail_and_size(folder):
    assert folder.log_size() is None
    assert folder.log_tail() == ""
    folder.log_file.write_text("".join(f"line {i}\n" for i in range(100)))
    assert folder.log_size() == folder.log_file.stat().st_size
    tail = folder.log_tail(3).splitlines()
    assert tail == ["line 97", "line 98", "line 99"]


def test_paths_stay_inside_the_folder(folder):
    assert folder.input_path("inputs/image.fits") == \
        folder.path / "inputs" / "image.fits"
    for bad in ("/etc/passwd", "../other/inputs/image.fits"):
        with pytest.raises(ContractError, match="not a path inside"):
            folder.input_path(bad)
    assert folder.thumbnail("mosaic") == \
        folder.derived / "thumbs" / "mosaic.png"
    for bad in ("", "../x", ".hidden", "a/b"):
        with pytest.raises(ContractError, match="not a result id"):
            folder.thumbnail(bad)


@pytest.mark.parametrize(("sent", "stored"), [
    ("field.fits", "field.fits"),
    ("../../etc/passwd", "passwd"),
    ("..", "image.fits"),
    ("...", "image.fits"),
    ("", "image.fits"),
    ("a\x00b.fits", "a_b.fits"),
    ("a\nb\x7f.fits", "a_b_.fits"),
    ("D:\\data\\night 2\\exp.fits.fz", "exp.fits.fz"),
    ("-rf .fits", "rf_.fits"),
    ("Ωmega–Ñight.fits", "_mega_Night.fits"),
    ("夜.fits.gz", "image.fits.gz"),
    ("z" * 10_000, "z" * 100),
    ("é" * 500 + ".fits", "e" * 95 + ".fits"),
    ("exp.2024-01-01.fits", "exp.2024-01-01.fits"),
])
def test_an_upload_is_stored_under_its_name_made_safe(folder, sent, stored):
    path = folder.uploaded_input("image", sent)
    assert path == folder.inputs / "image" / stored
    assert upload_name(sent, "image") == stored
    assert uploaded_name(path.relative_to(folder.path).as_posix()) == stored


def test_an_upload_of_before_has_no_name():
    assert uploaded_name("inputs/image.fits") is None


def test_a_new_input_replaces_the_old_file(folder):
    for old in (folder.uploaded_input("image", "first.fits"),
                folder.uploaded_input("image", "second.fits"),
                folder.inputs / "image.fits",
                folder.uploaded_input("flat", "flat.fits")):
        old.parent.mkdir(parents=True, exist_ok=True)
        old.write_bytes(b"x")

    def left():
        return sorted(p.relative_to(folder.inputs).as_posix()
                      for p in folder.inputs.rglob("*") if p.is_file())

    folder.clear_input("image", keep="inputs/image/second.fits")
    assert left() == ["flat/flat.fits", "image/second.fits"]
    folder.clear_input("image")  # a URL now
    assert left() == ["flat/flat.fits"]
