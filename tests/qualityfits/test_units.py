"""The measurements do not depend on the units of the pixels.

The same frame in ADU, in e-/s, in nanomaggies or times a constant
holds the same stars, galaxies and cosmic rays: only the sky level and
noise follow the scale.  Without a GAIN keyword the cosmic-ray finder
once assumed 1 e-/ADU for the sources' photon noise, whatever the
units: the NTT frame times 1e-4 lost 60 % of its cosmic rays and its
FWHM moved by 5 %.  It now takes the gain the sky implies
(`qualityfits.pipeline._sky_gain`).
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from astropy.io import fits
from testkit import shared_file

import qualityfits
from qualityfits.datasets import SimulationParams, simulate_image

COUNTS = ("NCR", "NOBJ", "NSTAR", "NGAL", "NSTAR_PSF")
SCALES = (1e-4, 1e3)


def _scaled(data: np.ndarray, header: fits.Header, factor: float,
            path) -> object:
    header = header.copy()
    for key in ("SATURATE", "SATLEVEL"):
        if isinstance(header.get(key), (int, float)):
            header[key] = header[key] * factor
    fits.PrimaryHDU((data * factor).astype(np.float32),
                    header).writeto(path)
    return qualityfits.assess(path, jobs=1).extensions[0]


def _check_invariant(data: np.ndarray, header: fits.Header,
                     tmp_path) -> None:
    base = _scaled(data, header, 1.0, tmp_path / "x1.fits")
    assert base.status == "ok", base.error
    assert base.metrics["NCR"] > 10  # cosmic rays to find
    for factor in SCALES:
        other = _scaled(data, header, factor, tmp_path / f"x{factor}.fits")
        assert other.status == "ok", (factor, other.error)
        for key in COUNTS:
            assert other.metrics[key] == base.metrics[key], (factor, key)
        for key in ("FWHM_PIX", "FWHM_RH"):
            assert other.metrics[key] == pytest.approx(
                base.metrics[key], rel=1e-3), (factor, key)
        assert other.metrics["ELLIPTICITY"] == pytest.approx(
            base.metrics["ELLIPTICITY"], abs=1e-4), factor
        assert other.metrics["SKY_RMS"] == pytest.approx(
            factor * base.metrics["SKY_RMS"], rel=1e-4), factor
        gain_notes = [n for n in other.notes if "cosmic-ray finder" in n]
        assert len(gain_notes) == 1, other.notes
        assert "the sky level over its variance" in gain_notes[0]


def test_a_simulation_without_gain_keyword(tmp_path):
    # Not the project's usual field: a broader, low-beta PSF, a low sky.
    sim = simulate_image(SimulationParams(
        shape=(768, 768), fwhm=3.4, beta=2.2, sky=400.0, n_stars=220,
        n_galaxies=250, n_cr_hits=60, n_cr_tracks=4), seed=811)
    header = sim.header.copy()
    del header["GAIN"]
    _check_invariant(sim.data.astype(np.float64), header, tmp_path)


@pytest.mark.realdata
def test_a_real_frame_without_gain_keyword(tmp_path):
    path = shared_file("ntt_emmi_R_galaxies.fits.gz")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # its ESO-LOG cards
        with fits.open(path) as hdul:
            data = hdul[0].data.astype(np.float64)
            header = hdul[0].header.copy()
    assert "GAIN" not in header
    _check_invariant(data, header, tmp_path)


def test_a_sky_subtracted_frame_keeps_one_electron_per_adu(tmp_path):
    """Near zero the sky says nothing about the gain: the note says so."""
    sim = simulate_image(SimulationParams(
        shape=(512, 512), n_stars=150, n_galaxies=150, n_cr_hits=20),
        seed=812)
    header = sim.header.copy()
    del header["GAIN"]
    data = sim.data - np.median(sim.data)
    path = tmp_path / "subtracted.fits"
    fits.PrimaryHDU(data.astype(np.float32), header).writeto(path)
    report = qualityfits.assess(path, jobs=1).extensions[0]
    assert report.status == "ok", report.error
    notes = [n for n in report.notes if "cosmic-ray finder" in n]
    assert len(notes) == 1, report.notes
    assert "sky-subtracted?" in notes[0]
    assert "1 e-/ADU" in notes[0]
