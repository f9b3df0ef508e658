"""PSF stars with a large PSF: galaxies on the stellar locus.

Issue 15, item 5.  With a 9.5-10 px PSF, galaxies of r_e 0.7-3 px are
only 1-5 % broader than the stars: they share the stars' half-light
radius locus and fit a Moffat well.  Before `psf.mixture_clip`, where
they were about as many as the stars the FWHM trend settled between
the two populations or tilted through them, kept galaxies and clipped
bright stars (seed 362 below: 18 of the 30 PSF stars were true stars,
FWHM_PIX +1.55 %).

Simulated 1024² CCDs (1200 stars per 2048², the galaxies of the
regression harness), betas, angles, skies and seeds that the selection
was not developed on; the truth table says which PSF stars are stars.
Of the seeds 361-366 surveyed, 363 withholds the PSF: only 14 true
stars there pass PSFEx's candidate rules (the others are blended,
saturated or below S/N 20), fewer than ``psf_min_stars``; 361 (withheld
before) publishes FWHM_PIX within 0.1 % but from 15 stars and 7
galaxies, below the 75 % asserted here (the galaxies that remain are
those as sharp as the stars to within their noise).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from scipy.spatial import cKDTree

from qualityfits.datasets import SimulationParams, simulate_image
from qualityfits.pipeline import assess_extension

MATCH_RADIUS = 1.5  # px

TEN_BETA_25 = {"fwhm": 10.0, "beta": 2.5, "theta": 20.0, "sky": 800.0,
               "ellipticity": 0.05}
NINE5_BETA_45 = {"fwhm": 9.5, "beta": 4.5, "theta": -70.0, "sky": 1000.0,
                 "ellipticity": 0.08}


@pytest.mark.parametrize(("seed", "case"), [
    (362, TEN_BETA_25),
    (364, NINE5_BETA_45),
    (365, NINE5_BETA_45),
])
def test_large_psf_stars_are_stars(seed: int, case: dict[str, Any]) -> None:
    """FWHM published, within 1.5 %; >= 75 % of the PSF stars are stars."""
    params = SimulationParams(
        shape=(1024, 1024), n_stars=300, n_galaxies=375, n_cr_hits=75,
        n_cr_tracks=8, **case)
    sim = simulate_image(params, seed=seed)
    report = assess_extension(sim.data, sim.header, name=f"s{seed}")
    assert report.ok, report.error
    m = report.metrics
    assert np.isfinite(m["FWHM_PIX"]), (m["NSTAR_FIT"], report.notes)
    assert abs(m["FWHM_PIX"] / params.fwhm - 1.0) <= 0.015, m["FWHM_PIX"]
    assert abs(m["ELLIPTICITY"] - params.ellipticity) <= 0.003, (
        m["ELLIPTICITY"])
    stars = report.psf_stars
    assert stars is not None
    truth = cKDTree(np.column_stack([sim.stars["x"], sim.stars["y"]]))
    d, _ = truth.query(np.column_stack([
        np.asarray(stars["X_IMAGE"]) - 1.0,
        np.asarray(stars["Y_IMAGE"]) - 1.0]))
    true_stars = int((d < MATCH_RADIUS).sum())
    assert true_stars >= 0.75 * len(stars), (true_stars, len(stars))
