"""Weight maps: ``--weight`` with SExtractor's MAP_WEIGHT/MAP_VAR/MAP_RMS.

The weight sets the detection threshold pixel by pixel, its zeros are
ignored and flagged ZERO_WEIGHT, and it is the product weight map.  On
the real DECam Community-Pipeline trio (image, ``oow`` inverse variance,
``ood`` data quality) and on the simulator's CP trio the FWHM agrees
with the CP's header seeing or is withheld with its reason.  Bad weight
maps end in one line, exit 2.
"""

from __future__ import annotations

import math
import subprocess
import sys

import numpy as np
import pytest
from astropy.io import fits
from testkit import shared_file

from qualityfits.config import QualityConfig
from qualityfits.datasets import (
    SimulationParams,
    cp_file_names,
    write_exposure,
)
from qualityfits.errors import EmptyImageError, InvalidImageError
from qualityfits.parameters import QualityParameters
from qualityfits.pipeline import assess, assess_extension
from qualityfits.weights import PixelFlag, inverse_variance

CP = "decam_c4d_170316_062107_{}_z_ls9.N2.fits.gz"


def run_cli(*args, cwd):
    return subprocess.run(
        [sys.executable, "-m", "qualityfits.cli", *map(str, args)],
        cwd=cwd, capture_output=True, text=True, timeout=300, check=False)


# -- a field built here (not by the simulator) ------------------------------
def _striped_field(seed: int = 3, faint: float = 250.0):
    """Gaussian stars on a sky whose noise changes every 16 columns.

    Stripes 16 columns wide alternate between sigma 5 and 20 ADU (a
    dithered stack where some columns got fewer exposures): the
    background RMS map, smooth over 64-pixel meshes, cannot follow
    them; a weight map can.  120 bright stars anywhere, and faint ones
    (``faint`` ADU, 3 px FWHM) in the middle of the quiet stripes only,
    where they stand 4 sigma high in the filtered image: detectable at
    the quiet stripes' own noise, not at the mean one.  Returns the
    image and its true per-pixel sigma.
    """
    rng = np.random.default_rng(seed)
    ny, nx, width = 600, 600, 16
    stripe = (np.arange(nx) // width) % 2
    sigma = np.where(stripe == 1, 20.0, 5.0).astype(np.float32)
    sigma = np.broadcast_to(sigma, (ny, nx)).copy()
    yy, xx = np.mgrid[0:ny, 0:nx]
    image = np.full((ny, nx), 1000.0)
    s = 3.0 / 2.3548  # FWHM 3 px

    def add(x0, y0, flux):
        box = (slice(int(y0) - 12, int(y0) + 13),
               slice(int(x0) - 12, int(x0) + 13))
        image[box] += flux / (2 * np.pi * s * s) * np.exp(
            -((xx[box] - x0) ** 2 + (yy[box] - y0) ** 2) / (2 * s * s))

    for _ in range(120):
        add(*rng.uniform(20, nx - 20, 2), 10 ** rng.uniform(4.0, 5.5))
    cols = np.flatnonzero((stripe == 0) & (np.arange(nx) % width >= 5)
                          & (np.arange(nx) % width <= 10)
                          & (np.arange(nx) > 20) & (np.arange(nx) < nx - 21))
    for _ in range(150):
        add(rng.choice(cols) + rng.uniform(0, 1), rng.uniform(20, ny - 20),
            faint)
    image += rng.normal(0.0, 1.0, (ny, nx)) * sigma
    return image.astype(np.float32), sigma


def test_a_weight_map_sets_the_thresholds_pixel_by_pixel():
    image, sigma = _striped_field()
    config = QualityConfig(cosmic_rays=False)
    header = fits.Header()
    plain = assess_extension(image, header, name="striped", config=config)
    weighted = assess_extension(
        image, header, name="striped", config=config,
        ivar=inverse_variance(1.0 / sigma**2, "MAP_WEIGHT", name="w"))
    # Without the weight the faint stars of the quiet stripes are below
    # the threshold set by the mean noise; with it most are found.
    assert plain.metrics["NOBJ"] < 135
    assert weighted.metrics["NOBJ"] > plain.metrics["NOBJ"] + 60
    assert any("detection thresholds from the MAP_WEIGHT" in n
               for n in weighted.notes)
    assert weighted.ok


@pytest.mark.parametrize("kind", ["MAP_VAR", "MAP_RMS"])
def test_the_three_weight_types_say_the_same(kind):
    image, sigma = _striped_field(seed=4)
    config = QualityConfig(cosmic_rays=False)
    ref = (1.0 / sigma**2).astype(np.float32)
    ref[10:20, 30:40] = 0.0
    sigma[10:20, 30:40] = np.inf if kind == "MAP_RMS" else 0.0
    values = sigma**2 if kind == "MAP_VAR" else sigma
    got = inverse_variance(values, kind, name="w")
    np.testing.assert_allclose(got, ref, rtol=1e-6)
    a = assess_extension(image, fits.Header(), name="a", config=config,
                         ivar=ref, weight_type="MAP_WEIGHT")
    b = assess_extension(image, fits.Header(), name="b", config=config,
                         ivar=got, weight_type=kind)
    assert a.metrics["NFLAG_ZEROWEIGHT"] == 100
    assert b.metrics["NFLAG_ZEROWEIGHT"] == 100
    if kind == "MAP_VAR":
        # Both relative, scaled to the measured sky noise alike.
        assert a.metrics["NOBJ"] == b.metrics["NOBJ"]
    else:
        # Absolute: used as it is, no scaling (the sky noise measured
        # on stripes of 5 and 20 ADU is not their mean variance).
        assert not any("scaled" in n for n in b.notes)
        assert b.metrics["NOBJ"] == pytest.approx(a.metrics["NOBJ"],
                                                  rel=0.15)


def test_zero_weight_is_flagged_and_weighs_nothing():
    image, sigma = _striped_field(seed=5)
    ivar = (1.0 / sigma**2).astype(np.float32)
    ivar[100:150, :] = 0.0
    got = {}

    def keep(maps):
        got["maps"] = maps

    rep = assess_extension(
        image, fits.Header(), name="z", ivar=ivar, maps=keep,
        config=QualityConfig(cosmic_rays=False))
    maps = got["maps"]
    zero = (maps.flags & PixelFlag.ZERO_WEIGHT) != 0
    assert zero.sum() == 50 * 600 == rep.metrics["NFLAG_ZEROWEIGHT"]
    assert np.all(maps.weight[zero] == 0)
    assert maps.weight_source == "input weight"
    # Relative inverse variance, median 1: quiet columns weigh 16
    # times the noisy ones.
    good = maps.flags == 0
    quiet = maps.weight[good & (sigma == 5.0)]
    noisy = maps.weight[good & (sigma == 20.0)]
    assert np.median(quiet) / np.median(noisy) == pytest.approx(16.0)
    assert np.median(maps.weight[good]) == pytest.approx(1.0)
    assert rep.metrics["FRAC_W0"] >= 50 / 600


# -- the NOIRLab Community-Pipeline trio --------------------------------------
def _fwhm_agrees_or_is_withheld(report, seeing, *, must_measure=False):
    ext = report.extensions[0]
    assert ext.ok, ext.error
    fwhm = ext.metrics["FWHM_PIX"]
    if math.isfinite(fwhm):
        assert abs(fwhm / seeing - 1.0) < 0.20, (fwhm, seeing)
        return fwhm
    assert not must_measure, ext.notes
    assert "PSF_WITHHELD" in ext.flags
    assert any("withheld" in n and "PSF stars" in n for n in ext.notes)
    return fwhm


def test_real_decam_cp_trio():
    image, weight, dq = (shared_file(CP.format(k))
                         for k in ("ooi", "oow", "ood"))
    report = assess(image, weight=weight, mask=dq,
                    parameters=QualityParameters(mask_convention="nonzero"),
                    jobs=1)
    ext = report.extensions[0]
    seeing = fits.getheader(image, 1)["FWHM"]
    _fwhm_agrees_or_is_withheld(report, seeing)
    # The 177 cosmic-ray pixels of the DQ map have zero weight.
    assert ext.metrics["NFLAG_ZEROWEIGHT"] == 177
    assert ext.metrics["NFLAG_USERMASK"] == 177
    assert report.parameters["weight"] == CP.format("oow")
    assert report.parameters["weight_type"] == "MAP_WEIGHT"
    # The CP weight is an absolute inverse variance: scaled by ~1.
    note = next(n for n in ext.notes if "detection thresholds" in n)
    scale = float(note.rsplit("x ", 1)[1].rstrip(")"))
    assert 0.8 < scale < 1.25


def test_real_decam_cp_trio_on_the_command_line(tmp_path):
    image, weight, dq = (shared_file(CP.format(k))
                         for k in ("ooi", "oow", "ood"))
    done = run_cli(image, "--weight", weight, "--weight-type", "map_weight",
                   "--mask", dq, "--mask-bad-value", "nonzero",
                   "--summary-only", "--no-progress", "-o", tmp_path,
                   cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr
    assert "detection thresholds from the MAP_WEIGHT weight map" in (
        done.stdout)


def test_simulated_cp_trio(tmp_path):
    params = SimulationParams(shape=(1024, 1024), fwhm=3.7,
                              ellipticity=0.04, n_stars=400,
                              n_galaxies=300, n_bad_columns=4, layout="cp")
    image = write_exposure(tmp_path / "sim_ooi.fits", params, n_ccds=1,
                           seed=1501)
    _, weight, dq = cp_file_names(image)
    report = assess(image, weight=weight, mask=dq,
                    parameters=QualityParameters(mask_convention="nonzero"),
                    jobs=1)
    seeing = fits.getheader(image, 1)["FWHM"]
    fwhm = _fwhm_agrees_or_is_withheld(report, seeing, must_measure=True)
    assert abs(fwhm / seeing - 1.0) < 0.05
    ext = report.extensions[0]
    bad = np.count_nonzero(fits.getdata(dq, 1))
    assert ext.metrics["NFLAG_ZEROWEIGHT"] == bad > 0


# -- bad weight maps ---------------------------------------------------------
@pytest.fixture(scope="module")
def small_image(tmp_path_factory):
    folder = tmp_path_factory.mktemp("w")
    image, _ = _striped_field(seed=6)
    path = folder / "img.fits"
    fits.PrimaryHDU(image).writeto(path)
    return path


@pytest.mark.parametrize(("values", "words"), [
    (np.ones((64, 64), np.float32),
     ("weight w.fits extension PRIMARY has shape 64x64 (rows x columns), "
     "image img.fits extension PRIMARY has 600x600")),
    (np.full((600, 600), -1.0, np.float32),
     ("weight w.fits, extension PRIMARY: 360000 negative pixels (min -1): "
     "not a MAP_WEIGHT weight map")),
    (np.zeros((600, 600), np.float32),
     "weight w.fits, extension PRIMARY: no pixel has a positive weight"),
    (np.where(np.eye(600) > 0, np.nan, 1.0).astype(np.float32),
     ("weight w.fits, extension PRIMARY: 600 NaN pixels: not a MAP_WEIGHT "
     "weight map")),
], ids=["shape", "negative", "all-zero", "nan"])
def test_bad_weight_is_one_line(tmp_path, small_image, values, words):
    fits.PrimaryHDU(values).writeto(tmp_path / "w.fits")
    done = run_cli(small_image, "--weight", tmp_path / "w.fits",
                   "--summary-only", "--no-progress", "-o", tmp_path,
                   cwd=tmp_path)
    assert done.returncode == 2
    assert "Traceback" not in done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("qualityfits: error: ")
    assert words in lines[0]


def test_bad_weight_type_is_one_line(tmp_path, small_image):
    done = run_cli(small_image, "--weight-type", "MAP_SIGMA",
                   "--summary-only", "--no-progress", "-o", tmp_path,
                   cwd=tmp_path)
    assert done.returncode == 2
    assert done.stderr.strip() == (
        "qualityfits: error: weight_type: 'MAP_SIGMA' is not one of "
        "MAP_WEIGHT, MAP_VAR, MAP_RMS")


def test_plane_of_the_image_file_is_lenient():
    """NaN and negative values of an ERR plane weigh 0 (JWST writes NaN)."""
    values = np.array([[1.0, np.nan], [-2.0, 4.0]], np.float32)
    with pytest.raises(InvalidImageError, match="1 NaN pixels"):
        inverse_variance(values, "MAP_RMS", name="err")
    got = inverse_variance(values, "MAP_RMS", name="err", strict=False)
    np.testing.assert_allclose(got, [[1.0, 0.0], [0.0, 1 / 16]])
    with pytest.raises(EmptyImageError, match="no pixel has a positive"):
        inverse_variance(np.full((2, 2), np.inf, np.float32), "MAP_VAR",
                         name="var", strict=False)
