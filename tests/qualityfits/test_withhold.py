"""PSF numbers are published only on enough stars, and with their errors.

* A CCD with fewer fitted PSF stars than ``psf_min_stars`` gets null
  PSF metrics (NaN in the report, null in JSON, VOTable and FITS), the
  ``PSF_WITHHELD`` flag, a note giving the reason, no PSF model or map;
  the exposure's medians and PSF map leave it out.
* The uncertainties (``*_ERR``) are honest: on simulated CCDs whose
  truth is known, |measured - truth| / error has the spread of a
  standard normal variable, roughly.
* The threshold itself: on subsets of the PSF stars of simulated CCDs
  (the pipeline's own FWHM estimator on each), ``psf_min_stars`` stars
  give the FWHM within 1 % and the ellipticity within 0.005 of the
  truth 95 % of the time, every FWHM within 5 %, and fewer stars do
  not: the ellipticity below 20, the FWHM below 12 (``docs/metrics.md``).
"""

from __future__ import annotations

import json
import math

import astropy.units as u
import numpy as np
import pytest
from astropy.io import fits
from astropy.io.votable import parse
from lxml import etree
from testkit import SHARED_DATA

import qualityfits
from qualityfits import tables
from qualityfits.config import QualityConfig
from qualityfits.datasets import SimulationParams, simulate_image
from qualityfits.metrics import METRIC_BY_NAME, METRICS
from qualityfits.pipeline import assess_extension
from qualityfits.psf import _eval_coef, compact_clip, fwhm_error

FEW = SimulationParams(shape=(512, 512), n_stars=8, n_galaxies=60,
                       n_cr_hits=5, n_cr_tracks=1)
MANY = SimulationParams(shape=(512, 512), n_stars=300, n_galaxies=200,
                        n_cr_hits=20, n_cr_tracks=2)
PSF_METRICS = [m.name for m in METRICS if m.rests_on == "NSTAR_FIT"]
LOCUS_METRICS = [m.name for m in METRICS if m.rests_on == "NSTAR_PSF"]
SCHEMA = SHARED_DATA.parent / "schemas" / "VOTable.xsd"


@pytest.fixture(scope="module")
def exposure(tmp_path_factory):
    """A 2-CCD file: ccd00 with enough PSF stars, ccd01 with 7."""
    path = tmp_path_factory.mktemp("withhold") / "two.fits"
    fits.HDUList([
        fits.PrimaryHDU(),
        simulate_image(MANY, seed=901).to_hdu(name="ccd00"),
        simulate_image(FEW, seed=1).to_hdu(name="ccd01"),
    ]).writeto(path)
    return qualityfits.assess(path, jobs=1)


def test_few_stars_withhold_the_psf_numbers_with_flag_and_reason(exposure):
    good, few = exposure.extensions
    assert good.ok
    assert few.ok
    n_fit, n_locus = few.metrics["NSTAR_FIT"], few.metrics["NSTAR_PSF"]
    assert 1 <= n_fit < QualityConfig().psf_min_stars
    assert good.metrics["NSTAR_FIT"] >= QualityConfig().psf_min_stars
    for name in PSF_METRICS + LOCUS_METRICS:
        assert math.isnan(few.metrics[name]), name
        assert math.isfinite(good.metrics[name]), name
    assert "PSF_WITHHELD" in few.flags
    assert "PSF_WITHHELD" not in good.flags
    assert (f"FWHM, ellipticity, beta, the PSF model and map withheld: "
            f"{n_fit} PSF stars, at least 20 needed (psf_min_stars)"
            ) in few.notes
    assert (f"FWHM_RH and ELONG withheld: {n_locus} stars on the stellar "
            "locus, at least 20 needed (psf_min_stars)") in few.notes
    assert few.psf_model is None
    assert few.psf_grid is None
    # What was measured on the stars themselves stays, star by star.
    assert few.psf_stars is not None
    assert len(few.psf_stars) == n_fit
    # Counts, sky, classification and depth are not PSF numbers.
    for name in ("NOBJ", "SKY_MEAN", "NSTAR", "NGAL", "MAGLIM_5SIG"):
        assert math.isfinite(few.metrics[name]), name


def test_the_threshold_is_a_setting():
    sim = simulate_image(FEW, seed=1)
    rep = assess_extension(sim.data, sim.header, name="few",
                           config=QualityConfig(psf_min_stars=3))
    assert rep.metrics["NSTAR_FIT"] >= 3
    assert math.isfinite(rep.metrics["FWHM_PIX"])
    assert math.isfinite(rep.metrics["FWHM_PIX_ERR"])
    assert "PSF_WITHHELD" not in rep.flags
    assert rep.psf_model is not None
    assert not any("withheld" in note for note in rep.notes)


def test_exposure_medians_and_map_skip_the_withheld_ccd(exposure):
    good, _ = exposure.extensions
    stats = exposure.exposure.metrics
    for name in ("FWHM_PIX", "FWHM_PIX_ERR", "ELLIPTICITY", "PSF_BETA",
                 "FWHM_RH"):
        assert stats[name]["median"] == good.metrics[name], name
        assert stats[name]["min"] == stats[name]["max"] == \
            good.metrics[name], name
    assert "PSF_WITHHELD" in exposure.exposure.flags
    assert exposure.exposure.ccd_flags["PSF_WITHHELD"] == ("ccd01",)
    assert set(exposure.exposure.mosaic_psf["EXTNAME"]) == {"ccd00"}


def test_withheld_values_are_null_in_json_votable_and_fits(exposure,
                                                           tmp_path):
    summary = json.loads(json.dumps(exposure.to_dict(), allow_nan=False))
    good, few = summary["extensions"]
    for name in PSF_METRICS + LOCUS_METRICS:
        assert few["metrics"][name] is None, name
        assert good["metrics"][name] is not None, name
    assert "psf_model" not in few
    assert "psf_map" not in few
    assert "psf_model" in good
    assert "psf_map" in good

    vot = tables.write_summary_votable(exposure, tmp_path / "s.vot")
    if SCHEMA.exists():
        xsd = etree.XMLSchema(etree.parse(str(SCHEMA)))
        doc = etree.parse(str(vot), etree.XMLParser(huge_tree=True))
        assert xsd.validate(doc), xsd.error_log
    table = next(t for t in parse(str(vot), verify="exception")
                 .iter_tables() if t.name == "extensions").to_table()
    for name in ("FWHM_PIX", "FWHM_PIX_ERR", "ELLIPTICITY_ERR",
                 "PSF_AREA"):
        column = table[name]
        unit = METRIC_BY_NAME[name].unit
        assert column.unit == (u.Unit(unit) if unit else None), name
        assert np.ma.is_masked(column[1]) or math.isnan(column[1]), name
        assert math.isfinite(column[0]), name

    path = tables.write_summary_fits(exposure, tmp_path / "s.fits")
    with fits.open(path) as hdus:
        rows = hdus["EXTENSIONS"].data
        for name in ("FWHM_PIX", "FWHM_PIX_ERR", "PSF_BETA_ERR"):
            assert math.isnan(rows[name][1]), name
            assert math.isfinite(rows[name][0]), name


# -- honest errors ------------------------------------------------------------
HONEST = [
    # fwhm, beta, ellipticity, theta, fwhm_variation
    (2.5, 3.0, 0.12, 30.0, 0.0),
    (3.0, 2.5, 0.06, -60.0, 0.10),
    (4.0, 3.5, 0.10, 10.0, 0.0),
    (4.0, 4.5, 0.15, 80.0, 0.10),
    (5.0, 3.0, 0.05, -20.0, 0.0),
    (6.0, 2.5, 0.08, 45.0, 0.10),
]


@pytest.fixture(scope="module")
def honest():
    """Pulls (measured - truth) / error on simulated 1024^2 CCDs."""
    fwhm_pulls, ell_pulls = [], []
    for k, (fwhm, beta, ell, theta, var) in enumerate(HONEST):
        params = SimulationParams(
            shape=(1024, 1024), n_stars=300, n_galaxies=300, fwhm=fwhm,
            beta=beta, ellipticity=ell, theta=theta, fwhm_variation=var,
            sky_gradient=0.05)
        sim = simulate_image(params, seed=4200 + k)
        rep = assess_extension(sim.data, sim.header, name=f"h{k}")
        assert rep.ok, rep.error
        m = rep.metrics
        assert m["NSTAR_FIT"] >= QualityConfig().psf_min_stars
        stars = rep.psf_stars
        truth = float(np.median(sim.fwhm_at(
            np.asarray(stars["X_IMAGE"]) - 1.0,
            np.asarray(stars["Y_IMAGE"]) - 1.0)))
        assert m["FWHM_PIX_ERR"] > 0
        assert m["ELLIPTICITY_ERR"] > 0
        fwhm_pulls.append((m["FWHM_PIX"] - truth) / m["FWHM_PIX_ERR"])
        ell_pulls.append((m["ELLIPTICITY"] - ell) / m["ELLIPTICITY_ERR"])
    return np.array(fwhm_pulls), np.array(ell_pulls)


def test_fwhm_errors_are_honest(honest):
    pulls, _ = honest
    # A standard normal: median |z| 0.67, |z| < 3.5 nearly always.  Errors
    # three times too small or too large fail.
    assert 0.2 < np.median(np.abs(pulls)) < 2.0, pulls
    assert np.max(np.abs(pulls)) < 4.0, pulls


def test_ellipticity_errors_are_honest(honest):
    _, pulls = honest
    assert 0.2 < np.median(np.abs(pulls)) < 2.0, pulls
    assert np.max(np.abs(pulls)) < 4.0, pulls


def test_errors_of_derived_metrics_follow(exposure):
    m = exposure.extensions[0].metrics
    rel = m["FWHM_PIX_ERR"] / m["FWHM_PIX"]
    assert 0 < rel < 0.05
    assert m["FWHM_ARCSEC_ERR"] == pytest.approx(m["FWHM_PIX_ERR"]
                                                 * m["PIXSCALE"])
    assert m["FWHM_MOFFAT_ERR"] == pytest.approx(m["FWHM_MOFFAT"] * rel)
    assert m["PSF_AREA_ERR"] == pytest.approx(2 * m["PSF_AREA"] * rel)
    e, de = m["ELLIPTICITY"], m["ELLIPTICITY_ERR"]
    assert m["ELONGATION_ERR"] == pytest.approx(2 * de / (1 - e) ** 2)
    assert 0 < m["THETA_ERR"] <= 180 / math.sqrt(12)
    for name in ("E1_ERR", "E2_ERR", "ELONG_ERR", "FWHM_RH_ERR",
                 "PSF_BETA_ERR"):
        assert m[name] > 0, name


# -- the threshold, from measurements ---------------------------------------
SUBSETS = [
    # fwhm, beta, ellipticity, theta, sky, fwhm_variation
    (2.5, 2.5, 0.15, -41.0, 1000.0, 0.0),
    (2.5, 4.5, 0.07, 19.0, 5000.0, 0.15),
    (4.0, 3.5, 0.0, 0.0, 5000.0, 0.0),
    (4.0, 4.5, 0.10, -84.0, 300.0, 0.10),
    (6.0, 2.5, 0.15, 65.0, 300.0, 0.0),
    (6.0, 3.5, 0.07, -36.0, 1000.0, 0.10),
]


def _clipped_mean(values):
    keep = np.ones(values.size, bool)
    for _ in range(5):
        if keep.sum() < 3:
            break
        med = np.median(values[keep])
        sig = 1.4826 * np.median(np.abs(values[keep] - med))
        if not sig > 0:
            break
        new = np.abs(values - med) <= 3.0 * sig
        if np.array_equal(new, keep):
            break
        keep = new
    return float(np.mean(values[keep]))


@pytest.fixture(scope="module")
def subsets():
    """FWHM and ellipticity errors on random subsets of n PSF stars."""
    rng = np.random.default_rng(42)
    out = {}
    shape = (2048, 2048)
    for k, (fwhm, beta, ell, theta, sky, var) in enumerate(SUBSETS):
        params = SimulationParams(
            shape=shape, n_stars=350, n_galaxies=1000, fwhm=fwhm, beta=beta,
            ellipticity=ell, theta=theta, sky=sky, sky_gradient=0.05,
            fwhm_variation=var)
        sim = simulate_image(params, seed=1000 + k)
        rep = assess_extension(sim.data, sim.header, name=f"s{k}")
        t = rep.psf_stars
        # The stars' FWHMs carry the CCD's profile correction, whose
        # error FWHM_PIX_ERR adds as the pipeline does.
        corr_err = rep.metrics["FWHM_CORR_ERR"] / rep.metrics["FWHM_CORR"]
        x, y = np.asarray(t["X_IMAGE"]) - 1, np.asarray(t["Y_IMAGE"]) - 1
        fw, snr = np.asarray(t["FWHM"]), np.asarray(t["SNR"])
        t2 = np.radians(2 * np.asarray(t["THETA"]))
        eps1 = np.asarray(t["ELLIPTICITY"]) * np.cos(t2)
        eps2 = np.asarray(t["ELLIPTICITY"]) * np.sin(t2)
        c, s = (math.cos(math.radians(2 * theta)),
                math.sin(math.radians(2 * theta)))
        for n in (8, 12, 20, 24):
            for _ in range(150):
                pick = rng.choice(len(t), n, replace=False)
                keep, coef = compact_clip(x[pick], y[pick], fw[pick],
                                          snr[pick], np.ones(n, bool), shape)
                field = _eval_coef(coef, x[pick], y[pick], shape)
                truth = float(np.median(sim.fwhm_at(x[pick], y[pick])))
                sub = pick[keep]
                err = math.hypot(
                    fwhm_error(x[sub], y[sub], fw[sub], snr[sub], shape),
                    corr_err)
                rel = float(np.median(field)) / truth - 1.0
                de = max(abs(_clipped_mean(eps1[pick]) - ell * c),
                         abs(_clipped_mean(eps2[pick]) - ell * s))
                out.setdefault(n, []).append((rel, err, de))
    return {n: np.array(v) for n, v in out.items()}


@pytest.mark.slow
def test_psf_min_stars_is_where_the_psf_becomes_trustworthy(subsets):
    n_min = QualityConfig().psf_min_stars
    fwhm_err = {n: np.percentile(np.abs(v[:, 0]), 95)
                for n, v in subsets.items()}
    ell_err = {n: np.percentile(v[:, 2], 95) for n, v in subsets.items()}
    # From psf_min_stars stars on, 95 % within the accuracy the PSF step
    # claims (docs/pipeline.md), and every one within the 5 % tolerance
    # against PSFEx (docs/metrics.md) ...
    for n in (k for k in subsets if k >= n_min):
        assert fwhm_err[n] < 0.01, (n, fwhm_err)
        assert ell_err[n] < 0.005, (n, ell_err)
        assert np.max(np.abs(subsets[n][:, 0])) < 0.05, n
    # ... which fewer stars do not reach: the FWHM below 12 stars (its
    # biweight level is within 1 % from 12 on), the ellipticity below 20.
    assert fwhm_err[8] > 0.01, fwhm_err
    assert ell_err[8] > 0.005, ell_err
    assert ell_err[12] > 0.005, ell_err


@pytest.mark.slow
def test_bootstrap_fwhm_errors_are_honest_at_any_number_of_stars(subsets):
    for n, v in subsets.items():
        pulls = np.abs(v[:, 0] / v[:, 1])
        # |z| below its 68th percentile for a normal variable, roughly.
        assert 0.4 < np.percentile(pulls, 68.3) < 1.6, n
