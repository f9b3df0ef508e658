"""The ``qualityfits`` command line, run as a user runs it (a subprocess).

Success: exit 0, a summary table with one row per extension and a
median row, ``OUTDIR/<stem>.summary.json`` equal to the report of
`qualityfits.assess` on the same file.  Bad input: exit 2 and exactly
one line ``qualityfits: error: ...`` on stderr, never a traceback.
"""

from __future__ import annotations

import gc
import gzip
import importlib.metadata
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits

import qualityfits
from qualityfits.cli import main as cli_main
from qualityfits.cliutil import exit_now
from qualityfits.datasets import SimulationParams, simulate_image
from qualityfits.io import image_stem
from qualityfits.metrics import METRICS
from qualityfits.pipeline import STEPS

SMALL = SimulationParams(
    shape=(512, 512), n_stars=150, n_galaxies=200, n_cr_hits=20,
    n_cr_tracks=2,
)
CCDS = ("ccd00", "ccd01", "ccd02")


def run_cli(*args, cwd):
    return subprocess.run(
        [sys.executable, "-m", "qualityfits.cli", *map(str, args)],
        cwd=cwd, capture_output=True, text=True, timeout=300, check=False,
    )


@pytest.fixture(scope="module")
def mef(tmp_path_factory):
    path = tmp_path_factory.mktemp("cli") / "field.fits"
    hdus = [fits.PrimaryHDU()]
    hdus += [simulate_image(SMALL, seed=600 + k).to_hdu(name=name)
             for k, name in enumerate(CCDS)]
    fits.HDUList(hdus).writeto(path)
    return path


@pytest.fixture(scope="module")
def single(tmp_path_factory):
    sim = simulate_image(SMALL, seed=650)
    path = tmp_path_factory.mktemp("single") / "single.fits"
    fits.PrimaryHDU(sim.data, sim.header).writeto(path)
    return path, sim


@pytest.fixture(scope="module")
def success(mef, tmp_path_factory):
    cwd = tmp_path_factory.mktemp("run")
    result = run_cli(mef, "-o", "out", "--jobs", "1", "--no-progress",
                     cwd=cwd)
    return result, cwd / "out"


class TestSuccess:
    def test_exit_status_and_streams(self, success):
        result, _ = success
        assert result.returncode == 0, result.stderr
        assert "Traceback" not in result.stderr
        assert result.stderr == ""

    def test_summary_table(self, success):
        result, out = success
        lines = result.stdout.splitlines()
        header = lines[0].split()
        assert header[0] == "EXTNAME"
        for column in ("SKY", "RMS", "NOBJ", "NSTAR", "NGAL"):
            assert column in header
        rows = {line.split()[0]: line for line in lines[1:]
                if line and not line.startswith("-")}
        for name in (*CCDS, "median"):
            assert name in rows
        # the rows hold numbers, one per column at least up to NGAL
        fields = rows["ccd01"].split()
        assert float(fields[1]) > 0  # SKY
        assert f"open {Path('out') / 'index.html'} in a browser" in (
            result.stdout)
        assert (out / "field.summary.json").is_file()
        assert (out / "manifest.json").is_file()

    def test_json_is_the_report(self, success, mef):
        _, out = success
        written = json.loads((out / "field.summary.json").read_text())
        expected = json.loads(json.dumps(
            qualityfits.assess(mef, jobs=1).to_dict()))
        assert written["image"] == expected["image"] == "field.fits"
        assert written["n_extensions"] == 3
        assert written["n_failed"] == 0
        assert written["config"] == expected["config"]
        assert written["parameters"] == expected["parameters"]
        got = {e["name"]: e for e in written["extensions"]}
        want = {e["name"]: e for e in expected["extensions"]}
        assert list(got) == list(CCDS)
        for name in CCDS:
            assert got[name]["status"] == want[name]["status"] == "ok"
            assert got[name]["metrics"] == want[name]["metrics"]
            assert got[name]["flags"] == want[name]["flags"]
            assert set(got[name]["metrics"]) == {m.name for m in METRICS}
        assert (written["exposure"]["metrics"]
                == expected["exposure"]["metrics"])
        assert written["exposure"]["flags"] == expected["exposure"]["flags"]

    def test_median_row_is_the_exposure_median(self, success):
        result, out = success
        written = json.loads((out / "field.summary.json").read_text())
        rows = {line.split()[0]: line.split()
                for line in result.stdout.splitlines()
                if line and not line.startswith("-")}
        header = rows["EXTNAME"]
        nobj = int(rows["median"][header.index("NOBJ")])
        median = written["exposure"]["metrics"]["NOBJ"]["median"]
        assert nobj == round(median)
        per_ccd = [int(rows[n][header.index("NOBJ")]) for n in CCDS]
        assert nobj == round(float(np.median(per_ccd)))


# -- output names ------------------------------------------------------------
@pytest.mark.parametrize(("name", "stem"), [
    ("x.fits", "x"),
    ("x.fits.gz", "x"),
    ("x.fits.fz", "x"),
    ("x.fit", "x"),
    ("X.FITS.GZ", "X"),
    ("dir/obs.1.fits", "obs.1"),
    ("x.fz", "x"),
])
def test_image_stem(name, stem):
    assert image_stem(name) == stem


@pytest.mark.parametrize("suffix", [".fits.gz", ".fits.fz"])
def test_compressed_input_writes_the_stem_json(tmp_path, single, suffix):
    path, sim = single
    target = tmp_path / f"x{suffix}"
    if suffix == ".fits.gz":
        with path.open("rb") as fin, gzip.open(target, "wb") as fout:
            shutil.copyfileobj(fin, fout)
    else:
        fits.HDUList([fits.PrimaryHDU(),
                      fits.CompImageHDU(sim.data, sim.header,
                                        compression_type="RICE_1")]
                     ).writeto(target)
    result = run_cli(target, "-o", tmp_path / "out", "--no-progress",
                     "--summary-only", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "x.summary.json"]
    written = json.loads((tmp_path / "out" / "x.summary.json").read_text())
    assert written["image"] == f"x{suffix}"
    assert written["extensions"][0]["status"] == "ok"
    # a single image: no median row
    assert "median" not in result.stdout.split()


# -- instrumental magnitudes -------------------------------------------------
def _table_head_and_mlim(stdout):
    """The heading line and the MLIM5 cell of the first row."""
    lines = stdout.splitlines()
    heads = lines[0].split()
    k = next(i for i, h in enumerate(heads) if h.startswith("MLIM5"))
    return heads[k], lines[2].split()[k]


#: Enough stars for a PSF (44 PSF stars), so that MLIM5 is published.
STARRY = SimulationParams(
    shape=(512, 512), n_stars=500, n_galaxies=200, n_cr_hits=20,
    n_cr_tracks=2,
)


@pytest.fixture(scope="module")
def starry():
    return simulate_image(STARRY, seed=650)


@pytest.fixture(scope="module")
def no_zeropoint(starry, tmp_path_factory):
    """An image without PHOTZP: no zero point anywhere."""
    header = starry.header.copy()
    del header["PHOTZP"]
    target = tmp_path_factory.mktemp("nozp") / "nozp.fits"
    fits.PrimaryHDU(starry.data, header).writeto(target)
    return target


def test_magnitudes_without_a_zero_point_are_marked_instrumental(
        no_zeropoint, tmp_path):
    result = run_cli(no_zeropoint, "-o", tmp_path / "out", "--no-progress",
                     "--summary-only", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    head, value = _table_head_and_mlim(result.stdout)
    assert head == "MLIM5*"
    assert float(value) < 0  # -2.5 log10(ADU) of a faint star
    why = [line for line in result.stdout.splitlines()
           if line.startswith("* ")]
    assert len(why) == 1
    assert "MLIM5 magnitudes are instrumental" in why[0]
    assert "no zero point" in why[0]


def test_a_given_zero_point_is_not_instrumental(no_zeropoint, tmp_path):
    result = run_cli(no_zeropoint, "-o", tmp_path / "out", "--no-progress",
                     "--summary-only", "--zeropoint", "30", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    head, value = _table_head_and_mlim(result.stdout)
    assert head == "MLIM5"
    assert float(value) > 20
    assert "instrumental" not in result.stdout


def test_only_the_ccds_without_a_zero_point_are_starred(starry, tmp_path):
    """A mosaic whose second CCD has PHOTZP and the first has not."""
    sim = starry
    header = sim.header.copy()
    del header["PHOTZP"]
    target = tmp_path / "mixed.fits"
    fits.HDUList([fits.PrimaryHDU(),
                  fits.ImageHDU(sim.data, header, name="ccd00"),
                  fits.ImageHDU(sim.data, sim.header, name="ccd01")]
                 ).writeto(target)
    result = run_cli(target, "-o", tmp_path / "out", "--no-progress",
                     "--summary-only", "--jobs", "1", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    heads = lines[0].split()
    k = heads.index("MLIM5")
    rows = {line.split()[0]: line.split()[k] for line in lines[2:]
            if line.split() and line.split()[0] in ("CCD00", "CCD01",
                                                    "median")}
    assert rows["CCD00"].endswith("*")
    assert not rows["CCD01"].endswith("*")
    assert rows["median"].endswith("*")  # it mixes both
    assert any(line.startswith("* MLIM5 magnitudes of CCD00 are "
                               "instrumental (marked *)")
               for line in lines)


# -- bad input ---------------------------------------------------------------
@pytest.fixture
def not_fits(tmp_path):
    path = tmp_path / "readme.fits"
    path.write_text("not a FITS file\n")
    return path


@pytest.mark.parametrize(("case", "named"), [
    ("not_fits", "readme.fits"),
    ("missing", "nowhere.fits"),
    ("negative_zeropoint", "-2.5"),
    ("zero_pixscale", "pixscale"),
    ("unknown_set_key", "no_such_key"),
    ("bad_set_value", "abc"),
    ("non_numeric_zeropoint", "abc"),
])
def test_bad_input_one_line_exit_2(tmp_path, mef, not_fits, case, named):
    args = {
        "not_fits": [not_fits],
        "missing": [tmp_path / "nowhere.fits"],
        "negative_zeropoint": [mef, "--zeropoint", "-2.5"],
        "zero_pixscale": [mef, "--pixscale", "0"],
        "unknown_set_key": [mef, "--set", "no_such_key=1"],
        "bad_set_value": [mef, "--set", "detect_thresh=abc"],
        "non_numeric_zeropoint": [mef, "--zeropoint", "abc"],
    }[case]
    result = run_cli(*args, "-o", tmp_path / "out", "--no-progress",
                     cwd=tmp_path)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("qualityfits: error: ")
    assert named in lines[0]
    assert result.stdout == ""
    assert not list(tmp_path.glob("out/*.json"))


def test_version():
    result = subprocess.run(
        [str(Path(sys.executable).with_name("qualityfits")), "--version"],
        capture_output=True, text=True, timeout=120, check=False,
    )
    assert result.returncode == 0
    assert result.stdout.strip() == f"qualityfits {qualityfits.__version__}"


def test_progress_bar_on_a_terminal(mef, tmp_path):
    """On a terminal the run shows a progress bar on stderr, even on a
    pseudo-terminal that reports no size (CI consoles, ``script``)."""
    import os  # noqa: PLC0415
    import pty  # noqa: PLC0415

    master, slave = pty.openpty()  # a fresh pty: 0 columns, 0 rows
    try:
        proc = subprocess.Popen(
            [sys.executable, "-m", "qualityfits", str(mef), "-o",
             str(tmp_path), "--jobs", "2"],
            stdout=subprocess.DEVNULL, stderr=slave, cwd=tmp_path)
        os.close(slave)
        chunks = []
        while True:
            try:
                chunk = os.read(master, 4096)
            except OSError:  # EIO: the child closed the terminal
                break
            if not chunk:
                break
            chunks.append(chunk)
        assert proc.wait(timeout=300) == 0
    finally:
        os.close(master)
    shown = b"".join(chunks).decode(errors="replace")
    assert "field.fits:" in shown
    assert f"{3 * len(STEPS)}/{3 * len(STEPS)} steps" in shown
    # Sized from the first event: the total never grew CCD by CCD.
    totals = set(re.findall(r"\d+/(\d+) steps", shown))
    assert totals == {str(3 * len(STEPS))}
    assert "writing products: archive" in shown
    assert "3 CCD done" in shown


def test_the_commands_end_through_exit_now() -> None:
    """``qualityfits`` and ``uws-worker`` are `run`, which ends in exit_now."""
    scripts = {ep.name: ep.value for ep in importlib.metadata.entry_points(
        group="console_scripts") if ep.name in ("qualityfits", "uws-worker")}
    assert scripts == {"qualityfits": "qualityfits.cli:run",
                       "uws-worker": "pbs_bridge.worker:run"}


def test_exit_now_exits_with_the_status_and_freezes_the_collector() -> None:
    """The status is main's; the objects leave the collector's sight."""
    before = gc.get_freeze_count()
    try:
        with pytest.raises(SystemExit) as info:
            exit_now(2)
        assert info.value.code == 2
        assert gc.get_freeze_count() > before
    finally:
        gc.unfreeze()


def test_python_m_qualityfits_still_reports_and_fails_in_one_line(
        tmp_path: Path) -> None:
    """Through run(): the table and summary, then exit 0; a bad file 2."""
    image = tmp_path / "one.fits"
    sim = simulate_image(SimulationParams(shape=(512, 512), n_stars=120,
                                          n_galaxies=60), seed=7)
    fits.PrimaryHDU(sim.data, sim.header).writeto(image)
    ok = subprocess.run(
        [sys.executable, "-m", "qualityfits", str(image), "-o",
         str(tmp_path / "out"), "--summary-only", "--jobs", "1"],
        capture_output=True, text=True, timeout=300, check=False)
    assert ok.returncode == 0, ok.stderr
    assert (tmp_path / "out" / "one.summary.json").is_file()
    assert "FWHM" in ok.stdout
    assert "Traceback" not in ok.stderr
    bad = tmp_path / "bad.fits"
    bad.write_bytes(b"SIMPLE  =                    T" + b" " * 100)
    failed = subprocess.run(
        [sys.executable, "-m", "qualityfits", str(bad), "--summary-only"],
        capture_output=True, text=True, timeout=300, check=False)
    assert failed.returncode == 2
    assert failed.stderr.startswith("qualityfits: error: ")
    assert len(failed.stderr.strip().splitlines()) == 1


def test_sip_terms_without_sip_ctype_are_one_note_not_a_log(
        tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    """Plate solvers write SIP terms under 'RA---TAN': astropy.wcs logs
    15 lines each time it reads such a header; the report notes it once."""
    sim = simulate_image(SimulationParams(shape=(512, 512), n_stars=150,
                                          n_galaxies=60), seed=17)
    header = sim.header.copy()
    assert header["CTYPE1"] == "RA---TAN"
    header["A_ORDER"], header["B_ORDER"] = 2, 2
    header["A_0_2"], header["A_2_0"], header["A_1_1"] = 1e-7, -2e-7, 5e-8
    header["B_0_2"], header["B_2_0"], header["B_1_1"] = 3e-8, 1e-7, -4e-8
    path = tmp_path / "solved.fits"
    fits.PrimaryHDU(sim.data, header).writeto(path)
    status = cli_main([str(path), "--summary-only", "--no-progress",
                       "-j", "1", "-o", str(tmp_path / "out")])
    out, err = capfd.readouterr()
    assert status == 0
    assert "INFO" not in out + err
    assert "SIP distortion" not in err
    summary = json.loads((tmp_path / "out" / "solved.summary.json")
                         .read_text())
    notes = summary["extensions"][0]["notes"]
    assert [n for n in notes if n.startswith(
        "the WCS has SIP distortion terms (A_ORDER = 2) under CTYPE1 = "
        "'RA---TAN'")]
