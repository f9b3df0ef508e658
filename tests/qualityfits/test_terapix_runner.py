"""The TERAPIX reference runner (benchmarks/terapix.py) on real images.

The runner is the yardstick of the comparison tests and the benchmarks:
these tests check that it runs SExtractor and PSFEx, parses their XML and
catalogues into the right extension, and returns physically sane values
(background near the image median, FWHM in pixels, PSF stars that pass
PSFEx's own cuts).  They need the Debian packages ``source-extractor``
and ``psfex`` (skipped without them, failed under CI) and the real images
of ``../shared/data`` (skipped when the folder is absent).
"""

from __future__ import annotations

import math
import os
import shutil
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits
from astropy.stats import sigma_clipped_stats
from astropy.utils.exceptions import AstropyUserWarning

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"
if str(BENCHMARKS) not in sys.path:
    sys.path.insert(0, str(BENCHMARKS))

import terapix  # noqa: E402

pytestmark = [pytest.mark.reference, pytest.mark.realdata]

DATA = Path(__file__).resolve().parents[3] / "shared" / "data"
NTT = DATA / "ntt_emmi_R_galaxies.fits.gz"
MEGACAM = DATA / "megacam_1616687p_ccd10_cutout.fits.gz"

CATALOGUE_COLUMNS = (
    "NUMBER", "X_IMAGE", "Y_IMAGE", "FLUX_AUTO", "FLUXERR_AUTO", "MAG_AUTO",
    "FLUX_RADIUS", "FWHM_IMAGE", "A_IMAGE", "B_IMAGE", "THETA_IMAGE",
    "ELONGATION", "ELLIPTICITY", "FLAGS", "CLASS_STAR", "SNR_WIN",
    "BACKGROUND", "FLUX_MAX",
)
PSF_STAR_COLUMNS = (
    "X_IMAGE", "Y_IMAGE", "FLUX_RADIUS", "ELONGATION", "ELLIPTICITY",
    "SNR_WIN", "FLAGS", "FWHM_IMAGE", "FWHM_PSF", "CHI2_PSF",
)
PSFEX_KEYS = (
    "NStars_Loaded_Mean", "NStars_Accepted_Mean",
    "FWHM_FromFluxRadius_Mean", "FWHM_Mean", "FWHM_Min", "FWHM_Max",
    "FWHM_PixelFree_Mean", "Ellipticity_Mean", "Ellipticity1_Mean",
    "Ellipticity2_Mean", "MoffatBeta_Mean", "Residuals_Mean",
    "Asymmetry_Mean", "Chi2_Mean", "Sampling_Mean",
)
# Values of one extension that must not depend on its place in a MEF
# or on a left-right flip (up to SExtractor's raster-order effects).
FLIP_RTOL = {
    "FWHM_FromFluxRadius_Mean": 0.02,
    "FWHM_Mean": 0.02,
    "FWHM_PixelFree_Mean": 0.02,
    "NStars_Accepted_Mean": 0.10,
}


def _require(path: Path) -> Path:
    if not path.is_file():
        pytest.skip(f"real test image {path} absent (../shared/data)")
    if not terapix.tools_available():
        msg = ("source-extractor and psfex (Debian packages) are needed "
               "for the reference tests")
        if os.environ.get("CI"):
            pytest.fail(f"CI is set but {msg}")
        pytest.skip(msg)
    return path


def _read(path: Path) -> np.ndarray:
    with warnings.catch_warnings():
        # The NTT header's MIDAS "ESO-LOG" cards are reported as invalid
        # keywords (AstropyUserWarning): harmless, the pixels are fine.
        warnings.simplefilter("ignore", AstropyUserWarning)
        return np.asarray(fits.getdata(path), dtype=np.float32)


@pytest.fixture(scope="module")
def ntt_run() -> terapix.ReferenceRun:
    return terapix.run_reference(_require(NTT))


@pytest.fixture(scope="module")
def mef_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    data = _read(_require(NTT))
    path = tmp_path_factory.mktemp("mef") / "ntt_two_ccds.fits"
    fits.HDUList([
        fits.PrimaryHDU(),
        fits.ImageHDU(data, name="CCD1"),
        fits.ImageHDU(data[:, ::-1].copy(), name="CCD2_FLIPPED"),
    ]).writeto(path)
    return path


@pytest.fixture(scope="module")
def mef_run(mef_path: Path) -> terapix.ReferenceRun:
    return terapix.run_reference(mef_path)


# --------------------------------------------------------- single image


def test_ntt_structure(ntt_run: terapix.ReferenceRun) -> None:
    assert len(ntt_run.extensions) == 1
    ext = ntt_run.extensions[0]
    assert (ext.index, ext.name) == (0, "PRIMARY")
    assert set(CATALOGUE_COLUMNS) <= set(ext.catalogue.colnames)
    assert set(PSF_STAR_COLUMNS) <= set(ext.psf_stars.colnames)
    assert set(PSFEX_KEYS) <= set(ext.psfex)
    assert all(isinstance(v, float) for v in ext.psfex.values())
    assert len(ext.catalogue) == ext.nsextracted
    assert ext.ndetect >= ext.nsextracted > 100
    assert len(ext.psf_stars) == ext.psfex["NStars_Accepted_Mean"]
    assert set(ntt_run.steps) == {
        "sextractor_psfex", "psfex", "sextractor_full"}
    assert all(t > 0 for t in ntt_run.steps.values())
    assert ntt_run.wall_seconds >= sum(ntt_run.steps.values())
    assert ntt_run.cpu_seconds > 0
    assert set(ntt_run.versions) == {"source-extractor", "psfex"}
    assert all(v[0].isdigit() for v in ntt_run.versions.values())
    # No celestial WCS, no PIXSCAL1: everything is measured in pixels.
    assert ntt_run.settings["pixel_scale"] == 1.0
    assert ntt_run.settings["workdir"] is None


def test_ntt_background(ntt_run: terapix.ReferenceRun) -> None:
    ext = ntt_run.extensions[0]
    data = _read(NTT)
    _, _, std = sigma_clipped_stats(data, sigma=3.0, maxiters=10)
    assert abs(ext.background_mean - np.median(data)) < (
        0.2 * ext.background_stdev)
    assert ext.background_stdev == pytest.approx(std, rel=0.05)
    assert np.median(ext.catalogue["BACKGROUND"]) == pytest.approx(
        ext.background_mean, abs=ext.background_stdev)
    assert ext.sextractor["Satur_Level"] >= 1e19  # no SATURATE card


def test_ntt_psf_in_pixels(ntt_run: terapix.ReferenceRun) -> None:
    psf = ntt_run.extensions[0].psfex
    assert psf["NStars_Accepted_Mean"] > 10
    assert psf["NStars_Loaded_Mean"] >= psf["NStars_Accepted_Mean"]
    for key in ("FWHM_FromFluxRadius_Mean", "FWHM_Mean"):
        assert 2.0 < psf[key] < 10.0, key
    assert 1.5 < psf["FWHM_PixelFree_Mean"] <= 1.05 * psf["FWHM_Mean"]
    # Degree 0, one snapshot: min = mean = max.
    assert psf["FWHM_Min"] == psf["FWHM_Mean"] == psf["FWHM_Max"]
    assert 0.0 <= psf["Ellipticity_Mean"] < 0.2
    assert math.hypot(psf["Ellipticity1_Mean"], psf["Ellipticity2_Mean"]) \
        == pytest.approx(psf["Ellipticity_Mean"], rel=0.1, abs=0.005)
    assert psf["MoffatBeta_Mean"] > 1.0
    assert 0.0 < psf["Chi2_Mean"] < 10.0
    assert 0.0 < psf["Sampling_Mean"] <= 1.0


def test_ntt_psf_stars_pass_psfex_cuts(
        ntt_run: terapix.ReferenceRun) -> None:
    ext = ntt_run.extensions[0]
    stars = ext.psf_stars
    elong = np.asarray(stars["ELONGATION"])
    assert np.all(np.asarray(stars["SNR_WIN"]) >= 20.0)
    assert np.all((elong - 1) / (elong + 1) <= 0.3)
    assert np.all((np.asarray(stars["FLAGS"]) & 0x00FE) == 0)
    two_rh = 2 * np.median(np.asarray(stars["FLUX_RADIUS"]))
    assert two_rh == pytest.approx(
        ext.psfex["FWHM_FromFluxRadius_Mean"], rel=0.05)
    assert np.median(np.asarray(stars["FWHM_IMAGE"])) == pytest.approx(
        ext.psfex["FWHM_Mean"], rel=0.25)
    # The full catalogue (SEEING_FWHM from PSFEx) calls them stars.
    cat = ext.catalogue
    cx, cy = np.asarray(cat["X_IMAGE"]), np.asarray(cat["Y_IMAGE"])
    nearest = [int(np.argmin(np.hypot(cx - x, cy - y)))
               for x, y in zip(stars["X_IMAGE"], stars["Y_IMAGE"],
                               strict=True)]
    assert np.median(np.asarray(cat["CLASS_STAR"])[nearest]) > 0.8


def test_psfvar_degrees_2() -> None:
    run = terapix.run_reference(_require(NTT), psfvar_degrees=2)
    psf = run.extensions[0].psfex
    assert run.settings["psfvar_nsnap"] == 9
    assert psf["FWHM_Min"] < psf["FWHM_Mean"] < psf["FWHM_Max"]
    assert 2.0 < psf["FWHM_Mean"] < 10.0
    assert psf["NStars_Accepted_Mean"] > 10


# --------------------------------------------------------------- MEF


def test_mef_structure(mef_run: terapix.ReferenceRun,
                       ntt_run: terapix.ReferenceRun) -> None:
    assert [(e.index, e.name) for e in mef_run.extensions] == [
        (1, "CCD1"), (2, "CCD2_FLIPPED")]
    # The first extension holds the NTT pixels: same values as alone.
    first, alone = mef_run.extensions[0], ntt_run.extensions[0]
    assert first.background_mean == alone.background_mean
    assert first.ndetect == alone.ndetect
    assert first.psfex == pytest.approx(alone.psfex, rel=1e-5, nan_ok=True)
    assert len(first.psf_stars) == len(alone.psf_stars)


def test_mef_flipped_extension_agrees(
        mef_run: terapix.ReferenceRun) -> None:
    one, two = mef_run.extensions
    assert two.background_mean == pytest.approx(one.background_mean,
                                                rel=1e-4)
    assert two.background_stdev == pytest.approx(one.background_stdev,
                                                 rel=1e-3)
    assert two.ndetect == pytest.approx(one.ndetect, rel=0.01)
    for key, rtol in FLIP_RTOL.items():
        assert two.psfex[key] == pytest.approx(one.psfex[key], rel=rtol), key
    # A left-right flip keeps e1 and changes the sign of e2.
    assert two.psfex["Ellipticity_Mean"] == pytest.approx(
        one.psfex["Ellipticity_Mean"], abs=0.005)
    assert two.psfex["Ellipticity1_Mean"] == pytest.approx(
        one.psfex["Ellipticity1_Mean"], abs=0.005)
    assert two.psfex["Ellipticity2_Mean"] == pytest.approx(
        -one.psfex["Ellipticity2_Mean"], abs=0.005)
    # Same stars, mirrored: x -> NAXIS1 + 1 - x (FITS 1-based).
    width = 1024
    first = {(round(float(x)), round(float(y)))
             for x, y in zip(one.psf_stars["X_IMAGE"],
                             one.psf_stars["Y_IMAGE"], strict=True)}
    mirrored = {(round(width + 1 - float(x)), round(float(y)))
                for x, y in zip(two.psf_stars["X_IMAGE"],
                                two.psf_stars["Y_IMAGE"], strict=True)}
    assert len(first & mirrored) >= 0.8 * len(first)


def test_workdir_keeps_files(mef_path: Path, tmp_path: Path) -> None:
    run = terapix.run_reference(mef_path, workdir=tmp_path / "work")
    assert run.settings["workdir"] == str((tmp_path / "work").resolve())
    names = {p.name for p in (tmp_path / "work").iterdir()}
    assert {"psfex_feed.ldac", "psfex.xml", "psfex_stars.ldac",
            "qualityfits.ldac", "qualityfits.xml"} <= names
    assert len(run.extensions) == 2


# -------------------------------------------- headers, failures, CLI


def test_header_values_and_overrides() -> None:
    path = _require(MEGACAM)
    run = terapix.run_reference(path)
    ext = run.extensions[0]
    assert ext.sextractor["Gain"] == pytest.approx(1.645)
    assert ext.sextractor["Satur_Level"] == pytest.approx(65535)
    # Celestial WCS: PIXEL_SCALE 0, scale ~0.186"/px for SEEING_FWHM.
    assert run.settings["pixel_scale"] == 0.0
    assert run.settings["pixscale_arcsec"] == pytest.approx(0.186, rel=0.02)
    assert abs(ext.background_mean - np.median(_read(path))) < (
        0.5 * ext.background_stdev)
    # A 251x251 cutout: PSFEx finds no star; zeros come back as NaN.
    assert ext.psfex["NStars_Accepted_Mean"] == 0
    assert math.isnan(ext.psfex["FWHM_Mean"])
    assert len(ext.psf_stars) == 0
    assert set(PSF_STAR_COLUMNS) <= set(ext.psf_stars.colnames)

    over = terapix.run_reference(path, gain=2.0, saturation=30000.0,
                                 pixscale=0.2)
    ext = over.extensions[0]
    assert ext.sextractor["Gain"] == pytest.approx(2.0)
    assert ext.sextractor["Satur_Level"] == pytest.approx(30000.0)
    assert over.settings["pixel_scale"] == pytest.approx(0.2)


def test_bad_arguments() -> None:
    path = _require(MEGACAM)
    with pytest.raises(ValueError, match="pixscale"):
        terapix.run_reference(path, pixscale=0.0)
    with pytest.raises(ValueError, match="gain"):
        terapix.run_reference(path, gain=-1.0)
    with pytest.raises(FileNotFoundError):
        terapix.run_reference(path.with_name("no_such_image.fits"))


def test_tool_failure_quotes_stderr(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = _require(MEGACAM)
    config = tmp_path / "config"
    shutil.copytree(terapix.CONFIG_DIR, config)
    sex = config / "psfex.sex"
    # SExtractor refuses SATUR_LEVEL >= 1e30 ("keyword out of range").
    sex.write_text(sex.read_text().replace(
        "SATUR_LEVEL      1.0e20", "SATUR_LEVEL      1.0e30"))
    monkeypatch.setattr(terapix, "CONFIG_DIR", config)
    with pytest.raises(RuntimeError,
                       match=r"sextractor_psfex failed(.|\n)*out of range"):
        terapix.run_reference(path)


def test_command_line(capsys: pytest.CaptureFixture[str]) -> None:
    path = _require(MEGACAM)
    assert terapix.main([str(path)]) == 0
    out = capsys.readouterr().out
    assert "bkg_mean" in out
    assert "ccd10" in out
    assert "source-extractor" in out
