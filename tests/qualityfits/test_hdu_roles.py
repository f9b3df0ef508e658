"""Extension roles: only sky images are assessed; masks and weights serve.

Every HDU of the image file gets a role (sky image, mask, weight,
auxiliary, table, header only) and the reason; a DQ/MASK plane is the
mask and an ERR/VAR/WHT plane the weight of its own sky image unless the
user gave one.  Tested on the simulator's HST ``_flt`` layout, on a
Rubin-style image/mask/variance file built here, and on the real CFHT
Elixir bad-pixel mask given as the image (refused in one line).
"""

from __future__ import annotations

import math
import re
import subprocess
import sys

import lxml.html
import numpy as np
import pytest
from astropy.io import fits
from testkit import shared_file

from qualityfits.config import QualityConfig
from qualityfits.datasets import SimulationParams, write_exposure
from qualityfits.errors import (
    InvalidParameterError,
    NoImageDataError,
    ShapeMismatchError,
)
from qualityfits.html import write_report
from qualityfits.io import ImageSource
from qualityfits.parameters import QualityParameters
from qualityfits.pipeline import assess
from qualityfits.presentation import hdu_lines

NO_CR = QualityConfig(cosmic_rays=False)


def run_cli(*args, cwd):
    return subprocess.run(
        [sys.executable, "-m", "qualityfits.cli", *map(str, args)],
        cwd=cwd, capture_output=True, text=True, timeout=300, check=False)


def _roles(report):
    return [(h.name, h.role, h.used) for h in report.hdus]


def _typed_roles(report):
    """Each HDU's name, role, use and weight type."""
    return [(h.name, h.role, h.used, h.weight_type) for h in report.hdus]


# -- HST _flt: SCI, ERR, DQ per chip -----------------------------------------
@pytest.fixture(scope="module")
def hst(tmp_path_factory):
    folder = tmp_path_factory.mktemp("hst")
    params = SimulationParams(shape=(768, 768), fwhm=1.8, gain=1.0,
                              read_noise=3.0, sky=200.0, n_stars=300,
                              n_galaxies=200, n_bad_columns=8,
                              layout="hst_flt")
    path = write_exposure(folder / "sim_flt.fits", params, n_ccds=2,
                          seed=41)
    report = assess(path, config=NO_CR, jobs=1)
    return path, report


def test_hst_flt_assesses_sci_only(hst):
    _, report = hst
    assert [e.name for e in report.extensions] == ["SCI,1", "SCI,2"]
    assert _roles(report) == [
        ("PRIMARY", "header only", False),
        ("SCI,1", "sky image", False), ("ERR,1", "weight", True),
        ("DQ,1", "mask", True),
        ("SCI,2", "sky image", False), ("ERR,2", "weight", True),
        ("DQ,2", "mask", True)]
    err = report.hdus[2]
    assert err.weight_type == "MAP_RMS"
    assert err.serves == 1
    assert report.hdus[6].serves == 4
    for ext in report.extensions:
        assert ext.ok, ext.error
        assert any(n.startswith(f"mask: the DQ,{ext.name[-1]} plane")
                   for n in ext.notes)
        assert any(n.startswith(f"weight: the ERR,{ext.name[-1]} plane")
                   and n.endswith("as MAP_RMS") for n in ext.notes)
        # the 8 bad columns of the DQ plane are masked
        assert ext.metrics["NFLAG_USERMASK"] >= 8 * 768
    # The exposure is the SCI chips': no ERR/DQ "CCD" missing or in
    # the medians.
    assert "MISSING_CCD" not in report.exposure.flags
    fwhm = [e.metrics["FWHM_PIX"] for e in report.extensions]
    assert all(math.isfinite(f) for f in fwhm)
    assert report.exposure.metrics["FWHM_PIX"]["median"] == pytest.approx(
        float(np.median(fwhm)), rel=1e-12)
    summary = report.to_dict()
    assert [h["role"] for h in summary["hdus"]] == [
        "header only", "sky image", "weight", "mask", "sky image",
        "weight", "mask"]


def test_own_planes_equal_the_same_planes_given(hst, tmp_path):
    """SCI alone, with DQ as --mask and ERR as --weight: the same CCDs."""
    path, report = hst
    with fits.open(path) as hdul:
        def mef(name):
            return fits.HDUList([fits.PrimaryHDU(header=hdul[0].header)] + [
                fits.ImageHDU(hdul[name, v].data, hdul[name, v].header)
                for v in (1, 2)])
        sci, err, dq = mef("SCI"), mef("ERR"), mef("DQ")
        for hdu in sci[1:]:
            hdu.header["EXTNAME"] = f"CHIP{hdu.header['EXTVER']}"
        sci.writeto(tmp_path / "sci.fits")
        err.writeto(tmp_path / "err.fits")
        dq.writeto(tmp_path / "dq.fits")
    given = assess(tmp_path / "sci.fits", mask=tmp_path / "dq.fits",
                   weight=tmp_path / "err.fits", config=NO_CR, jobs=1,
                   parameters=QualityParameters(mask_convention="nonzero",
                                                weight_type="MAP_RMS"))
    assert [h.role for h in given.hdus] == ["header only", "sky image",
                                            "sky image"]
    for own, user in zip(report.extensions, given.extensions, strict=True):
        for key in ("FWHM_PIX", "ELLIPTICITY", "NOBJ", "NFLAG_USERMASK",
                    "NFLAG_ZEROWEIGHT", "SKY_MEAN"):
            assert own.metrics[key] == user.metrics[key], key


def test_a_mask_given_replaces_the_dq_plane(hst, tmp_path):
    path, _ = hst
    with fits.open(path) as hdul:
        shape = hdul["SCI", 1].data.shape
    fits.HDUList([fits.PrimaryHDU()] + [
        fits.ImageHDU(np.zeros(shape, np.int16)) for _ in (1, 2)]).writeto(
            tmp_path / "mask.fits")
    report = assess(path, mask=tmp_path / "mask.fits", config=NO_CR, jobs=1,
                    parameters=QualityParameters(mask_convention="nonzero"))
    dq = [h for h in report.hdus if h.role == "mask"]
    assert all(not h.used and h.reason.endswith("not used: --mask given")
               for h in dq)
    for ext in report.extensions:
        assert ext.metrics["NFLAG_USERMASK"] == 0
        assert not any(n.startswith("mask: the DQ") for n in ext.notes)
        assert any(n.startswith("weight: the ERR") for n in ext.notes)


def test_roles_handed_in_are_those_assess_decides(hst):
    """A caller that checked the file hands its roles on: same report."""
    path, report = hst
    with ImageSource(path, roles=True) as src:
        roles = src.hdus
    given = assess(path, config=NO_CR, jobs=1, roles=roles)
    assert given.hdus == report.hdus
    for own, handed in zip(report.extensions, given.extensions,
                           strict=True):
        assert own.metrics == pytest.approx(handed.metrics, nan_ok=True)


def test_roles_of_other_hdus_are_refused(hst):
    path, _ = hst
    with ImageSource(path, roles=True) as src:
        roles = src.hdus
    with pytest.raises(InvalidParameterError, match=re.escape(
            "image sim_flt.fits: the roles given are not those of its 7 "
            "HDUs (they are for HDUs [0, 1, 2])")):
        assess(path, config=NO_CR, jobs=1, roles=roles[:3])


def test_the_command_line_lists_every_hdu(hst, tmp_path):
    path, _ = hst
    done = run_cli(path, "--summary-only", "--no-progress", "--jobs", "1",
                   "--set", "cosmic_rays=false", "-o", tmp_path,
                   cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert "HDU 0 PRIMARY: header only (no pixels)" in lines
    assert ("HDU 3 DQ,1: mask (EXTNAME DQ), used as the mask of SCI,1"
            in lines)
    assert ("HDU 5 ERR,2: weight (EXTNAME ERR, MAP_RMS), used as the "
            "weight of SCI,2") in lines
    assert not any(line.startswith(("ERR", "DQ")) for line in lines)


# -- Rubin-style: image, mask, variance ---------------------------------------
def _rubin_file(path):
    """One CCD as Rubin writes it, stars drawn here (not the simulator).

    The mask names its bits (MP_*): DETECTED (5) is set on every source
    pixel and must not mask them; BAD (0) on two columns; NO_DATA (8)
    on a corner, where the variance is infinite too.
    """
    rng = np.random.default_rng(11)
    ny, nx = 700, 650
    yy, xx = np.mgrid[0:ny, 0:nx]
    stars = np.zeros((ny, nx))
    s = 3.2 / 2.3548
    for _ in range(160):
        x0, y0 = rng.uniform(15, nx - 15), rng.uniform(15, ny - 15)
        box = (slice(int(y0) - 10, int(y0) + 11),
               slice(int(x0) - 10, int(x0) + 11))
        stars[box] += 10 ** rng.uniform(3.5, 5.0) / (2 * np.pi * s * s) \
            * np.exp(-((xx[box] - x0) ** 2 + (yy[box] - y0) ** 2)
                     / (2 * s * s))
    variance = 30.0**2 + stars / 2.0  # sky noise 30 ADU, gain 2
    image = (stars + rng.normal(0, 1, (ny, nx)) * np.sqrt(variance))
    mask = np.zeros((ny, nx), np.int32)
    mask[stars > 60.0] |= 1 << 5  # DETECTED
    mask[:, 100:102] |= 1 << 0  # BAD
    mask[:20, :20] |= 1 << 8  # NO_DATA
    variance[:20, :20] = np.inf
    head = fits.Header()
    for name, bit in (("BAD", 0), ("SAT", 1), ("INTRP", 2), ("CR", 3),
                      ("EDGE", 4), ("DETECTED", 5),
                      ("DETECTED_NEGATIVE", 6), ("SUSPECT", 7),
                      ("NO_DATA", 8)):
        head[f"MP_{name}"] = bit
    fits.HDUList([
        fits.PrimaryHDU(),
        fits.ImageHDU(image.astype(np.float32), name="image"),
        fits.ImageHDU(mask, head, name="mask"),
        fits.ImageHDU(variance.astype(np.float32), name="variance"),
        fits.BinTableHDU.from_columns(
            [fits.Column("id", "J", array=np.arange(3))], name="ARCHIVE_ID"),
    ]).writeto(path)
    return int(np.count_nonzero(mask & 0b1_0000_0001))


def test_rubin_style_image_mask_variance(tmp_path):
    n_bad = _rubin_file(tmp_path / "calexp.fits")
    report = assess(tmp_path / "calexp.fits", config=NO_CR, jobs=1)
    assert [e.name for e in report.extensions] == ["IMAGE"]
    assert _typed_roles(report) == [
        ("PRIMARY", "header only", False, None),
        ("IMAGE", "sky image", False, None),
        ("MASK", "mask", True, None),
        ("VARIANCE", "weight", True, "MAP_VAR"),
        ("ARCHIVE_ID", "table", False, None)]
    ext = report.extensions[0]
    assert ext.ok, ext.error
    # BAD and NO_DATA pixels masked, not the DETECTED ones
    assert ext.metrics["NFLAG_USERMASK"] == n_bad
    assert ext.metrics["NFLAG_ZEROWEIGHT"] == 400
    note = next(n for n in ext.notes if n.startswith("mask: the MASK"))
    assert "DETECTED" not in note
    assert "BAD" in note
    # The stars (all DETECTED) are measured: a PSF on many of them
    # (Gaussian stars sampled at pixel centres, fitted with a Moffat).
    assert ext.metrics["NSTAR_FIT"] >= 50
    assert ext.metrics["FWHM_PIX"] == pytest.approx(3.2, rel=0.1)
    assert any("weight: the VARIANCE plane" in n for n in ext.notes)
    lines = hdu_lines(report.to_dict()["hdus"])
    assert lines[-1] == "HDU 4 ARCHIVE_ID: table (a table)"


# -- files with no sky image --------------------------------------------------
def test_the_elixir_mask_given_as_the_image_is_refused(tmp_path):
    mask = shared_file("megacam_elixir_badpix_2004B.mask.0.36.01.fits.gz")
    done = run_cli(mask, "--summary-only", "--no-progress", "-o", tmp_path,
                   cwd=tmp_path)
    assert done.returncode == 2
    assert done.stderr == (
        "qualityfits: error: image megacam_elixir_badpix_2004B.mask.0.36."
        "01.fits.gz: no extension holds a sky image: ccd00..ccd35 are "
        "masks (integer, 2 distinct values)\n")
    assert done.stdout == ""


def test_one_integer_mask_is_not_an_image(tmp_path):
    values = np.ones((300, 200), np.int16)
    values[::7, ::5] = 0
    values[50:60, :] = 4
    fits.PrimaryHDU(values).writeto(tmp_path / "m.fits")
    with pytest.raises(NoImageDataError) as info:
        assess(tmp_path / "m.fits", jobs=1)
    assert str(info.value) == (
        "image m.fits: extension PRIMARY holds 3 distinct integer values: "
        "a mask, not an image")


@pytest.mark.parametrize("name", [
    "kpno_m51_B_devpix.fits.gz", "saao1m_ste3_raw_a8280271.fits.gz",
    "megacam_1616687p_ccd10_cutout.fits.gz", "ntt_susi_bias_raw.fits.gz",
])
def test_real_integer_images_stay_sky_images(name):
    with ImageSource(shared_file(name), roles=True) as source:
        assert [h.role for h in source.hdus] == ["sky image"]
        assert len(source.extensions) == 1


def test_the_report_page_lists_every_hdu(hst, tmp_path):
    _, report = hst
    write_report(report, tmp_path / "index.html", "sim_flt", [])
    page = lxml.html.parse(str(tmp_path / "index.html"))
    items = [li.text_content() for li in page.getroot().get_element_by_id(
        "hdus").iter("li")]
    assert items == list(hdu_lines(report.to_dict()["hdus"]))
    assert "HDU 6 DQ,2: mask (EXTNAME DQ), used as the mask of SCI,2" in (
        items)


def test_a_mask_may_have_one_extension_per_image_hdu(hst, tmp_path):
    """SCI, ERR, DQ x 2 in the mask file too: the SCI positions serve."""
    path, _ = hst
    with fits.open(path) as hdul:
        shape = hdul["SCI", 1].data.shape
    planes = []
    for k in range(6):
        values = np.zeros(shape, np.int16)
        values[:, 10 * k:10 * k + 3] = 1  # 3 columns, not the same ones
        planes.append(fits.ImageHDU(values))
    fits.HDUList([fits.PrimaryHDU(), *planes]).writeto(tmp_path / "m.fits")
    report = assess(path, mask=tmp_path / "m.fits", config=NO_CR, jobs=1,
                    parameters=QualityParameters(mask_convention="nonzero"))
    for ext in report.extensions:
        assert ext.metrics["NFLAG_USERMASK"] == 3 * shape[0]
    bad = fits.HDUList([fits.PrimaryHDU(), *planes[:4]])
    bad.writeto(tmp_path / "bad.fits")
    with pytest.raises(ShapeMismatchError, match=re.escape(
            "mask bad.fits has 4 image extension(s), image sim_flt.fits "
            "has 2 sky image(s) among 6 image HDUs")):
        assess(path, mask=tmp_path / "bad.fits", config=NO_CR, jobs=1)


def test_an_empty_err_plane_is_not_used(hst, tmp_path):
    """ERR all 0 (a chip the calibration gave up on): measured without."""
    path, report = hst
    with fits.open(path) as hdul:
        hdul["ERR", 2].data[:] = 0.0
        hdul.writeto(tmp_path / "flt.fits")
    got = assess(tmp_path / "flt.fits", config=NO_CR, jobs=1)
    second = got.extensions[1]
    assert second.ok, second.error
    assert "weight: the ERR,2 plane has no positive weight: not used" in (
        second.notes)
    assert second.metrics["NFLAG_ZEROWEIGHT"] == 0
    assert got.extensions[0].metrics == report.extensions[0].metrics


# -- ESO layouts: MUSE's DATA/STAT/DQ, the HDUCLAS cards ---------------------
def _eso_planes(path, names, classes=None):
    """A simulated CCD as science, variance or error, and quality planes.

    ``names``: the three EXTNAMEs; ``classes``: per plane, the HDUCLAS2 /
    HDUCLAS3 cards (ESO's data format standard) or None.
    """
    from qualityfits.datasets import simulate_image  # noqa: PLC0415

    sim = simulate_image(SimulationParams(
        shape=(512, 512), n_stars=200, n_galaxies=100, n_cr_hits=0,
        n_cr_tracks=0), seed=57)
    data = sim.data.astype(np.float32)
    variance = np.maximum(data, 1.0) / 1.6 + (5.0 / 1.6) ** 2
    quality = np.zeros(data.shape, np.uint8)
    quality[100:110, 200:260] = 4
    planes = [data, variance.astype(np.float32), quality]
    if classes is not None and classes[1][1] == "RMSE":
        planes[1] = np.sqrt(variance).astype(np.float32)
    hdus = [fits.PrimaryHDU()]
    for k, (name, pixels) in enumerate(zip(names, planes, strict=True)):
        header = sim.header.copy() if k == 0 else fits.Header()
        header["EXTNAME"] = name
        if classes is not None and classes[k] is not None:
            header["HDUCLASS"] = "ESO"
            header["HDUCLAS2"], header["HDUCLAS3"] = classes[k]
        hdus.append(fits.ImageHDU(pixels, header))
    fits.HDUList(hdus).writeto(path)


def test_muse_data_stat_dq(tmp_path):
    """MPDAF's STAT is the variance of DATA, its DQ DATA's mask."""
    _eso_planes(tmp_path / "white.fits", ("DATA", "STAT", "DQ"))
    report = assess(tmp_path / "white.fits", config=NO_CR, jobs=1)
    assert [e.name for e in report.extensions] == ["DATA"]
    assert _typed_roles(report) == [
        ("PRIMARY", "header only", False, None),
        ("DATA", "sky image", False, None),
        ("STAT", "weight", True, "MAP_VAR"),
        ("DQ", "mask", True, None)]
    ext = report.extensions[0]
    assert ext.ok, ext.error
    assert ext.metrics["NFLAG_USERMASK"] == 600
    assert any("weight: the STAT plane" in n for n in ext.notes)


@pytest.mark.parametrize(("kind", "weight_type"), [
    ("MSE", "MAP_VAR"), ("RMSE", "MAP_RMS")])
def test_eso_hduclas_cards_say_the_role_whatever_the_name(
        tmp_path, kind, weight_type):
    path = tmp_path / "phase3.fits"
    _eso_planes(path, ("CHIP1", "CHIP1_E", "CHIP1_Q"),
                classes=[("DATA", ""), ("ERROR", kind),
                         ("QUALITY", "FLAG32BIT")])
    report = assess(path, config=NO_CR, jobs=1)
    assert [e.name for e in report.extensions] == ["CHIP1"]
    assert _typed_roles(report)[1:] == [
        ("CHIP1", "sky image", False, None),
        ("CHIP1_E", "weight", True, weight_type),
        ("CHIP1_Q", "mask", True, None)]
    assert report.extensions[0].ok


def test_an_eso_error_plane_of_unknown_kind_is_not_assessed(tmp_path):
    path = tmp_path / "odd.fits"
    _eso_planes(path, ("CHIP1", "CHIP1_E", "CHIP1_Q"),
                classes=[None, ("ERROR", "WHATEVER"), None])
    report = assess(path, config=NO_CR, jobs=1)
    assert [e.name for e in report.extensions] == ["CHIP1"]
    role = next(h for h in report.hdus if h.name == "CHIP1_E")
    assert role.role == "auxiliary"
    assert "HDUCLAS3 WHATEVER" in role.reason
