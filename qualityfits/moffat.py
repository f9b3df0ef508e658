"""Elliptical Moffat profiles, integrated over pixels, fitted to many stars.

The PSF *before* pixel sampling (the seeing, which PSFEx calls
"pixel-free") is modelled as an elliptical Moffat profile

    I(x, y) = A (1 + r²)^(-β),   r² = q11 dx² + 2 q12 dx dy + q22 dy²,

with ``dx = x - x0``, ``dy = y - y0`` and ``Q = [[q11, q12], [q12, q22]]``
positive definite.  What a CCD records is that profile integrated over
each pixel; the fitter integrates it with Gauss-Legendre nodes, so the
fitted shape is the pixel-free one, unbiased by the sampling.

All stars are fitted at once with a Levenberg-Marquardt loop vectorised
over stars (one damping factor per star), with analytic derivatives.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

# Parameter order in the fitter: centre, amplitude, shape, beta.
X0, Y0, AMP, Q11, Q12, Q22, BETA = range(7)
NPARAM = 7
BETA_RANGE = (1.2, 25.0)
#: FWHM / sigma of a Gaussian profile, 2 sqrt(2 ln 2) (the Moffat's
#: limit as beta grows): the one factor every Gaussian here uses.
SIGMA_TO_FWHM = 2.0 * math.sqrt(2.0 * math.log(2.0))

FloatArray = NDArray[np.float64]


def gauss_legendre_offsets(order: int) -> tuple[FloatArray, FloatArray]:
    """Return sub-pixel node offsets and weights for pixel integration.

    Parameters
    ----------
    order : int
        Nodes per axis; ``order**2`` nodes per pixel.

    Returns
    -------
    offsets : ndarray, shape (order**2, 2)
        (dx, dy) offsets within [-0.5, 0.5] from the pixel centre.
    weights : ndarray, shape (order**2,)
        Weights summing to 1, so the weighted sum is the pixel mean.
    """
    nodes, weights = np.polynomial.legendre.leggauss(order)
    nodes = nodes / 2.0
    weights = weights / 2.0
    gx, gy = np.meshgrid(nodes, nodes)
    wx, wy = np.meshgrid(weights, weights)
    offsets = np.column_stack([gx.ravel(), gy.ravel()])
    return offsets, (wx * wy).ravel()


def alpha_from_fwhm(fwhm: FloatArray | float, beta: FloatArray | float) -> Any:
    """Moffat scale radius alpha for a given FWHM and beta."""
    return np.asarray(fwhm) / fwhm_factor(beta)


def fwhm_factor(beta: FloatArray | float) -> Any:
    """FWHM / alpha of a Moffat profile: 2 sqrt(2^(1/beta) - 1)."""
    return 2.0 * np.sqrt(2.0 ** (1.0 / np.asarray(beta)) - 1.0)


@dataclass(frozen=True)
class MoffatShape:
    """Pixel-free shape derived from fitted Moffat parameters.

    All arrays have one value per fitted star (or one for a single fit).

    Attributes
    ----------
    fwhm : ndarray
        Mean of the major- and minor-axis FWHM (PSFEx's convention) [px].
    fwhm_major, fwhm_minor : ndarray
        FWHM along the principal axes [px].
    ellipticity : ndarray
        (A - B) / (A + B), A and B the principal-axis scales.
    theta : ndarray
        Position angle of the major axis, degrees counter-clockwise from
        +x, in (-90, 90].
    e1, e2 : ndarray
        Distortion of the second-moment matrix C = Q⁻¹:
        (C11 - C22) / (C11 + C22) and 2 C12 / (C11 + C22).
    beta : ndarray
        Moffat beta.
    flux : ndarray
        Total flux of the profile, A π / (sqrt(det Q) (beta - 1)).
    """

    fwhm: FloatArray
    fwhm_major: FloatArray
    fwhm_minor: FloatArray
    ellipticity: FloatArray
    theta: FloatArray
    e1: FloatArray
    e2: FloatArray
    beta: FloatArray
    flux: FloatArray


def shape_from_params(params: FloatArray) -> MoffatShape:
    """Convert fitted parameters (..., 7) to pixel-free shape quantities."""
    p = np.atleast_2d(params)
    q11, q12, q22 = p[:, Q11], p[:, Q12], p[:, Q22]
    beta = p[:, BETA]
    tr = q11 + q22
    det = q11 * q22 - q12**2
    disc = np.sqrt(np.maximum((q11 - q22) ** 2 / 4.0 + q12**2, 0.0))
    lam_small = tr / 2.0 - disc  # smallest eigenvalue: major axis
    lam_large = tr / 2.0 + disc
    with np.errstate(divide="ignore", invalid="ignore"):
        a_major = 1.0 / np.sqrt(lam_small)
        a_minor = 1.0 / np.sqrt(lam_large)
        factor = fwhm_factor(beta)
        fwhm_major = a_major * factor
        fwhm_minor = a_minor * factor
        ellipticity = (a_major - a_minor) / (a_major + a_minor)
        # The second-moment matrix is proportional to Q^-1.
        c11, c22, c12 = q22 / det, q11 / det, -q12 / det
        e1 = (c11 - c22) / (c11 + c22)
        e2 = 2.0 * c12 / (c11 + c22)
        theta = 0.5 * np.degrees(np.arctan2(2.0 * c12, c11 - c22))
        flux = p[:, AMP] * math.pi / (np.sqrt(det) * (beta - 1.0))
    return MoffatShape(
        fwhm=(fwhm_major + fwhm_minor) / 2.0,
        fwhm_major=fwhm_major,
        fwhm_minor=fwhm_minor,
        ellipticity=ellipticity,
        theta=theta,
        e1=e1,
        e2=e2,
        beta=beta,
        flux=flux,
    )


def params_from_shape(
    *,
    x0: FloatArray | float,
    y0: FloatArray | float,
    flux: FloatArray | float,
    fwhm: FloatArray | float,
    beta: FloatArray | float,
    ellipticity: FloatArray | float = 0.0,
    theta: FloatArray | float = 0.0,
) -> FloatArray:
    """Build fitter parameters (n, 7) from physical quantities.

    ``theta`` is in degrees; ``ellipticity`` is (A - B) / (A + B).
    """
    x0, y0, flux, fwhm, beta, ell, th = np.broadcast_arrays(
        *(np.asarray(v, dtype=float)
          for v in (x0, y0, flux, fwhm, beta, ellipticity, theta))
    )
    alpha = alpha_from_fwhm(fwhm, beta)
    a_major = alpha * (1.0 + ell)
    a_minor = alpha * (1.0 - ell)
    ct, st = np.cos(np.radians(th)), np.sin(np.radians(th))
    q11 = ct**2 / a_major**2 + st**2 / a_minor**2
    q22 = st**2 / a_major**2 + ct**2 / a_minor**2
    q12 = ct * st * (1.0 / a_major**2 - 1.0 / a_minor**2)
    amp = flux * (beta - 1.0) / (math.pi * a_major * a_minor)
    out = np.empty((*np.shape(x0), NPARAM))
    out[..., X0], out[..., Y0], out[..., AMP] = x0, y0, amp
    out[..., Q11], out[..., Q12], out[..., Q22] = q11, q12, q22
    out[..., BETA] = beta
    return np.atleast_2d(out)


def _model_and_jacobian(
    params: FloatArray,
    xs: FloatArray,
    ys: FloatArray,
    offsets: FloatArray,
    weights: FloatArray,
    want_jacobian: bool = True,
    dtype: type[np.floating[Any]] = np.float64,
) -> tuple[FloatArray, FloatArray | None]:
    """Pixel-integrated model (n, npix) and Jacobian (n, npix, 7).

    ``xs``, ``ys`` are pixel-centre coordinates, shape (npix,), shared by
    all stars (stamp coordinates); ``params`` has shape (n, 7).

    The work is done one quadrature node at a time on (star, pixel)
    arrays, accumulated in float64.  The fitter passes ``dtype=float32``
    for the node-by-node arithmetic: its relative error (~1e-7) is far
    below what a fit resolves, and it is nearly twice as fast.
    """
    f32 = dtype
    p = params.astype(f32)
    x0 = p[:, X0, None]
    y0 = p[:, Y0, None]
    amp = p[:, AMP, None]
    q11 = p[:, Q11, None]
    q12 = p[:, Q12, None]
    q22 = p[:, Q22, None]
    beta = p[:, BETA, None]
    n, npix, nk = p.shape[0], xs.size, weights.size
    model = np.zeros((n, npix))
    jac = np.zeros((n, npix, NPARAM)) if want_jacobian else None
    for k in range(nk):
        w = f32(weights[k])
        dx = (xs + offsets[k, 0]).astype(f32)[None, :] - x0  # (n, npix)
        dy = (ys + offsets[k, 1]).astype(f32)[None, :] - y0
        u = q11 * dx * dx
        u += 2.0 * q12 * dx * dy
        u += q22 * dy * dy
        u += 1.0
        lu = np.log(u)
        m = np.exp(-beta * lu)  # u^-beta
        model += w * m
        if jac is None:
            continue
        jac[..., AMP] += w * m
        bag = (w * beta * amp) * m / u  # w beta A u^(-beta-1)
        jac[..., X0] += 2.0 * bag * (q11 * dx + q12 * dy)
        jac[..., Y0] += 2.0 * bag * (q12 * dx + q22 * dy)
        jac[..., Q11] -= bag * dx * dx
        jac[..., Q12] -= 2.0 * bag * dx * dy
        jac[..., Q22] -= bag * dy * dy
        jac[..., BETA] -= (w * amp) * m * lu
    model *= params[:, AMP, None]
    return model, jac


def render(
    params: FloatArray,
    xs: FloatArray,
    ys: FloatArray,
    *,
    order: int = 4,
    fast: bool = False,
) -> FloatArray:
    """Pixel-integrated Moffat values (n, npix) at pixel centres xs, ys.

    ``fast`` does the node arithmetic in float32 (relative error ~1e-7,
    as in the fitter): for models compared with noisy pixels.
    """
    offsets, weights = gauss_legendre_offsets(order)
    model, _ = _model_and_jacobian(
        np.atleast_2d(params), xs, ys, offsets, weights, want_jacobian=False,
        dtype=np.float32 if fast else np.float64,
    )
    return model


def render_point(
    params: FloatArray, xs: FloatArray, ys: FloatArray
) -> FloatArray:
    """Moffat values (n, npix) sampled at points, not integrated."""
    zero = np.zeros((1, 2))
    model, _ = _model_and_jacobian(
        np.atleast_2d(params), xs, ys, zero, np.ones(1), want_jacobian=False
    )
    return model


@dataclass(frozen=True)
class FitResult:
    """Result of a batch Moffat fit.

    Attributes
    ----------
    params : ndarray, shape (n, 7)
        Best-fit parameters (stamp coordinates for the centre).
    chi2 : ndarray, shape (n,)
        Chi-square at the best fit.
    ndof : ndarray, shape (n,)
        Degrees of freedom (used pixels minus free parameters).
    converged : ndarray of bool, shape (n,)
        False where the loop stopped on its iteration limit or the fit
        left the valid domain.
    niter : int
        Iterations of the loop.
    variance : ndarray, shape (n, 7)
        Variance of each parameter from the inverse of the normal matrix
        at the best fit (0 for fixed parameters; scaled to the fit's
        weights, so meaningful when they are inverse variances).
    """

    params: FloatArray
    chi2: FloatArray
    ndof: FloatArray
    converged: NDArray[np.bool_]
    niter: int
    variance: FloatArray

    @property
    def reduced_chi2(self) -> FloatArray:
        """Chi-square per degree of freedom."""
        with np.errstate(divide="ignore", invalid="ignore"):
            return self.chi2 / self.ndof


def fit_moffat(
    data: FloatArray,
    invvar: FloatArray,
    xs: FloatArray,
    ys: FloatArray,
    initial: FloatArray,
    *,
    order: int = 3,
    fixed_beta: FloatArray | None = None,
    fit_shape: bool = True,
    max_iter: int = 40,
    tol: float = 1e-4,
) -> FitResult:
    """Fit pixel-integrated elliptical Moffat profiles to many stamps.

    Parameters
    ----------
    data : ndarray, shape (n, npix)
        Background-subtracted pixel values of each stamp, flattened.
    invvar : ndarray, shape (n, npix)
        Inverse variance of each pixel; 0 excludes a pixel (masked,
        neighbour, off the image).
    xs, ys : ndarray, shape (npix,)
        Pixel-centre coordinates of the stamp pixels.
    initial : ndarray, shape (n, 7)
        Starting parameters, see `params_from_shape`.
    order : int
        Gauss-Legendre nodes per axis for the pixel integration.
    fixed_beta : ndarray, shape (n,), optional
        If given, beta is held at these values.
    fit_shape : bool
        False holds the shape (Q and beta) at its initial values and fits
        only the centre and amplitude (PSF photometry).
    max_iter : int
        Iteration limit of the Levenberg-Marquardt loop.
    tol : float
        Relative chi-square change below which a star has converged
        (1e-4: ~0.03 for a 300-pixel stamp, a shift of the parameters
        far below their errors).

    Returns
    -------
    FitResult
    """
    offsets, weights = gauss_legendre_offsets(order)
    params = np.array(initial, dtype=float, copy=True)
    n = params.shape[0]
    free = np.ones(NPARAM, dtype=bool)
    if fixed_beta is not None:
        params[:, BETA] = fixed_beta
        free[BETA] = False
    if not fit_shape:
        free[[Q11, Q12, Q22, BETA]] = False
    nfree = int(free.sum())
    lam = np.full(n, 1e-3)
    model, jac = _model_and_jacobian(params, xs, ys, offsets, weights,
                                     dtype=np.float32)
    chi2 = np.sum(invvar * (data - model) ** 2, axis=1)
    active = np.ones(n, dtype=bool)
    converged = np.zeros(n, dtype=bool)
    eye = np.eye(nfree)
    niter = 0
    for niter in range(1, max_iter + 1):  # noqa: B007 - niter is reported
        idx = np.flatnonzero(active)
        if idx.size == 0:
            break
        assert jac is not None
        j = jac[idx][..., free]
        r = (data[idx] - model[idx]) * invvar[idx]
        jw = j * invvar[idx][..., None]
        jtwj = np.matmul(jw.transpose(0, 2, 1), j)
        jtwr = np.matmul(j.transpose(0, 2, 1), r[..., None])[..., 0]
        diag = np.einsum("nii->ni", jtwj)
        scale = np.where(diag > 0, diag, 1.0)
        lhs = jtwj + lam[idx, None, None] * scale[:, :, None] * eye
        try:
            step = np.linalg.solve(lhs, jtwr[..., None])[..., 0]
        except np.linalg.LinAlgError:
            step = np.stack([
                np.linalg.lstsq(a, b, rcond=None)[0]
                for a, b in zip(lhs, jtwr, strict=True)
            ])
        trial = params[idx].copy()
        trial[:, free] += step
        if free[BETA]:
            trial[:, BETA] = np.clip(trial[:, BETA], *BETA_RANGE)
        valid = (
            (trial[:, Q11] > 0)
            & (trial[:, Q22] > 0)
            & (trial[:, Q11] * trial[:, Q22] > trial[:, Q12] ** 2)
            & (trial[:, AMP] > 0)
            & np.all(np.isfinite(trial), axis=1)
        )
        # Keep invalid trials from producing NaN models: evaluate them at
        # the current parameters, they are rejected below anyway.
        trial[~valid] = params[idx][~valid]
        tmodel, tjac = _model_and_jacobian(trial, xs, ys, offsets, weights,
                                           dtype=np.float32)
        tchi2 = np.sum(invvar[idx] * (data[idx] - tmodel) ** 2, axis=1)
        better = valid & (tchi2 <= chi2[idx])
        acc = idx[better]
        rel = np.abs(chi2[acc] - tchi2[better]) / np.maximum(tchi2[better],
                                                             1e-30)
        params[acc] = trial[better]
        model[acc] = tmodel[better]
        assert tjac is not None
        jac[acc] = tjac[better]
        chi2[acc] = tchi2[better]
        lam[acc] = np.maximum(lam[acc] * 0.3, 1e-9)
        rej = idx[~better]
        lam[rej] = lam[rej] * 10.0
        done = acc[rel < tol]
        converged[done] = True
        active[done] = False
        # A rejected step that changes chi-square by less than ``tol``
        # (float32 rounding at the minimum): nothing left to gain.
        flat = ~better & valid & (np.abs(tchi2 - chi2[idx])
                                  <= tol * np.maximum(chi2[idx], 1e-30))
        converged[idx[flat]] = True
        active[idx[flat]] = False
        # A damping factor this large means no downhill step exists.
        stuck = rej[lam[rej] > 1e8]
        converged[stuck] = True
        active[stuck] = False
    npix_used = np.sum(invvar > 0, axis=1)
    ok = np.all(np.isfinite(params), axis=1) & (
        params[:, BETA] > BETA_RANGE[0])
    assert jac is not None
    j = jac[..., free]
    normal = np.matmul((j * invvar[..., None]).transpose(0, 2, 1), j)
    variance = np.zeros_like(params)
    # Inverted with unit diagonal (Jacobi scaling): the amplitude's row
    # scales as the pixels' unit, the shape's do not, and pinv's cut at
    # 1e-15 of the largest singular value would drop the shape's in
    # images whose values are ~1e-12 (beta's variance, hence the CCD's
    # beta, then depended on the unit).
    diag = np.einsum("nii->ni", normal)
    unit = np.where(diag > 0, 1.0 / np.sqrt(np.where(diag > 0, diag, 1.0)),
                    0.0)
    scale = unit[:, :, None] * unit[:, None, :]
    cov = np.linalg.pinv(normal * scale) * scale
    variance[:, free] = np.einsum("nii->ni", cov)
    return FitResult(
        params=params,
        chi2=chi2,
        ndof=(npix_used - nfree).astype(float),
        converged=converged & ok,
        niter=niter,
        variance=variance,
    )
