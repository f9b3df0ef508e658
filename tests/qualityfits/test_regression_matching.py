"""How the regression harness matches detections to truth (issue 15).

`benchmarks/regression.py` counts a truth source only where it
dominates the light of its detection (`regression.mark_dominant`):
before, a star sitting on a faint galaxy was "a galaxy called a star".
Constructed scenes whose answer follows from the profiles alone.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
from astropy.table import Table

from qualityfits import datasets

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"
if str(BENCHMARKS) not in sys.path:
    sys.path.insert(0, str(BENCHMARKS))

import regression  # noqa: E402

PSF = regression.TruthPsf(fwhm=4.0, beta=3.0, ellipticity=0.05, theta=30.0)


def _truth(stars: list[tuple[float, float, float, float]],
           galaxies: list[tuple[float, float, float, float]],
           ) -> dict[str, Table]:
    """Stars (x, y, flux, snr) and round galaxies (x, y, flux, r_e)."""
    s = np.array(stars, dtype=float).reshape(-1, 4)
    g = np.array(galaxies, dtype=float).reshape(-1, 4)
    return {
        "stars": Table({"x": s[:, 0], "y": s[:, 1], "flux": s[:, 2],
                        "snr": s[:, 3], "fwhm": np.full(len(s), PSF.fwhm)}),
        "galaxies": Table({"x": g[:, 0], "y": g[:, 1], "flux": g[:, 2],
                           "r_e": g[:, 3], "q": np.ones(len(g)),
                           "theta": np.zeros(len(g))}),
    }


def test_alone_a_source_holds_all_its_light() -> None:
    truth = _truth([(20.0, 20.0, 1e4, 50.0)], [(300.0, 20.0, 1e4, 3.0)])
    regression.mark_dominant(truth, PSF)
    assert truth["stars"]["own_frac"][0] == 1.0
    assert truth["galaxies"]["own_frac"][0] == 1.0


def test_two_equal_stars_share_equally() -> None:
    """Same flux: each holds the same share, above half at 3 px apart."""
    truth = _truth([(50.0, 50.0, 1e4, 50.0), (53.0, 50.0, 1e4, 50.0)], [])
    regression.mark_dominant(truth, PSF)
    frac = np.asarray(truth["stars"]["own_frac"])
    np.testing.assert_allclose(frac[0], frac[1], rtol=1e-12)
    assert 0.5 < frac[0] < 0.95
    truth = _truth([(50.0, 50.0, 1e4, 50.0), (50.0, 50.0, 1e4, 50.0)], [])
    regression.mark_dominant(truth, PSF)
    np.testing.assert_allclose(truth["stars"]["own_frac"], 0.5, rtol=1e-12)


def test_star_on_a_faint_galaxy_is_not_a_galaxy_called_a_star() -> None:
    """The detection on a star on a faint galaxy counts for the star.

    Scene: star A (S/N 40) 0.8 px from the centre of a faint r_e 4 px
    galaxy; an isolated r_e 3 px galaxy; a faint star (S/N 25) 0.5 px
    from the centre of a bright r_e 2.5 px galaxy.  Each source is
    detected at its truth position, and every detection is called a
    star.
    """
    truth = _truth(
        [(50.0, 50.0, 2000.0, 40.0), (200.0, 200.0, 300.0, 25.0)],
        [(50.8, 50.0, 1000.0, 4.0), (400.0, 100.0, 5000.0, 3.0),
         (200.5, 200.0, 40000.0, 2.5)])
    regression.mark_dominant(truth, PSF)
    assert truth["stars"]["own_frac"][0] >= regression.DOMINANT
    assert truth["stars"]["own_frac"][1] < regression.DOMINANT
    own = np.asarray(truth["galaxies"]["own_frac"])
    assert own[0] < regression.DOMINANT
    assert own[1] == 1.0
    assert own[2] >= regression.DOMINANT
    # Detections at every source (the star A's and the galaxy's under it
    # coincide within MATCH_RADIUS: one detection, on the star).
    x = np.array([50.0, 400.0, 200.2])
    y = np.array([50.0, 100.0, 200.0])
    side = regression.Side()
    regression.classify_truth(side, truth, x, y, np.ones(3, dtype=bool))
    # Positional matching alone: all three galaxies "called stars".
    assert side.gal_as_star_any == 1.0
    # Dominance: the faint galaxy under star A is left out; the isolated
    # galaxy and the bright one (whose detection is its own, whatever
    # the faint star on it) are galaxies called stars.
    assert side.gal_as_star == 1.0
    # Star A is complete; the faint star on the bright galaxy does not
    # count (its detection is the galaxy's).
    assert side.completeness == 1.0
    assert side.found == 1.0
    # Now call the detection on the bright galaxy a galaxy: 1 of the 2
    # counted galaxies is called a star; positional, 2 of 3.
    side = regression.Side()
    regression.classify_truth(side, truth, x, y,
                              np.array([True, True, False]))
    assert side.gal_as_star == 0.5
    np.testing.assert_allclose(side.gal_as_star_any, 2 / 3)
    # ... and the faint star on it is not missed for the completeness.
    assert side.completeness == 1.0


def test_without_dominance_every_match_counts() -> None:
    """Truth without ``own_frac`` (not marked): the positional rule."""
    truth = _truth([(50.0, 50.0, 2000.0, 40.0)],
                   [(50.8, 50.0, 1000.0, 4.0)])
    side = regression.Side()
    regression.classify_truth(side, truth, np.array([50.0]),
                              np.array([50.0]), np.array([True]))
    assert side.gal_as_star == 1.0
    assert side.gal_as_star_any == 1.0


@pytest.mark.parametrize(("fwhm", "beta"), [(1.8, 3.5), (4.0, 3.0),
                                            (9.5, 2.5)])
def test_galaxy_light_in_an_aperture_matches_the_simulator(
        fwhm: float, beta: float) -> None:
    """The harness's convolved disc against `datasets`' own rendering.

    The simulator's FFT stamp, rendered 5 times finer (every length
    scaled by 5), summed over the sub-pixels within the aperture, for
    the aperture on the galaxy and 5 px away.
    """
    k = 5
    size = 301 if fwhm < 5 else 601
    psf = regression.TruthPsf(fwhm=fwhm, beta=beta, ellipticity=0.05,
                              theta=30.0)
    radius = regression.APERTURE_FWHM * fwhm
    alpha = fwhm / (2.0 * np.sqrt(2.0 ** (1.0 / beta) - 1.0))
    a = np.array([k * alpha * 1.05])
    b = np.array([k * alpha * 0.95])
    yy, xx = (np.mgrid[0:size, 0:size] - size // 2) / k
    step = radius / 10.0
    g = np.arange(-radius + step / 2, radius, step)
    gx, gy = np.meshgrid(g, g)
    inside = np.hypot(gx, gy) <= radius
    for r_e, q in ((2.0, 1.0), (4.0, 0.6), (8.0, 0.4)):
        stamp = datasets._galaxy_batch(
            size, dx0=np.zeros(1), dy0=np.zeros(1),
            scale=np.array([k * r_e / 1.678]), q=np.array([q]),
            angle=np.array([20.0]), a=a, b=b, beta=beta, theta=30.0)[0]
        for offset in (0.0, 5.0):
            exact = stamp[np.hypot(xx - offset, yy) <= radius].sum()
            ours = regression._galaxy(
                gx[inside] + offset, gy[inside], np.array(1.0),
                np.array(r_e), np.array(q), np.array(20.0),
                psf).sum() * step * step
            assert abs(ours - exact) <= 0.003, (r_e, q, offset, exact,
                                                 ours)
