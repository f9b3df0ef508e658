"""The pixel-integrated Moffat model and its batch fitter."""

import numpy as np
import pytest
from numpy.testing import assert_allclose

from qualityfits import moffat


def _grid(radius):
    off = np.arange(-radius, radius + 1, dtype=float)
    gx, gy = np.meshgrid(off, off)
    return gx.ravel(), gy.ravel()


def test_gauss_legendre_weights_sum_to_one():
    for order in (1, 2, 3, 6):
        offsets, weights = moffat.gauss_legendre_offsets(order)
        assert offsets.shape == (order * order, 2)
        assert_allclose(weights.sum(), 1.0)
        assert np.all(np.abs(offsets) < 0.5)


@pytest.mark.parametrize(("fwhm", "beta", "ell", "theta"),
                         [(2.5, 4.5, 0.0, 0.0), (4.0, 3.0, 0.1, 30.0),
                          (6.0, 2.5, 0.15, -60.0)])
def test_shape_round_trip(fwhm, beta, ell, theta):
    params = moffat.params_from_shape(x0=0.3, y0=-0.2, flux=1e4, fwhm=fwhm,
                                      beta=beta, ellipticity=ell,
                                      theta=theta)
    shape = moffat.shape_from_params(params)
    assert_allclose(shape.fwhm, fwhm, rtol=1e-12)
    assert_allclose(shape.ellipticity, ell, atol=1e-12)
    assert_allclose(shape.beta, beta)
    assert_allclose(shape.flux, 1e4, rtol=1e-12)
    if ell > 0:
        assert_allclose(shape.theta, theta, atol=1e-9)
        # Distortion of the moment matrix: |e| = (a²-b²)/(a²+b²).
        a, b = 1 + ell, 1 - ell
        assert_allclose(np.hypot(shape.e1, shape.e2),
                        (a * a - b * b) / (a * a + b * b), rtol=1e-9)


def test_rendered_profile_holds_its_flux_and_half_maximum():
    params = moffat.params_from_shape(x0=0.0, y0=0.0, flux=1.0, fwhm=4.0,
                                      beta=3.0)
    xs, ys = _grid(200)
    img = moffat.render(params, xs, ys, order=3)[0]
    # Moffat beta=3 holds 1 - (1 + (R/alpha)²)^-2 within R: > 0.9999 here.
    assert_allclose(img.sum(), 1.0, rtol=2e-4)
    # Point samples along x at half the FWHM are at half the peak.
    pts = moffat.render_point(params, np.array([0.0, 2.0]),
                              np.array([0.0, 0.0]))[0]
    assert_allclose(pts[1] / pts[0], 0.5, rtol=1e-12)


def test_pixel_integration_converges():
    params = moffat.params_from_shape(x0=0.2, y0=0.1, flux=1.0, fwhm=2.5,
                                      beta=4.5, ellipticity=0.1, theta=20)
    xs, ys = _grid(8)
    fine = moffat.render(params, xs, ys, order=16)[0]
    coarse = moffat.render(params, xs, ys, order=3)[0]
    assert np.max(np.abs(coarse - fine)) < 2e-3 * fine.max()


@pytest.mark.parametrize(("fwhm", "beta", "ell"),
                         [(2.5, 4.5, 0.1), (4.0, 3.0, 0.05),
                          (6.0, 2.5, 0.15)])
def test_fit_recovers_pixel_free_shape(fwhm, beta, ell):
    """Noisy stars rendered with fine integration; the fit (coarser
    integration) recovers the pre-pixel FWHM to 0.5 % and the
    ellipticity to 0.005."""
    rng = np.random.default_rng(7)
    n, radius = 150, int(np.ceil(1.75 * fwhm))
    xs, ys = _grid(radius)
    x0 = rng.uniform(-0.5, 0.5, n)
    y0 = rng.uniform(-0.5, 0.5, n)
    flux = 10 ** rng.uniform(4.3, 5.5, n)
    truth = moffat.params_from_shape(x0=x0, y0=y0, flux=flux, fwhm=fwhm,
                                     beta=beta, ellipticity=ell, theta=35)
    img = moffat.render(truth, xs, ys, order=12)
    var = (1000.0 + img) / 1.6 + 10.0
    data = img + rng.normal(size=img.shape) * np.sqrt(var)
    init = moffat.params_from_shape(x0=0.2, y0=-0.2, flux=flux * 0.8,
                                    fwhm=fwhm * 1.25, beta=3.0)
    fit = moffat.fit_moffat(data, 1.0 / var, xs, ys, init, order=2)
    assert fit.converged.mean() > 0.95
    shape = moffat.shape_from_params(fit.params)
    assert abs(np.median(shape.fwhm) / fwhm - 1) < 0.005
    t2 = np.radians(2 * shape.theta)
    e = np.hypot(np.mean(shape.ellipticity * np.cos(t2)),
                 np.mean(shape.ellipticity * np.sin(t2)))
    assert abs(e - ell) < 0.005
    assert abs(np.median(shape.beta) / beta - 1) < 0.05
    assert_allclose(np.median(fit.reduced_chi2), 1.0, atol=0.05)


def test_fit_with_fixed_beta_and_masked_pixels():
    xs, ys = _grid(8)
    truth = moffat.params_from_shape(x0=0.1, y0=0.3, flux=5e4, fwhm=3.5,
                                     beta=3.5)
    img = moffat.render(truth, xs, ys, order=8)
    invvar = np.ones_like(img)
    invvar[0, :40] = 0.0  # a masked corner must not matter
    img[0, :40] = 1e6
    init = moffat.params_from_shape(x0=0.0, y0=0.0, flux=4e4, fwhm=4.0,
                                    beta=3.5)
    fit = moffat.fit_moffat(img, invvar, xs, ys, init, order=4,
                            fixed_beta=np.array([3.5]))
    shape = moffat.shape_from_params(fit.params)
    assert_allclose(shape.fwhm, 3.5, rtol=2e-3)
    assert_allclose(shape.beta, 3.5)
    assert_allclose(fit.params[0, moffat.X0], 0.1, atol=1e-3)
