"""The stellar locus's trend across a CCD (`psf.locus_tilt`).

Synthetic catalogues of half-light radii: stars on a plane in ln r_h with
a 1 % scatter, galaxies only ever larger (4-50 %), outnumbering them.
"""

from __future__ import annotations

import numpy as np
import pytest

from qualityfits.psf import locus_tilt, tilt_factor

SHAPE = (4612, 2048)


def catalogue(tilt: tuple[float, float], n_stars: int, n_galaxies: int,
              seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray,
                                  np.ndarray]:
    rng = np.random.default_rng(seed)
    n = n_stars + n_galaxies
    x = rng.uniform(0, SHAPE[1] - 1, n)
    y = rng.uniform(0, SHAPE[0] - 1, n)
    psf = 2.0 * tilt_factor(x, y, tilt, SHAPE)
    is_star = np.arange(n) < n_stars
    spread = np.where(is_star, 1.0 + 0.01 * rng.standard_normal(n),
                      rng.uniform(1.04, 1.5, n))
    return x, y, psf * spread, is_star


@pytest.mark.parametrize("tilt", [(-0.2, 0.0), (0.1, 0.1), (0.0, -0.15),
                                  (0.05, -0.05)])
def test_tilt_found_under_a_majority_of_galaxies(tilt):
    x, y, r, is_star = catalogue(tilt, 80, 250, seed=7)
    found, members = locus_tilt(x, y, r, SHAPE)
    assert found == pytest.approx(tilt, abs=0.01)
    # The peak's members are the stars.
    assert members.sum() >= 0.8 * is_star.sum()
    assert is_star[members].mean() >= 0.95
    # Divided by the trend, the stars are one narrow locus again.
    flat = r / tilt_factor(x, y, found, SHAPE)
    assert np.std(np.log(flat[is_star])) < 0.015
    assert np.std(np.log(r[is_star])) > 0.02


def test_no_tilt_for_a_constant_psf():
    x, y, r, _ = catalogue((0.0, 0.0), 80, 250, seed=8)
    found, _ = locus_tilt(x, y, r, SHAPE)
    assert np.hypot(*found) < 0.01


def test_too_few_sources():
    x, y, r, _ = catalogue((0.1, 0.0), 10, 15, seed=9)
    found, members = locus_tilt(x, y, r, SHAPE)
    assert found == (0.0, 0.0)
    assert not members.any()
