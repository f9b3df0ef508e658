"""The job body ``uws-worker JOBDIR`` on real, simulated images.

Success: exit 0, ``results/manifest.json`` listing the products, every
step of ``progress.json`` done, no ``error.json``.  Bad input: exit 2
and ``error.json`` of type usage naming the fault, the step at fault
failed.  Inputs given by URL are served by a real local HTTP server.
SIGTERM ends the job at once, without ``error.json`` or stray processes.
"""

from __future__ import annotations

import gzip
import http.server
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from astropy.io import fits

import qualityfits.io
from pbs_bridge.jobfolder import Progress, WorkerError, WorkerSpec
from pbs_bridge.worker import STEP_NAMES, _quality_error, main
from qualityfits.datasets import SimulationParams, simulate_image
from qualityfits.errors import InternalError, NoStarsError, QualityFitsError
from qualityfits.parallel import internal_failure
from qualityfits.pipeline import STEPS, _raise_all_failed
from qualityfits.products import PRODUCT_STEPS
from qualityfits.report import ErrorInfo, ExtensionReport

SMALL = SimulationParams(
    shape=(512, 512), n_stars=150, n_galaxies=200, n_cr_hits=20,
    n_cr_tracks=2,
)


# -- helpers ---------------------------------------------------------------


@pytest.fixture(scope="module")
def image_file(tmp_path_factory):
    """One simulated 512 x 512 CCD."""
    sim = simulate_image(SMALL, seed=700)
    path = tmp_path_factory.mktemp("sim") / "field.fits"
    fits.PrimaryHDU(sim.data, sim.header).writeto(path)
    return path


def make_job(root, upload=None, **spec):
    """A job directory with ``upload`` as inputs/image.fits."""
    job = root / "job"
    (job / "inputs").mkdir(parents=True)
    if isinstance(upload, bytes):
        (job / "inputs" / "image.fits").write_bytes(upload)
    elif upload is not None:
        shutil.copyfile(upload, job / "inputs" / "image.fits")
    spec.setdefault("image", "inputs/image.fits")
    # The test server's address, allowed as a data centre's archive.
    spec.setdefault("fetch_allow", ["127.0.0.1"])
    (job / "spec.json").write_text(WorkerSpec(job_id="j1", **spec).to_json())
    return job


def run_worker(job):
    return subprocess.run(
        [sys.executable, "-m", "pbs_bridge.worker", str(job)],
        capture_output=True, text=True, timeout=300, check=False)


def progress(job):
    return Progress.from_json((job / "progress.json").read_text())


def states(job):
    return {s.name: s.state for s in progress(job).steps}


def error(job):
    return WorkerError.from_json((job / "error.json").read_text())


def leftovers(job):
    """Hidden files (partial maps, temporary documents) in the job."""
    return sorted(str(p.relative_to(job)) for p in job.rglob(".*"))


def test_the_service_grade_limits_grade_the_job(image_file, tmp_path):
    # Limits far below any seeing: the same image graded D for its FWHM.
    job = make_job(tmp_path, image_file,
                   config={"grade_fwhm_arcsec": [0.01, 0.02, 0.03]})
    result = run_worker(job)
    assert result.returncode == 0, result.stdout + result.stderr
    summary = json.loads(next((job / "results").glob("*.summary.json"))
                         .read_text())
    grade = summary["exposure"]["grade"]
    assert grade["letter"] == "D"
    assert grade["reasons"][0].startswith("FWHM ")
    assert grade["reasons"][0].endswith("> 0.03″")
    assert summary["config"]["grade_fwhm_arcsec"] == [0.01, 0.02, 0.03]


# -- a good job ------------------------------------------------------------


@pytest.fixture(scope="module")
def good(image_file, tmp_path_factory):
    job = make_job(tmp_path_factory.mktemp("good"), image_file)
    return job, run_worker(job)


class TestGoodJob:
    def test_exit_status_and_log(self, good):
        _, result = good
        assert result.returncode == 0, result.stdout + result.stderr
        assert "Traceback" not in result.stdout + result.stderr
        assert result.stderr == ""
        assert "job j1: image inputs/image.fits" in result.stdout
        assert "step psf: done (1/1 CCDs)" in result.stdout
        assert "job j1 completed" in result.stdout
        assert "exit status 0 after" in result.stdout.splitlines()[-1]

    def test_manifest_lists_the_products(self, good):
        job, _ = good
        doc = json.loads((job / "results" / "manifest.json").read_text())
        products = {p["id"]: p for p in doc["products"]}
        for pid in ("summary", "catalogue", "weight", "flag", "report",
                    "archive"):
            assert pid in products
        assert doc["products"][0]["id"] == "summary"
        for product in doc["products"]:
            path = job / "results" / product["file"]
            assert path.stat().st_size == product["size"]
        assert doc["failed_extensions"] == []

    def test_every_step_done(self, good):
        job, _ = good
        doc = progress(job)
        assert tuple(s.name for s in doc.steps) == STEP_NAMES == (
            "fetch", "check", *STEPS, *PRODUCT_STEPS)
        steps = {s.name: s for s in doc.steps}
        assert steps["fetch"].state == "skipped"  # an upload
        for step in doc.steps[1:]:
            assert step.state == "done", step
            assert step.start.endswith("Z")
            assert step.end.endswith("Z")
            assert step.start <= step.end
        for earlier, later in zip(doc.steps[1:], doc.steps[2:],
                                  strict=False):
            assert earlier.start <= later.start
        assert steps["check"].detail == "1 CCD"
        for name in STEPS:
            assert steps[name].detail == "1/1 CCDs"

    def test_host_and_usage(self, good):
        job, _ = good
        doc = progress(job)
        assert doc.host == socket.gethostname()
        assert doc.pid > 0
        assert doc.max_rss_kb > 10_000
        assert doc.cpu_s > 0
        assert doc.started <= doc.updated
        assert doc.extra == {"job_id": "j1", "ccds": 1}

    def test_nothing_left_behind(self, good):
        job, _ = good
        assert not (job / "error.json").exists()
        assert leftovers(job) == []


def test_the_roles_are_decided_once_per_job(tmp_path, monkeypatch):
    """The check's roles are handed to assess, not decided again."""
    sim = simulate_image(SMALL, seed=701)
    path = tmp_path / "two.fits"
    fits.HDUList([fits.PrimaryHDU()] + [
        fits.ImageHDU(sim.data, sim.header, name=f"ccd{k}")
        for k in range(2)]).writeto(path)
    job = make_job(tmp_path, path, ccd_jobs=1)
    decided = []

    def counted(hdul):
        decided.append(len(hdul))
        return real(hdul)

    real = qualityfits.io.hdu_roles
    monkeypatch.setattr(qualityfits.io, "hdu_roles", counted)
    assert main([str(job)]) == 0
    assert decided == [3]
    summary = json.loads(next((job / "results").glob("*.summary.json"))
                         .read_text())
    assert [h["role"] for h in summary["hdus"]] == [
        "header only", "sky image", "sky image"]


# -- bad input -------------------------------------------------------------


class TestBadInput:
    def test_not_fits(self, tmp_path, capsys):
        job = make_job(tmp_path, b"this is not an image\n" * 200)
        assert main([str(job)]) == 2
        err = error(job)
        assert err.type == "usage"
        assert "image image.fits: not a FITS file" in err.message
        assert err.detail == ""
        got = states(job)
        assert got["fetch"] == "skipped"
        assert got["check"] == "failed"
        assert {got[name] for name in (*STEPS, *PRODUCT_STEPS)} == {
            "pending"}
        assert not (job / "results" / "manifest.json").exists()
        assert leftovers(job) == []
        assert "job failed (usage): image image.fits: not a FITS" in (
            capsys.readouterr().out)

    def test_flat_of_another_shape(self, tmp_path, image_file):
        job = make_job(tmp_path, image_file, flat="inputs/flat.fits")
        fits.PrimaryHDU(np.ones((64, 64), np.float32)).writeto(
            job / "inputs" / "flat.fits")
        assert main([str(job)]) == 2
        err = error(job)
        assert err.type == "usage"
        assert "flat flat.fits" in err.message
        assert "shape 64x64" in err.message
        assert states(job)["check"] == "failed"

    def test_weight_of_another_shape(self, tmp_path, image_file):
        job = make_job(tmp_path, image_file, weight="inputs/weight.fits")
        fits.PrimaryHDU(np.ones((64, 64), np.float32)).writeto(
            job / "inputs" / "weight.fits")
        assert main([str(job)]) == 2
        err = error(job)
        assert err.type == "usage"
        assert "weight weight.fits" in err.message
        assert "shape 64x64" in err.message
        assert states(job)["check"] == "failed"

    def test_negative_weight(self, tmp_path, image_file):
        job = make_job(tmp_path, image_file, weight="inputs/weight.fits")
        fits.PrimaryHDU(np.full((512, 512), -1.0, np.float32)).writeto(
            job / "inputs" / "weight.fits")
        assert main([str(job)]) == 2
        err = error(job)
        assert err.type == "usage"
        assert err.message.endswith(
            "weight weight.fits, extension PRIMARY: 262144 negative "
            "pixels (min -1): not a MAP_WEIGHT weight map (a bad pixel "
            "has weight 0)")

    def test_a_mask_given_as_the_image(self, tmp_path):
        values = np.ones((256, 256), np.int16)
        values[::9, ::4] = 0
        buf = tmp_path / "mask.fits"
        fits.PrimaryHDU(values).writeto(buf)
        job = make_job(tmp_path, buf)
        assert main([str(job)]) == 2
        err = error(job)
        assert err.type == "usage"
        assert err.message == (
            "image image.fits: extension PRIMARY holds 2 distinct integer "
            "values: a mask, not an image")
        assert states(job)["check"] == "failed"

    def test_missing_upload(self, tmp_path):
        job = make_job(tmp_path)
        assert main([str(job)]) == 2
        assert error(job).message == "image image.fits: no such file"

    def test_a_bomb_is_refused_before_the_pipeline(self, tmp_path,
                                                    image_file):
        """Past the service (a URL input, or an older job): the worker."""
        packed = gzip.compress(image_file.read_bytes() + bytes(3 * 10**6))
        job = make_job(tmp_path, packed, decompressed_limit=2 * 10**6)
        assert main([str(job)]) == 2
        err = error(job)
        assert err.type == "usage"
        assert err.message == ("image image.fits: decompresses to more "
                               "than the limit of 2.0 MB")
        assert states(job)["check"] == "failed"
        assert states(job)["read"] == "pending"

    def test_saturated_flat_is_refused(self, tmp_path):
        # A raw twilight flat over the 16-bit limit on 80 % of its
        # pixels: bad input in one line, not an internal error.
        rng = np.random.default_rng(3)
        light = np.linspace(40000.0, 160000.0, 500)[None, :] * np.ones(
            (300, 1))
        data = np.clip(rng.poisson(light), 0, 65535).astype(np.uint16)
        path = tmp_path / "twiflat.fits"
        fits.PrimaryHDU(data).writeto(path)
        job = make_job(tmp_path, path)
        assert main([str(job)]) == 2
        err = error(job)
        assert err.type == "usage"
        assert err.message == (
            "image image.fits, extension PRIMARY: 80 % of the pixels are "
            "at the saturation level 65535 (read off the pixels): not a "
            "science exposure")
        assert err.detail == ""
        assert states(job)["background"] == "failed"

    def test_corrupt_tile_is_refused(self, tmp_path):
        sim = simulate_image(SMALL, seed=701)
        path = tmp_path / "field.fits.fz"
        fits.HDUList([fits.PrimaryHDU(), fits.CompImageHDU(
            sim.data, sim.header, name="ccd00", compression_type="RICE_1",
            tile_shape=(16, 512))]).writeto(path)
        with fits.open(path, disable_image_compression=True) as hdul:
            table = hdul[1]
            heap = (table.fileinfo()["datLoc"]
                    + table.header["NAXIS1"] * table.header["NAXIS2"])
        raw = bytearray(path.read_bytes())
        for i in range(heap + 3000, heap + 6000):
            raw[i] ^= 0x5A
        job = make_job(tmp_path, bytes(raw))
        result = run_worker(job)
        assert result.returncode == 2, result.stdout + result.stderr
        assert "Traceback" not in result.stdout + result.stderr
        err = error(job)
        assert err.type == "usage"
        assert err.message.startswith(
            "image image.fits, extension CCD00: corrupt compressed tile "
            "data (")
        assert "\n" not in err.message

    def test_results_not_writable(self, tmp_path, image_file):
        job = make_job(tmp_path, image_file)
        (job / "results").write_text("a file where the folder goes")
        assert main([str(job)]) == 1
        err = error(job)
        assert err.type == "fatal"
        assert err.message.startswith("cannot write the products in ")
        assert states(job)["check"] == "failed"


# -- inputs by URL ---------------------------------------------------------


class _Handler(http.server.SimpleHTTPRequestHandler):
    """Files of the served folder; under /stream/ without a length."""

    def do_GET(self):
        if self.path.startswith("/stream/"):
            body = (Path(self.directory) / self.path[8:]).read_bytes()
            self.send_response(200)
            self.send_header("Content-Type", "application/fits")
            self.end_headers()  # HTTP/1.0: the body ends with the socket
            self.wfile.write(body)
            return
        super().do_GET()

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def no_proxy():
    """Local URLs reached directly whatever the environment says."""
    with pytest.MonkeyPatch.context() as patch:
        for name in ("http_proxy", "https_proxy", "HTTP_PROXY",
                     "HTTPS_PROXY", "ALL_PROXY", "all_proxy"):
            patch.delenv(name, raising=False)
        yield


@pytest.fixture(scope="module")
def server(image_file, no_proxy):
    del no_proxy
    directory = str(image_file.parent)

    def handler(*args, **kwargs):
        return _Handler(*args, directory=directory, **kwargs)

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()
    thread.join()


class TestUrlInput:
    def test_fetched_job_completes(self, tmp_path, server, image_file):
        job = make_job(tmp_path, image=f"{server}/field.fits")
        assert main([str(job)]) == 0
        assert not (job / "error.json").exists()
        fetched = job / "inputs" / "image" / "field.fits"
        assert fetched.read_bytes() == image_file.read_bytes()
        # Products named as an upload's, not after the URL's file.
        manifest = json.loads((job / "results" / "manifest.json")
                              .read_text())
        files = [p["file"] for p in manifest["products"]]
        assert any(f.startswith("image") for f in files), files
        assert not any(f.startswith("field") for f in files), files
        steps = {s.name: s for s in progress(job).steps}
        assert steps["fetch"].state == "done"
        assert steps["fetch"].start <= steps["fetch"].end
        assert steps["fetch"].detail.startswith("image ")
        assert {s.state for s in progress(job).steps} == {"done"}
        assert (job / "results" / "manifest.json").is_file()
        assert leftovers(job) == []

    def test_not_found(self, tmp_path, server):
        url = f"{server}/nothing.fits"
        job = make_job(tmp_path, image=url)
        assert main([str(job)]) == 2
        err = error(job)
        assert err.type == "usage"
        assert err.message == (
            f"image: cannot fetch {url}: HTTP 404 File not found")
        got = states(job)
        assert got["fetch"] == "failed"
        assert got["check"] == "pending"

    @pytest.mark.parametrize("path", ["field.fits", "stream/field.fits"],
                             ids=["content-length", "no-length"])
    def test_over_the_fetch_limit(self, tmp_path, server, path):
        url = f"{server}/{path}"
        job = make_job(tmp_path, image=url, fetch_limit=100_000)
        assert main([str(job)]) == 2
        err = error(job)
        assert err.type == "usage"
        assert err.message == (
            f"image: {url} is larger than the fetch limit of 100000 bytes")
        assert states(job)["fetch"] == "failed"
        assert [p for p in (job / "inputs").rglob("*") if p.is_file()] == []

    def test_flat_by_url_without_length(self, tmp_path, server, image_file):
        job = make_job(tmp_path, image_file,
                       flat=f"{server}/stream/field.fits")
        # Only the fetch and check are wanted here: a zero point that
        # `assess` refuses before it starts.
        job_spec = json.loads((job / "spec.json").read_text())
        job_spec["parameters"] = {"zeropoint": -1.0}
        (job / "spec.json").write_text(json.dumps(job_spec))
        assert main([str(job)]) == 2
        assert (job / "inputs" / "flat" / "field.fits").read_bytes() == (
            image_file.read_bytes())
        got = states(job)
        assert got["fetch"] == "done"
        assert got["check"] == "done"
        assert got["read"] == "failed"  # assess refused the zero point
        assert "zeropoint" in error(job).message

    def test_weight_by_url(self, tmp_path, server, image_file):
        """The image itself as a MAP_WEIGHT map: fetched, and used."""
        job = make_job(tmp_path, image_file,
                       weight=f"{server}/field.fits")
        assert main([str(job)]) == 0
        # Fetched under its parameter, with the URL's file name.
        assert (job / "inputs" / "weight" / "field.fits").read_bytes() == (
            image_file.read_bytes())
        steps = {s.name: s for s in progress(job).steps}
        assert steps["fetch"].detail.startswith("weight ")
        summary = json.loads(
            (job / "results" / "image.summary.json").read_text())
        assert summary["parameters"]["weight"] == "field.fits"
        assert any(n.startswith("detection thresholds from the MAP_WEIGHT")
                   for n in summary["extensions"][0]["notes"])

    @pytest.mark.parametrize("url", [
        "ftp://127.0.0.1/field.fits", "file:///etc/passwd",
    ])
    def test_other_schemes_refused(self, tmp_path, url):
        job = make_job(tmp_path, image=url)
        assert main([str(job)]) == 2
        err = error(job)
        assert err.type == "usage"
        scheme = url.split(":", 1)[0]
        assert err.message == (
            f"image: cannot fetch {url}: the {scheme} scheme is not "
            "supported (http or https only)")
        assert states(job)["fetch"] == "failed"

    @pytest.mark.parametrize(("served", "path", "message"), [
        ("bitpix.fits", "bitpix.fits", (
            "image bitpix.fits: BITPIX = 12 is not a FITS value (8, 16, 32, "
            "64, -32, -64)")),
        ("a field.fits", "a%20field.fits", (
            "image a field.fits: a negative NAXISn ([-10, 512])")),
        (None, "", (
            "image 127.0.0.1: not a FITS file (it must start with a SIMPLE "
            "card, found '<!DOCTYP')")),
    ], ids=["bitpix", "naxis", "html-page"])
    def test_a_bad_fetched_image_is_named_once(self, tmp_path, server,
                                                image_file, served, path,
                                                message):
        """The parameter and the URL's file name, as for an upload."""
        if served is not None:
            good = image_file.read_bytes()
            at = good.index(b"BITPIX" if "bitpix" in served else b"NAXIS1")
            card = good[at:at + 80].decode()
            value = "12" if "bitpix" in served else "-10"
            bad = f"{card[:10]}{value:>20}{card[30:]}".encode()
            (image_file.parent / served).write_bytes(
                good[:at] + bad + good[at + 80:])
        job = make_job(tmp_path, image=f"{server}/{path}")
        assert main([str(job)]) == 2
        err = error(job)
        assert (err.type, err.message) == ("usage", message)
        assert states(job)["check"] == "failed"
        assert states(job)["read"] == "pending"

    def test_a_flat_that_does_not_match_names_both_files(
            self, tmp_path, server, image_file):
        fits.PrimaryHDU(np.ones((64, 64), np.float32)).writeto(
            image_file.parent / "small-flat.fits", overwrite=True)
        job = make_job(tmp_path, image=f"{server}/field.fits",
                       flat=f"{server}/small-flat.fits")
        assert main([str(job)]) == 2
        message = error(job).message
        assert "flat small-flat.fits" in message
        assert "image field.fits" in message
        assert "inputs" not in message
        assert "image.fits" not in message

    def test_a_fetched_file_that_cannot_be_stored(self, tmp_path, server):
        """The service's fault: fatal, and no path of the node."""
        job = make_job(tmp_path, image=f"{server}/field.fits")
        (job / "inputs" / "image").write_text("a file where a folder goes")
        assert main([str(job)]) == 1
        err = error(job)
        assert (err.type, err.message) == (
            "fatal", "image: cannot store the fetched file: File exists")

    @pytest.mark.usefixtures("no_proxy")
    def test_network_failure_is_transient(self, tmp_path):
        with socket.socket() as sock:  # a port nobody listens on
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        url = f"http://127.0.0.1:{port}/field.fits"
        job = make_job(tmp_path, image=url)
        assert main([str(job)]) == 1
        err = error(job)
        assert err.type == "transient"
        assert err.message == (f"image: cannot fetch {url}: the host "
                               "cannot be reached from the service (an "
                               "unknown name, an address the service may "
                               "not contact, or no answer)")


# -- the job directory itself ------------------------------------------------


class TestSpec:
    @pytest.mark.parametrize(("text", "words"), [
        (None, "cannot read spec.json"),
        ("{not json", "spec.json: not JSON"),
        ('{"version": 3, "job_id": "j", "image": "x"}', "version 3"),
        ('{"version": 2, "job_id": "j", "image": "x", "parameters": [1]}',
         "parameters is not an object"),
        ('{"version": 1, "job_id": "j", "image": "x", "colour": 1}',
         "unknown keys ['colour']"),
        ('{"version": 1, "job_id": "j", "image": 12}',
         "image must be a non-empty string"),
        ('{"version": 1, "job_id": "j", "image": "../../etc/passwd"}',
         "is not a path inside the job directory"),
    ], ids=["missing", "not-json", "version", "parameters", "unknown-key",
            "type", "outside"])
    def test_unreadable_spec(self, tmp_path, text, words):
        job = tmp_path / "job"
        job.mkdir()
        if text is not None:
            (job / "spec.json").write_text(text)
        assert main([str(job)]) == 1
        err = error(job)
        assert err.type == "fatal"
        assert "spec.json" in err.message
        assert words in err.message
        assert progress(job).host == socket.gethostname()

    def test_command_line(self, tmp_path, capsys):
        assert main([]) == 2
        assert main([str(tmp_path / "absent")]) == 2
        assert main([str(tmp_path), "extra"]) == 2
        err = capsys.readouterr().err
        assert "usage: uws-worker JOBDIR" in err
        assert "absent: not a directory" in err


# -- SIGTERM -----------------------------------------------------------------


def _group_alive(pgid):
    """Processes of the group that are neither gone nor zombies."""
    alive = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rpartition(")")[2].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            alive.append(int(stat.parent.name))
    return alive


def test_sigterm_ends_the_job_at_once(tmp_path):
    # 8 CCDs of 2048 x 2048 over 2 worker processes: a few seconds of
    # pipeline to interrupt.
    sim = simulate_image(SimulationParams(
        shape=(2048, 2048), n_stars=300, n_galaxies=300), seed=710)
    path = tmp_path / "mosaic.fits"
    fits.HDUList([fits.PrimaryHDU()] + [
        fits.ImageHDU(sim.data, sim.header, name=f"ccd{k}")
        for k in range(8)]).writeto(path)
    job = make_job(tmp_path, path, ccd_jobs=2)
    path.unlink()
    proc = subprocess.Popen(
        [sys.executable, "-m", "pbs_bridge.worker", str(job)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        running = set()
        while not running & set(STEPS):
            assert proc.poll() is None, proc.communicate()[0]
            assert time.monotonic() < deadline
            time.sleep(0.02)
            if (job / "progress.json").exists():
                running = {s.name for s in progress(job).steps
                           if s.state == "running"}
        start = time.monotonic()
        os.killpg(proc.pid, signal.SIGTERM)
        out, _ = proc.communicate(timeout=30)
        took = time.monotonic() - start
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
    assert proc.returncode == 128 + signal.SIGTERM, out
    assert took < 5
    assert "stopped by SIGTERM, exit status 143" in out
    assert not (job / "error.json").exists()
    assert not (job / "results" / "manifest.json").exists()
    assert leftovers(job) == []
    deadline = time.monotonic() + 5
    while _group_alive(proc.pid):
        assert time.monotonic() < deadline, _group_alive(proc.pid)
        time.sleep(0.05)


# -- import boundary ---------------------------------------------------------


def test_worker_does_not_import_the_web_stack():
    code = ("import sys, pbs_bridge.worker; print(sorted({'pyramid', "
            "'sqlalchemy', 'uws', 'webob', 'waitress'} & set(sys.modules)))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True,
                         text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_internal_failures_are_fatal_and_bad_input_is_usage():
    # Every CCD failing on an internal error (a full disk, a dead worker
    # process) is the service's fault: "fatal", not the user's "usage".
    def failed(index: int, kind: str) -> ExtensionReport:
        if kind == "internal":
            ext = SimpleNamespace(index=index, name=f"ccd{index:02d}",
                                  data_shape=(8, 8))
            return internal_failure(ext, "No space left on device")
        return ExtensionReport(
            index=index, name=f"ccd{index:02d}", shape=(8, 8),
            status="failed",
            error=ErrorInfo("NoStarsError", "no-stars",
                            f"ccd{index:02d}: no star"))

    cases = [
        (["internal"], InternalError, "fatal"),
        (["internal", "internal"], InternalError, "fatal"),
        (["internal", "nostars"], InternalError, "fatal"),
        (["nostars", "internal"], QualityFitsError, "usage"),
        (["nostars", "nostars"], NoStarsError, "usage"),
    ]
    for kinds, raised, verdict in cases:
        reports = [failed(i, k) for i, k in enumerate(kinds)]
        with pytest.raises(QualityFitsError) as info:
            _raise_all_failed(reports, "image x.fits")
        assert type(info.value) is raised, kinds
        assert _quality_error(info.value).type == verdict, kinds
