"""PSF stars, pixel-free FWHM and ellipticity, maps and an empirical model.

1. **Selection** (PSFEx-like): unflagged sources with S/N above
   ``psf_min_snr``, isophotal (A-B)/(A+B) below ``psf_max_ellip``, FWHM
   within ``psf_fwhm_range``, no bright neighbour, on the stellar locus of
   the half-light radius: the mode of r_h among bright sources, then a
   polynomial r_h(x, y) so that a PSF varying across the CCD keeps its
   stars, and ±``psf_locus_width`` about it.  Cosmic rays are sharper
   than the locus (smaller r_h and a larger peak-to-flux ratio),
   saturated stars and blends are flagged, galaxies are larger.
2. **Fit**: every star is fitted with an elliptical Moffat integrated
   over the pixels (`qualityfits.moffat`), so its FWHM and ellipticity
   are those of the PSF before pixel sampling.  Stars whose fit is poor
   (a cosmic ray on the star, a close blend, a galaxy core) are clipped
   on their reduced chi-square, kappa-sigma, as PSFEx does.
3. **Maps**: polynomials (degree 2 with enough stars) of FWHM and of the
   ellipticity vector over the CCD, evaluated on a grid of cells.
4. **Model**: the accepted stars, normalised and re-centred, are stacked
   on an oversampled grid (an effective PSF: the PSF convolved with the
   pixel, sampled at sub-pixel offsets); a Moffat is fitted to it as
   PSFEx fits its model (``FWHM_MOFFAT``, ``ELLIP_PSFEX``, beta), with
   the fit residual and the asymmetry.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
from numpy.typing import NDArray
from scipy.ndimage import gaussian_filter1d
from scipy.spatial import cKDTree
from scipy.special import log_ndtr

from qualityfits import moffat
from qualityfits.config import QualityConfig
from qualityfits.detection import SourceFlag, Sources, gaussian_kernel
from qualityfits.metrics import SHARED_ELONGATION

FloatArray = NDArray[np.float64]
IntArray = NDArray[np.intp]

# Flags that disqualify a PSF candidate (PSFEx rejects FLAGS & 0xfe).
REJECT_FLAGS = (SourceFlag.BLENDED | SourceFlag.SATURATED
                | SourceFlag.TRUNCATED | SourceFlag.BAD_PIXELS
                | SourceFlag.APER_CORRUPT)
# A Gaussian's peak pixel holds ~0.88 / FWHM² of its flux; anything
# sharper than the sharpest allowed PSF by this factor is not a star.
_PEAK_FRACTION = 0.88
_SHARP_MARGIN = 1.6
#: The CCD's Moffat beta is fitted on this many of the brightest stars.
BETA_STARS = 80
#: Below this first-guess FWHM (twice the locus r_h) [px], the stars'
#: pixel integrals take 3 Gauss-Legendre nodes per axis instead of 2.
#: Fitted to exact pixel integrals, 2 nodes bias beta low and the FWHM
#: by -0.2 to -0.9 % at 1.0-2.0 px and -0.03 to -0.07 % at 3 px; 3 nodes
#: by at most -0.12 % at 1.0 px and 0.01 % from 1.4 px (benchmarks/
#: README.md, "PSF at undersampling").  Larger PSFs keep 2 (the fit is
#: 2.25 times cheaper).
FINE_INTEGRATION_FWHM = 4.0
#: A star's beta at or above this is at the top of its fit range
#: (a runaway fit, or a Gaussian-like core: `measure_psf`); also the
#: highest beta the CCD is given (`ccd_beta`).
BETA_TOP = 0.9 * moffat.BETA_RANGE[1]
#: Iteration limit of the beta-free fit of the brightest stars.
BETA_FREE_ITER = 200
#: Largest radius of a PSF star's fitting stamp [px] (the stamp is 1.5
#: times the first-guess FWHM, twice the locus r_h).  At 16 a 9.5 px
#: PSF was fitted within 1.7 FWHM: its wings, which alone separate beta
#: from the FWHM, were cut, beta came out 2.67 for 3 on one CCD and the
#: FWHM -2.2 %.  24 holds 1.5 first-guess FWHM up to a 2 r_h of 16 px.
STAMP_MAX_RADIUS = 24


@dataclass(frozen=True)
class PsfStars:
    """Per-star measurements of the accepted PSF stars.

    ``index`` points into the CCD's source list; ``x``, ``y`` are the
    fitted centres (0-based); shapes are pixel-free (see
    `qualityfits.moffat.MoffatShape`).
    """

    index: IntArray
    x: FloatArray
    y: FloatArray
    flux: FloatArray
    snr: FloatArray
    r_half: FloatArray
    fwhm: FloatArray
    fwhm_major: FloatArray
    fwhm_minor: FloatArray
    ellipticity: FloatArray
    theta: FloatArray
    e1: FloatArray
    e2: FloatArray
    beta: FloatArray
    chi2: FloatArray
    elongation_iso: FloatArray

    def __len__(self) -> int:
        """Return the number of stars."""
        return int(self.x.size)


@dataclass(frozen=True)
class PsfGrid:
    """PSF maps evaluated at the centres of a grid of cells.

    ``x`` (nx,) and ``y`` (ny,) are 0-based cell centres; the maps have
    shape (ny, nx).  ``ellipticity`` and ``theta`` describe whiskers:
    (A-B)/(A+B) and the major-axis angle in degrees.
    """

    x: FloatArray
    y: FloatArray
    fwhm: FloatArray
    ellipticity: FloatArray
    theta: FloatArray
    e1: FloatArray
    e2: FloatArray
    nstars: NDArray[np.int64]


@dataclass(frozen=True)
class PsfModel:
    """Empirical PSF of a CCD and its Moffat description.

    Attributes
    ----------
    image : ndarray
        The effective PSF on an oversampled grid, normalised so that its
        sum divided by ``oversampling**2`` is 1 (it gives the fraction of
        the flux a pixel centred at that offset receives).
    oversampling : int
        Model samples per image pixel.
    fwhm : float
        FWHM of the Moffat fitted to the model as it is (the
        pixel-convolved profile; PSFEx's ``FWHM``) [px].
    fwhm_pixel_free : float
        FWHM of a pixel-integrated Moffat fitted to the model [px].
    beta : float
        Moffat beta of the pixel-convolved fit.
    ellipticity : float
        (FWHM_max - FWHM_min) / (FWHM_max + FWHM_min) of the
        pixel-convolved fit (PSFEx's ``Ellipticity``).
    residual : float
        RMS of model minus Moffat within 2 FWHM, over the model peak.
    asymmetry : float
        RMS of the part of the model odd under a 180° rotation over the
        RMS of the even part, within 2 FWHM.
    area : float
        Effective area 1 / Σφ² of the pixel-sampled PSF [px²].
    nstars : int
        Stars stacked.
    profile_scale, profile_scale_err : float
        FWHM of the pixel-free PSF over that of its Moffat description
        (`profile_scale`), and its standard error.  NaN when it cannot
        be measured, or below `PROFILE_MIN_FWHM`.
    """

    image: FloatArray
    oversampling: int
    fwhm: float
    fwhm_pixel_free: float
    beta: float
    ellipticity: float
    residual: float
    asymmetry: float
    area: float
    nstars: int
    profile_scale: float = float("nan")
    profile_scale_err: float = float("nan")


@dataclass(frozen=True)
class PsfField:
    """The pixel-free PSF anywhere on a CCD.

    Its Moffat description: polynomials in (x, y) of the Moffat's FWHM
    and of the ellipticity vector, and the CCD's Moffat beta (with its
    standard error).  ``fwhm_scale`` (with its error) is the PSF's FWHM
    over the Moffat's, from the stars' residual profile
    (`profile_scale`; 1 when not measured): `psf_fwhm_at` is the PSF's
    FWHM, `fwhm_at` and `params_at` the Moffat's.
    """

    shape: tuple[int, int]
    fwhm_coef: FloatArray
    eps1_coef: FloatArray
    eps2_coef: FloatArray
    e1_coef: FloatArray
    e2_coef: FloatArray
    beta: float
    beta_err: float = float("nan")
    fwhm_scale: float = 1.0
    fwhm_scale_err: float = 0.0

    def evaluate(self, coef: FloatArray, x: FloatArray,
                 y: FloatArray) -> FloatArray:
        """Evaluate one of the polynomials at (x, y)."""
        return _eval_coef(coef, np.ravel(x), np.ravel(y), self.shape)

    def fwhm_at(self, x: FloatArray, y: FloatArray) -> FloatArray:
        """Pixel-free FWHM of the Moffat description at (x, y) [px]."""
        return self.evaluate(self.fwhm_coef, x, y)

    def psf_fwhm_at(self, x: FloatArray, y: FloatArray) -> FloatArray:
        """Pixel-free FWHM of the PSF at (x, y) [px]."""
        return self.fwhm_scale * self.fwhm_at(x, y)

    def eps_at(self, x: FloatArray,
               y: FloatArray) -> tuple[FloatArray, FloatArray]:
        """Ellipticity vector ((A-B)/(A+B) times cos, sin of 2 theta)."""
        return (self.evaluate(self.eps1_coef, x, y),
                self.evaluate(self.eps2_coef, x, y))

    def params_at(self, x: FloatArray, y: FloatArray, *,
                  x0: FloatArray | float = 0.0,
                  y0: FloatArray | float = 0.0,
                  flux: FloatArray | float = 1.0) -> FloatArray:
        """Moffat parameters (n, 7) of the local PSF, centred at x0, y0."""
        eps1, eps2 = self.eps_at(x, y)
        ell = np.clip(np.hypot(eps1, eps2), 0.0, 0.9)
        theta = 0.5 * np.degrees(np.arctan2(eps2, eps1))
        return moffat.params_from_shape(
            x0=x0, y0=y0, flux=flux, fwhm=self.fwhm_at(x, y),
            beta=self.beta, ellipticity=ell, theta=theta,
        )

    @classmethod
    def fit(cls, stars: PsfStars, shape: tuple[int, int], beta: float,
            fwhm_coef: FloatArray, beta_err: float = float("nan"),
            ) -> PsfField:
        """Fit the ellipticity polynomials to the PSF stars.

        The FWHM polynomial comes from `compact_clip`, which levels it on
        the stars rather than on their galaxy-contaminated mean.
        """
        t2 = np.radians(2.0 * stars.theta)
        eps1, eps2, e1, e2 = (
            fit_trend(stars.x, stars.y, values, shape)
            for values in (stars.ellipticity * np.cos(t2),
                           stars.ellipticity * np.sin(t2), stars.e1,
                           stars.e2)
        )
        return cls(shape=shape, fwhm_coef=fwhm_coef, eps1_coef=eps1,
                   eps2_coef=eps2, e1_coef=e1, e2_coef=e2, beta=beta,
                   beta_err=beta_err)


@dataclass(frozen=True)
class PsfResult:
    """Everything the PSF step measured on one CCD."""

    stars: PsfStars
    grid: PsfGrid
    model: PsfModel | None
    field: PsfField | None
    locus: IntArray
    locus_r_half: float
    double_locus: bool
    shape: tuple[int, int]
    #: Without any PSF star: why the candidates were dropped, a phrase
    #: each with its count (`_rejections`).
    rejected: tuple[str, ...] = ()

    @property
    def n_candidates(self) -> int:
        """Sources on the stellar locus (PSFEx's sample)."""
        return int(self.locus.size)


# -- polynomials over the CCD ----------------------------------------------
def _poly_design(x: FloatArray, y: FloatArray, shape: tuple[int, int],
                 degree: int) -> FloatArray:
    ny, nx = shape
    u = 2.0 * np.asarray(x, dtype=float) / max(nx - 1, 1) - 1.0
    v = 2.0 * np.asarray(y, dtype=float) / max(ny - 1, 1) - 1.0
    cols = [np.ones_like(u)]
    cols.extend(u ** (total - py) * v**py
                for total in range(1, degree + 1)
                for py in range(total + 1))
    return np.column_stack(cols)


def _weighted_lstsq(design: FloatArray, values: FloatArray,
                    root_w: FloatArray) -> FloatArray:
    """Least-squares coefficients with each row weighted by ``root_w``²."""
    return np.asarray(np.linalg.lstsq(design * root_w[:, None],
                                      values * root_w, rcond=None)[0],
                      dtype=np.float64)


def poly_degree(n: int) -> int:
    """Polynomial degree the number of stars supports."""
    if n >= 40:
        return 2
    if n >= 12:
        return 1
    return 0


_DEGREE_OF = {1: 0, 3: 1, 6: 2}


def fit_trend(x: FloatArray, y: FloatArray, values: FloatArray,
              shape: tuple[int, int], *, max_degree: int = 2,
              keep: NDArray[np.bool_] | None = None,
              weights: FloatArray | None = None) -> FloatArray:
    """Fit a polynomial trend across the CCD, its degree chosen by BIC.

    Outliers are found with a clipped fit of the highest degree the
    number of points supports; degrees 0..that are then compared by the
    Bayesian information criterion on the same inliers, and the chosen
    one is refitted (least squares, weighted by ``weights`` if given).
    A quadratic is used only where the data ask for it, not because
    there are enough stars to fit one.
    """
    return _fit_trend(x, y, values, shape, max_degree=max_degree,
                      keep=keep, weights=weights)[0]


def _fit_trend(x: FloatArray, y: FloatArray, values: FloatArray,
               shape: tuple[int, int], *, max_degree: int = 2,
               keep: NDArray[np.bool_] | None = None,
               weights: FloatArray | None = None,
               ) -> tuple[FloatArray, NDArray[np.bool_]]:
    """`fit_trend`, and the mask of the values it was fitted to."""
    use = np.isfinite(values) if keep is None else keep & np.isfinite(
        values)
    top = min(max_degree, poly_degree(int(use.sum())))
    if top == 0:
        level = float(np.median(values[use])) if use.any() else np.nan
        return np.array([level]), use
    _, inliers = robust_polyfit(x[use], y[use], values[use], shape, top)
    fitted = np.zeros_like(use)
    fitted[np.flatnonzero(use)[inliers]] = True
    xs, ys, vs = x[fitted], y[fitted], values[fitted]
    root_w = (np.ones(vs.size) if weights is None
              else np.sqrt(weights[fitted]))
    n = vs.size
    best, best_bic = np.array([np.median(vs)]), np.inf
    for degree in range(top + 1):
        design = _poly_design(xs, ys, shape, degree)
        coef = _weighted_lstsq(design, vs, root_w)
        rss = float(np.sum((root_w * (vs - design @ coef)) ** 2))
        bic = n * np.log(max(rss, 1e-300) / n) + coef.size * np.log(n)
        if bic < best_bic:
            best, best_bic = coef, bic
    return best, fitted


def robust_polyfit(
    x: FloatArray, y: FloatArray, values: FloatArray,
    shape: tuple[int, int], degree: int, *, kappa: float = 3.0,
    niter: int = 5,
) -> tuple[FloatArray, NDArray[np.bool_]]:
    """Least-squares polynomial in (x, y) with kappa-sigma clipping.

    Returns the coefficients and the mask of points kept.
    """
    keep = np.isfinite(values)
    design = _poly_design(x, y, shape, degree)
    coef = np.zeros(design.shape[1])
    for _ in range(niter):
        if keep.sum() < design.shape[1]:
            break
        coef = np.asarray(
            np.linalg.lstsq(design[keep], values[keep], rcond=None)[0],
            dtype=np.float64)
        resid = values - design @ coef
        sigma = 1.4826 * np.median(np.abs(resid[keep]))
        if not sigma > 0:
            break
        new = np.isfinite(values) & (np.abs(resid) <= kappa * sigma)
        if np.array_equal(new, keep):
            break
        keep = new
    return coef, keep


# -- selection ---------------------------------------------------------------
def _shorth_mode(values: FloatArray) -> float:
    """Estimate a mode as PSFEx does for the stellar locus.

    The midpoint of the narrowest interval holding a quarter of the
    values: the r_h locus among many galaxies (`_locus_mode`), and the
    centre of `compact_clip`'s clipping.  Not the published FWHM level,
    which it made jump between groups of stars (`fwhm_level`).
    """
    v = np.sort(values)
    n = v.size
    w = n // 4 if n >= 16 else 1
    if n < 2:
        return float(v[0])
    widths = v[w:] - v[:-w]
    i = int(np.argmin(widths))
    return float(0.5 * (v[i] + v[i + w]))


#: Tukey biweight tuning constant of `fwhm_level`, in sigmas of the
#: stars' ratios measured on their sharp side: ratios farther than this
#: from the level get no weight.  3 rather than the textbook 4.685 (95 %
#: efficiency for a Gaussian): a compact galaxy left among the stars 2-3
#: sigma broader weighs little (`benchmarks/README.md`).
LEVEL_TUNING = 3.0


def _biweight_location(sample: FloatArray, *, niter: int = 100,
                       ) -> FloatArray:
    """Tukey's biweight location of each row of ``sample``.

    Iteratively reweighted means started at the row's median.  The scale
    is that of the sharp side, (median - first quartile) / 0.6745, which
    galaxies (broader) do not reach; a constant row is its median.  The
    weights fall smoothly to 0 at `LEVEL_TUNING` scales and the quartiles
    interpolate, so the result moves continuously with the values: no
    small change of one value can carry it from one group of values to
    another, as it did the midpoint of the narrowest window (the shorth).
    """
    m = np.median(sample, axis=1)
    c = LEVEL_TUNING * (m - np.percentile(sample, 25, axis=1)) / 0.6745
    live = c > 0
    c = np.where(live, c, 1.0)
    for _ in range(niter):
        u = (sample - m[:, None]) / c[:, None]
        w = np.clip(1.0 - u**2, 0.0, None) ** 2
        total = w.sum(axis=1)
        ok = live & (total > 0)
        new = np.where(ok, (w * sample).sum(axis=1)
                       / np.where(ok, total, 1.0), m)
        done = bool(np.all(np.abs(new - m) <= 1e-12 * np.abs(m)))
        m = new
        if done:
            break
    return np.asarray(m, dtype=np.float64)


def fwhm_level(ratios: FloatArray) -> float:
    """Level of the FWHM field: the location of the stars' FWHM/field.

    Tukey's biweight location (`_biweight_location`) of the finite
    ratios, their median below 3.  Galaxies left among the stars are
    broader (one-sided): they do not set its scale, the farthest get no
    weight, and the median it starts from moves by at most half a star
    per galaxy.  It is meant for the stars the clips kept (a minority of
    galaxies): where galaxies are nearly half the sources, only a mode
    finds the stars, and the clips are centred on one (`compact_clip`).
    It replaced the shorth mode (midpoint of the narrowest quarter) as
    the published level, which on a field whose stars spread in loose
    groups (ntt_emmi_R_galaxies, 1.71-2.35 px) jumped from one group to
    another (-9 %) between two runs.  NaN without a finite ratio.
    """
    r = np.asarray(ratios, dtype=np.float64)
    r = r[np.isfinite(r)]
    if r.size == 0:
        return float("nan")
    if r.size < 3:
        return float(np.median(r))
    return float(_biweight_location(r[None, :])[0])


def fwhm_weight(snr: FloatArray) -> FloatArray:
    """Weight of each star's FWHM in the trends: its precision.

    The inverse of its noise FWHM_NOISE/SNR squared, with a 1 % floor
    (the stars' own scatter): faint galaxies, the ones the clipping
    cannot tell, weigh least.
    """
    return np.asarray(1.0 / ((FWHM_NOISE / np.maximum(snr, 1.0)) ** 2
                             + 0.01**2), dtype=np.float64)


def fwhm_error(x: FloatArray, y: FloatArray, fwhm: FloatArray,
               snr: FloatArray, shape: tuple[int, int], *,
               n_boot: int = 200) -> float:
    """Relative standard error of FWHM_PIX, the FWHM field at the stars.

    The field through the PSF stars is their `fit_trend` (weighted by
    `fwhm_weight`) levelled by `fwhm_level`, and FWHM_PIX its median at
    them.  The error is the standard deviation of that estimate over
    ``n_boot`` bootstrap samples (seeded by the number of stars: the same
    stars give the same error) that keep the stars where they are and
    give each the FWHM/field ratio and weight of a star drawn at random
    (with its clipped-or-not status): each sample refits the trend (of
    the full sample's degree) and its level, so the trend's uncertainty
    counts (on the NTT frame, whose PSF changes by 28 % across the
    field: 0.028 px, the level alone 0.026).  Resampling the positions
    too would add the spread of the stars' median place on the field
    (0.050 px there), which is not a measurement error.  NaN below 2
    stars.
    """
    good = np.flatnonzero(np.isfinite(fwhm) & (fwhm > 0))
    n = good.size
    if n < 2:
        return float("nan")
    x, y, fwhm, snr = x[good], y[good], fwhm[good], snr[good]
    weight = fwhm_weight(snr)
    coef, fitted = _fit_trend(x, y, fwhm, shape, weights=weight)
    design = _poly_design(x, y, shape, _DEGREE_OF[coef.size])
    field = design @ coef
    ratio = fwhm / field
    value = float(np.median(field) * fwhm_level(ratio))
    rng = np.random.default_rng(n)
    idx = rng.integers(0, n, (n_boot, n))
    sample = field * ratio[idx]
    if coef.size == 1:
        # A constant trend: the level (scale-equivariant) is all.
        boot = (np.median(sample, axis=1) if n < 3
                else _biweight_location(sample))
        return float(np.std(boot, ddof=1) / value)
    w = np.where(fitted, weight, 0.0)[idx]
    normal = np.einsum("bn,ni,nj->bij", w, design, design)
    rhs = np.einsum("bn,ni,bn->bi", w, design, sample)
    trend = np.einsum("bi,ni->bn", np.einsum(
        "bij,bj->bi", np.linalg.pinv(normal), rhs), design)
    ok = np.all(trend > 0, axis=1)
    trend, sample = trend[ok], sample[ok]
    level = _biweight_location(sample / trend)
    boot = np.median(trend * level[:, None], axis=1)
    return float(np.std(boot, ddof=1) / value)


def _log_histogram(r: FloatArray, bin_dex: float) -> tuple[
        NDArray[np.int64], FloatArray, FloatArray]:
    """Histogram log10 r_h in ``bin_dex`` bins, and smooth it.

    The smoothing is a Gaussian of two bins.
    """
    logr = np.log10(r)
    lo, hi = float(logr.min()) - 0.05, float(logr.max()) + 0.05
    nbins = max(10, int((hi - lo) / bin_dex))
    hist, edges = np.histogram(logr, bins=nbins, range=(lo, hi))
    return hist, edges, gaussian_filter1d(hist.astype(float), 2.0)


def _local_maxima(values: FloatArray) -> IntArray:
    """Find the local maxima (a plateau counts at its first bin)."""
    return np.flatnonzero(
        (values > np.concatenate([[-1.0], values[:-1]]))
        & (values >= np.concatenate([values[1:], [-1.0]]))
    )


def _compact_peak(r: FloatArray) -> float:
    """Find the most compact populated peak of the r_h histogram.

    The smallest-r_h peak of the smoothed log r_h histogram at least a
    third as high as the tallest (NaN for fewer than 20 sources).
    """
    if r.size < 20:
        return float("nan")
    # Smoothed over 0.01 dex, the star locus (~2 % wide) stays a peak of
    # its own beside the broader pile of compact galaxies.
    _, edges, smooth = _log_histogram(r, 0.005)
    peaks = _local_maxima(smooth)
    strong = peaks[smooth[peaks] >= float(smooth[peaks].max()) / 3.0]
    best = int(strong.min())
    return float(10 ** (0.5 * (edges[best] + edges[best + 1])))


def _double_locus(r: FloatArray, mode: float) -> bool:
    """Tell whether a second locus of comparable weight lies beside it.

    A doubled PSF: two exposures, lost guiding.  Only a populated locus
    can tell.
    """
    if r.size < 20:
        return False
    _, edges, smooth = _log_histogram(r, 0.01)
    centres = 0.5 * (edges[1:] + edges[:-1])
    peaks = _local_maxima(smooth)
    at_mode = float(smooth[np.argmin(np.abs(centres - np.log10(mode)))])
    far = np.abs(centres[peaks] - np.log10(mode)) > 0.08
    return bool(np.any(smooth[peaks[far]] >= 0.5 * at_mode))


#: Largest PSF size change across a CCD the locus tilt search considers
#: (in ln r_h from the CCD centre to an edge), its step, and the width of
#: the window it gathers the stars in (ln r_h; the locus is ~2 % wide).
_TILT_MAX, _TILT_STEP, _TILT_WINDOW = 0.12, 0.01, 0.04

#: Fewest stars in the locus's lower edge for `select_candidates` to act
#: on them: from fewer, among a hundred candidates, the best of the
#: searched planes is as likely noise, or a PSF that no plane describes
#: (ntt_emmi_R_galaxies: 17 of 119 candidates, a PSF sharpest at the
#: centre).
MIN_SEEDS = 30


def _edge_peak(values: FloatArray, width: float) -> tuple[int, float]:
    """Find the locus as the sharpest rise of the sorted values.

    Over every interval ``width`` wide, the count it holds minus the count
    in the interval just below it; the best contrast and the interval's
    centre.  The stars are the lower edge of the r_h distribution
    (galaxies are only ever larger), so their locus has nearly nothing
    below it, where a pile of galaxies has the stars.
    """
    v = np.sort(values)
    start = np.arange(v.size)
    inside = np.searchsorted(v, v + width, side="right") - start
    below = start - np.searchsorted(v, v - width, side="left")
    contrast = inside - below
    i = int(np.argmax(contrast))
    return int(contrast[i]), float(0.5 * (v[i] + v[i + inside[i] - 1]))


def _centred(x: FloatArray, y: FloatArray,
             shape: tuple[int, int]) -> tuple[FloatArray, FloatArray]:
    """Express positions in CCD widths and heights from its centre."""
    ny, nx = shape
    return x / max(nx - 1, 1) - 0.5, y / max(ny - 1, 1) - 0.5


def _best_tilt(logr: FloatArray, u: FloatArray, v: FloatArray,
               a_values: FloatArray, b_values: FloatArray, best: int,
               tilt: tuple[float, float]) -> tuple[int, tuple[float, float]]:
    """Search planes (a, b) for a sharper `_edge_peak` than ``best``."""
    for a in a_values:
        for b in b_values:
            contrast = _edge_peak(logr - a * u - b * v, _TILT_WINDOW)[0]
            if contrast > best:
                best, tilt = contrast, (float(a), float(b))
    return best, tilt


def locus_tilt(x: FloatArray, y: FloatArray, r: FloatArray,
               shape: tuple[int, int],
               ) -> tuple[tuple[float, float], NDArray[np.bool_]]:
    """Find how the stars' r_h changes across the CCD.

    A PSF varying across the CCD spreads the stars' half-light radii:
    where unsaturated stars are few and compact galaxies many, the spread
    locus no longer stands out and PSFEx's rule picks the galaxies.  The
    stars gather again into a narrow lower edge of the r_h distribution
    once r_h is divided by the right plane: the plane (slopes of ln r_h
    across the CCD's width and height, searched on a grid) giving the
    sharpest `_edge_peak`, refined as the plane through the sources of
    that peak.  Returns the slopes ((0, 0) for fewer than 30 sources) and
    which sources make the peak.
    """
    members = np.zeros(r.size, bool)
    if r.size < 30:
        return (0.0, 0.0), members
    u, v = _centred(x, y, shape)
    logr = np.log(r)
    best, tilt = _edge_peak(logr, _TILT_WINDOW)[0], (0.0, 0.0)
    # A coarse grid, then a fine one around its best.
    coarse = 4 * _TILT_STEP
    slopes = np.arange(-_TILT_MAX, _TILT_MAX + 1e-9, coarse) * 2.0
    best, tilt = _best_tilt(logr, u, v, slopes, slopes, best, tilt)
    fine = np.arange(-coarse, coarse + 1e-9, _TILT_STEP) * 2.0
    best, tilt = _best_tilt(logr, u, v, tilt[0] + fine, tilt[1] + fine,
                            best, tilt)
    # The grid's best is noisy by a step or two: refine it as the plane
    # through the sources of the peak (the stars).
    design = np.column_stack([np.ones_like(u), u, v])
    coef = np.array([0.0, *tilt])
    for _ in range(5):
        resid = logr - design[:, 1:] @ coef[1:]
        centre = _edge_peak(resid, _TILT_WINDOW)[1]
        near = np.abs(resid - centre) <= 0.5 * _TILT_WINDOW
        if near.sum() < 10:
            break
        members = near
        new = np.linalg.lstsq(design[members], logr[members], rcond=None)[0]
        done = np.allclose(new[1:], coef[1:], atol=1e-4)
        coef = new
        if done:
            break
    return (float(coef[1]), float(coef[2])), members


def tilt_factor(x: FloatArray, y: FloatArray, tilt: tuple[float, float],
                shape: tuple[int, int]) -> FloatArray:
    """Evaluate the r_h factor of a `locus_tilt` (1 at the CCD centre)."""
    u, v = _centred(x, y, shape)
    return np.asarray(np.exp(tilt[0] * u + tilt[1] * v), dtype=np.float64)


def filtered_significance(
    data_sub: NDArray[np.float32], src: Sources, idx: IntArray,
    fwhm: float,
) -> FloatArray:
    """Measure the significance SExtractor's detection would see.

    The third-highest pixel, within 2 px of each source's centre, of the
    image filtered with a normalised 7x7 Gaussian of ``fwhm`` pixels, in
    units of the local sky noise: a source with value above T would be
    detected at T sigma with DETECT_MINAREA 3 by SExtractor.
    """
    half = 3
    kernel = gaussian_kernel(fwhm, 2 * half + 1)
    ix = np.round(src.x[idx]).astype(np.intp)
    iy = np.round(src.y[idx]).astype(np.intp)
    cut, inside = stamps(data_sub, ix, iy, 2 + half)
    cut = np.where(inside, cut, 0.0).reshape(idx.size, 11, 11)
    windows = np.lib.stride_tricks.sliding_window_view(cut, (7, 7),
                                                       axis=(1, 2))
    filtered = np.einsum("nijkl,kl->nij", windows, kernel)
    third = np.sort(filtered.reshape(idx.size, -1), axis=1)[:, -3]
    return np.asarray(third / src.noise[idx], dtype=np.float64)


@dataclass(frozen=True)
class Locus:
    """The stellar locus of one CCD and the PSF candidates.

    Attributes
    ----------
    index : ndarray
        The locus by PSFEx's rule (indices into the sources): NSTAR_PSF,
        FWHM_RH and ELONG are measured on it.
    mode : float
        Mode of r_h of the locus [px] (NaN when there is none).
    double : bool
        A second locus was seen (``DOUBLE_PSF``).
    fit : ndarray
        The candidates to fit: the locus, and the stars a PSF varying
        across the CCD moved out of PSFEx's window.
    seeds : ndarray
        Candidates making the locus's sharp lower edge (`locus_tilt`):
        nearly all stars, whatever the galaxies around them.
    """

    index: IntArray
    mode: float
    double: bool
    fit: IntArray
    seeds: IntArray


def _locus_mode(r: FloatArray, low: float) -> float:
    """Find the mode of the stellar locus in r_h, as PSFEx does.

    The shorth mode; but stars are the most compact populated locus, and
    where compact galaxies outnumber the unsaturated stars the densest
    interval falls on the galaxies: a significant peak below the window
    is then the stars.
    """
    mode = _shorth_mode(r)
    compact = _compact_peak(r)
    return compact if compact < low * mode else mode


def _candidate_rules(src: Sources, config: QualityConfig
                     ) -> tuple[dict[str, NDArray[np.bool_]], complex]:
    """Return the rules a PSF candidate passes in turn, each cumulative.

    ``bright``: S/N >= ``psf_min_snr``; ``unflagged``: none of
    `REJECT_FLAGS`, and a half-light radius; ``round``: isophotal
    ellipticity <= ``psf_max_ellip`` -- from the elongation the unflagged
    bright sources share (`common_elongation`, also returned) when it
    exceeds half that (an elongated PSF: PSFEx's window about a round
    shape loses its stars: at ellipticity 0.5 it kept 4-12 of ~60 on
    1024^2 simulations, and the PSF was withheld), else from round;
    ``sized``: 2 r_h within
    ``psf_fwhm_range``; ``blunt``: its peak holds no more of its flux
    than the sharpest allowed PSF's (`select_candidates` then asks for a
    significant peak).  `no_candidate_reason` says which one emptied the
    list.
    """
    lo, hi = config.psf_fwhm_range
    with np.errstate(divide="ignore", invalid="ignore"):
        iso_ell = (src.a - src.b) / (src.a + src.b)
        sharp = src.peak / src.flux
    rules = {"bright": src.snr >= config.psf_min_snr}
    rules["unflagged"] = (rules["bright"] & ((src.flags & REJECT_FLAGS) == 0)
                          & np.isfinite(src.r_half))
    common = common_elongation(src, rules["unflagged"])
    if abs(common) > SHARED_ELONGATION * config.psf_max_ellip:
        # An elongated PSF (trailed, shaken, astigmatic): the window is
        # centred on the shape the bright sources share.
        off = np.abs(iso_ell * np.exp(2j * src.theta) - common)
    else:
        off = iso_ell
    rules["round"] = rules["unflagged"] & (off <= config.psf_max_ellip)
    rules["sized"] = rules["round"] & (2 * src.r_half >= lo) & (
        2 * src.r_half <= hi)
    rules["blunt"] = rules["sized"] & np.isfinite(sharp) & (
        sharp <= _SHARP_MARGIN * _PEAK_FRACTION / lo**2)
    return rules, common


def common_elongation(src: Sources, among: NDArray[np.bool_]) -> complex:
    """Return the elongation the sources ``among`` share, as e exp(2i theta).

    The median of each component of their isophotal ellipticity vectors:
    galaxies point every way and cancel, an elongated PSF's stars point
    one way.  0 for fewer than 3 sources.
    """
    idx = np.flatnonzero(among)
    if idx.size < 3:
        return 0j
    a, b = src.a[idx], src.b[idx]
    vec = (a - b) / (a + b) * np.exp(2j * src.theta[idx])
    return complex(float(np.median(vec.real)), float(np.median(vec.imag)))


def _bright_round(src: Sources, config: QualityConfig) -> NDArray[np.bool_]:
    """Unflagged, round sources of S/N >= ``psf_min_snr`` with an r_h.

    What a PSF candidate must be before its size and sharpness are
    looked at (`select_candidates`, `undersampled_size`).
    """
    return _candidate_rules(src, config)[0]["round"]


def shared_elongation(src: Sources, config: QualityConfig) -> complex:
    """Return the elongation the bright unflagged sources share.

    `common_elongation` of the sources passing the ``unflagged`` rule of
    `_candidate_rules` (ELLIP_SOURCES is its length).
    """
    return _candidate_rules(src, config)[1]


def elongation_note(common: complex, config: QualityConfig) -> str:
    """Say that the bright sources share an elongation, if they do.

    Where ``common`` (`shared_elongation`) exceeds `SHARED_ELONGATION`
    times ``psf_max_ellip``: its size and direction, and that the PSF
    stars were chosen about that shape (`_candidate_rules`).  Empty
    otherwise.
    """
    if abs(common) <= SHARED_ELONGATION * config.psf_max_ellip:
        return ""
    angle = math.degrees(np.angle(common)) / 2.0
    return (f"the bright sources share an elongation of {abs(common):.2f} "
            f"(isophotal) along {angle:.0f} deg from the x axis: trailed "
            "or shaken stars, or the optics; the PSF candidates are the "
            "sources of that shape")


#: Mean resultant length of the position angles (doubled) above which
#: elongated sources are aligned: trailed, not a mix of shapes.
ALIGNED = 0.9

_FLAG_WORDS = ((SourceFlag.SATURATED, "saturated"),
               (SourceFlag.BLENDED, "blended"),
               (SourceFlag.TRUNCATED, "on the border"),
               (SourceFlag.BAD_PIXELS, "on bad pixels"),
               (SourceFlag.APER_CORRUPT, "unmeasurable"))


def _all_flagged(src: Sources, bright: IntArray) -> str:
    words = [f"{int(np.count_nonzero(src.flags[bright] & flag))} {word}"
             for flag, word in _FLAG_WORDS
             if np.any(src.flags[bright] & flag)]
    verb = "is" if bright.size == 1 else "are all"
    return f" {verb} flagged ({', '.join(words)})"


def _all_elongated(src: Sources, usable: IntArray,
                   config: QualityConfig) -> str:
    a, b = src.a[usable], src.b[usable]
    mean = complex(np.mean(np.exp(2j * src.theta[usable])))
    shape = (f": {usable.size} unflagged, all elongated (median ellipticity "
             f"{float(np.median((a - b) / (a + b))):.2f} > psf_max_ellip "
             f"{config.psf_max_ellip:g}")
    if usable.size >= 3 and abs(mean) >= ALIGNED:
        angle = math.degrees(np.angle(mean)) / 2.0
        return (f"{shape}, all along {angle:.0f} deg from the x axis): "
                "trailed stars (a moving target tracked, or the guiding "
                "lost)")
    return f"{shape}, in various directions)"


def _all_missized(src: Sources, round_: IntArray,
                  config: QualityConfig) -> str:
    lo, hi = config.psf_fwhm_range
    size = float(np.median(2.0 * src.r_half[round_]))
    where = (f"below {lo:g} px: undersampled" if size < lo
             else f"above {hi:g} px: defocused or blurred")
    return (f": {round_.size} round and unflagged, with 2 r_h {size:.2f} "
            f"px, {where} (psf_fwhm_range)")


def no_candidate_reason(src: Sources, config: QualityConfig) -> str:
    """Say which candidate rule left a CCD without a PSF candidate.

    The first rule of `_candidate_rules` that no source passes, with
    what the sources it stopped are: the brightest S/N when none is
    bright enough, the flags of the bright ones, the ellipticity and
    orientation of elongated ones (aligned: trailed stars), their size
    against ``psf_fwhm_range``; when those rules are passed, that the
    peaks were not significant enough.  Empty without any source.
    """
    rules, _ = _candidate_rules(src, config)
    if len(src) == 0:
        return ""
    if not rules["bright"].any():
        snr = np.nan_to_num(src.snr)
        best = float(snr.max()) if snr.size else 0.0
        return (f"none has S/N >= {config.psf_min_snr:g} (psf_min_snr; "
                f"the brightest {best:.1f})")
    n = int(rules["bright"].sum())
    some = (f"the {n} source{'s' if n > 1 else ''} of S/N >= "
            f"{config.psf_min_snr:g}")
    if not rules["unflagged"].any():
        why = _all_flagged(src, np.flatnonzero(rules["bright"]))
    elif not rules["round"].any():
        why = _all_elongated(src, np.flatnonzero(rules["unflagged"]), config)
    elif not rules["sized"].any():
        why = _all_missized(src, np.flatnonzero(rules["round"]), config)
    elif not rules["blunt"].any():
        why = (": the round ones are sharper than any PSF (cosmic rays or "
               "hot pixels)")
    else:
        n_blunt = int(rules["blunt"].sum())
        why = (f": {n_blunt} round, unflagged and of a PSF's size, whose "
               f"peak stands less than {config.psf_min_snr:g} sigma above "
               "the sky (psf_min_snr), or which is not detected at "
               f"{config.psf_detect_thresh:g} sigma in the filtered image "
               "(psf_detect_thresh)")
    return some + why


def select_candidates(
    src: Sources, config: QualityConfig,
    data_sub: NDArray[np.float32] | None = None,
    shape: tuple[int, int] | None = None,
) -> Locus:
    """Select the stellar locus and the PSF candidates.

    The locus follows PSFEx's rules: its mode is that of the half-light
    radii of sources whose peak stands ``psf_min_snr`` sigma above the
    sky (a star has a higher peak than a galaxy of the same flux), found
    as the midpoint of the narrowest interval holding a quarter of them;
    candidates lie within [mode / (1+v)^(1/3), mode (1+v)^(2/3)], v being
    ``psf_locus_width`` (-6 %, +13 % for 0.2: galaxies only ever widen
    the locus on the large side).  Two departures, both where PSFEx's
    rule demonstrably loses the stars (`Locus` holds the details):

    * a peak of the r_h histogram below the window is the stars, not the
      denser pile of compact galaxies above it (`_locus_mode`);
    * the stars found as the sharp lower edge of r_h across the CCD
      (`locus_tilt`) are fitted even where a varying PSF moved them out
      of the window; when most of them are out, the window itself
      follows their trend.
    """
    if shape is None:
        shape = src.segmap.shape
    with np.errstate(divide="ignore", invalid="ignore"):
        sharp = src.peak / src.flux
        peak_snr = src.peak / src.noise
    idx = np.flatnonzero(_candidate_rules(src, config)[0]["blunt"])
    if data_sub is not None and idx.size:
        sig = filtered_significance(data_sub, src, idx,
                                    config.psf_detect_filter_fwhm)
        idx = idx[sig >= config.psf_detect_thresh]
    peaked = idx[peak_snr[idx] >= config.psf_min_snr]
    none = np.zeros(0, np.intp)
    if peaked.size == 0:
        return Locus(none, float("nan"), double=False, fit=none, seeds=none)
    low = (1.0 + config.psf_locus_width) ** (-1.0 / 3.0)
    high = (1.0 + config.psf_locus_width) ** (2.0 / 3.0)

    def window(rel: FloatArray, mode: float) -> IntArray:
        ratio = rel[idx] / mode
        inside = idx[(ratio >= low) & (ratio <= high)]
        if inside.size:
            # Sharper than the locus: cosmic rays and hot pixels.
            med_sharp = np.median(sharp[inside])
            inside = inside[sharp[inside] <= _SHARP_MARGIN * med_sharp]
        return inside

    mode = _locus_mode(src.r_half[peaked], low)
    locus = window(src.r_half, mode)
    double = _double_locus(src.r_half[peaked], mode)
    # The stars themselves: the sharp lower edge of r_h once divided by
    # their trend across the CCD.
    tilt, members = locus_tilt(src.x[peaked], src.y[peaked],
                               src.r_half[peaked], shape)
    seeds = peaked[members]
    if seeds.size < MIN_SEEDS:
        return Locus(locus, mode, double=double, fit=locus, seeds=none)
    rel = src.r_half / tilt_factor(src.x, src.y, tilt, shape)
    tilted_mode = _locus_mode(rel[peaked], low)
    tilted = window(rel, tilted_mode)
    if np.isin(seeds, locus).mean() < 0.5:
        # PSFEx's window has lost most of the stars: a PSF varying across
        # the CCD, and compact galaxies outnumbering the unsaturated
        # stars.  The window follows the stars' trend instead.
        return Locus(tilted, tilted_mode,
                     double=_double_locus(rel[peaked], tilted_mode),
                     fit=tilted, seeds=np.intersect1d(seeds, tilted))
    # PSFEx's window holds most stars; those a varying PSF moved out of it
    # are fitted too.
    fit = np.union1d(locus, tilted)
    return Locus(locus, mode, double=double, fit=fit,
                 seeds=np.intersect1d(seeds, fit))


def _isolated(src: Sources, idx: IntArray, radius: float) -> IntArray:
    """Candidates with no source brighter than 10 % of them nearby."""
    if idx.size == 0 or len(src) < 2:
        return idx
    tree = cKDTree(np.column_stack([src.x, src.y]))
    keep = []
    for i, near in zip(idx, tree.query_ball_point(
            np.column_stack([src.x[idx], src.y[idx]]), radius), strict=True):
        others = [j for j in near if j != i]
        if not others or np.all(src.flux[others] < 0.1 * src.flux[i]):
            keep.append(i)
    return np.asarray(keep, dtype=np.intp)


def _spread_pick(src: Sources, idx: IntArray, shape: tuple[int, int],
                 nmax: int, cells: tuple[int, int]) -> IntArray:
    """Keep at most ``nmax`` candidates, spread over the CCD.

    The brightest of each grid cell in turn, so that the whole CCD keeps
    its stars.
    """
    if idx.size <= nmax:
        return idx
    ny, nx = shape
    gy, gx = cells
    cx = np.minimum((src.x[idx] / nx * gx).astype(int), gx - 1)
    cy = np.minimum((src.y[idx] / ny * gy).astype(int), gy - 1)
    cell = cy * gx + cx
    order = np.argsort(-src.snr[idx], kind="stable")
    rank = np.empty(idx.size, dtype=np.intp)
    for c in np.unique(cell):
        members = order[cell[order] == c]
        rank[members] = np.arange(members.size)
    chosen = np.lexsort((-src.snr[idx], rank))[:nmax]
    return np.sort(idx[chosen])


def grid_cells(shape: tuple[int, int], short: int) -> tuple[int, int]:
    """(ny, nx) cells: ``short`` along the short side, square-ish cells."""
    ny, nx = shape
    if nx <= ny:
        return max(1, round(short * ny / nx)), short
    return short, max(1, round(short * nx / ny))


# -- stamps and fits ----------------------------------------------------------
def stamp_index(shape: tuple[int, int], ix: IntArray, iy: IntArray,
                radius: int) -> tuple[IntArray, NDArray[np.bool_]]:
    """Flat indices of square stamps (n, (2R+1)²) around integer centres.

    Also returns which stamp pixels fall inside the image (the others
    index the nearest edge pixel).
    """
    ny, nx = shape
    off = np.arange(-radius, radius + 1)
    yy = iy[:, None, None] + off[None, :, None]
    xx = ix[:, None, None] + off[None, None, :]
    inside = ((yy >= 0) & (yy < ny)) & ((xx >= 0) & (xx < nx))
    flat = np.clip(yy, 0, ny - 1) * nx + np.clip(xx, 0, nx - 1)
    return flat.reshape(ix.size, -1), inside.reshape(ix.size, -1)


def stamp_grid(radius: int) -> tuple[FloatArray, FloatArray]:
    """Pixel-centre offsets (x, y) of a stamp's pixels, flattened.

    In the order of `stamp_index` (rows of y, then x), about the centre.
    """
    off = np.arange(-radius, radius + 1, dtype=np.float64)
    oy, ox = np.meshgrid(off, off, indexing="ij")
    return ox.ravel(), oy.ravel()


def stamps(
    image: NDArray[Any], ix: IntArray, iy: IntArray, radius: int,
) -> tuple[FloatArray, NDArray[np.bool_]]:
    """Cut square stamps (n, (2R+1)²) around integer centres.

    Also returns the mask of the pixels that fall inside the image.
    ``image`` must be C-contiguous.
    """
    flat, inside = stamp_index(image.shape, ix, iy, radius)
    return np.ravel(image).take(flat).astype(np.float64), inside


def source_stamps(
    data_sub: NDArray[np.float32], bad: NDArray[np.bool_],
    segmap: NDArray[np.int32], idx: IntArray, ix: IntArray, iy: IntArray,
    radius: int,
) -> tuple[FloatArray, NDArray[np.bool_]]:
    """Cut stamps of sources ``idx`` and the mask of their usable pixels.

    Usable: inside the image, not bad, and not in another source's
    segment.  The images must be C-contiguous.
    """
    flat, inside = stamp_index(data_sub.shape, ix, iy, radius)
    seg = np.ravel(segmap).take(flat)
    usable = (inside & ~np.ravel(bad).take(flat)
              & ((seg == 0) | (seg == (idx + 1)[:, None])))
    return np.ravel(data_sub).take(flat).astype(np.float64), usable


def fit_stars(
    data_sub: NDArray[np.float32],
    bad: NDArray[np.bool_],
    src: Sources,
    idx: IntArray,
    fwhm_guess: float,
    *,
    gain: float | None,
    beta: float | None = None,
    start: FloatArray | None = None,
) -> tuple[moffat.FitResult, FloatArray, FloatArray, FloatArray,
           NDArray[np.bool_]]:
    """Fit pixel-integrated Moffat profiles to the candidates.

    ``beta`` holds beta fixed; ``start`` gives starting parameters (in
    the stamp frame of the rounded source centres).  With beta free the
    loop may take `BETA_FREE_ITER` iterations: a Gaussian-like core
    (a Gaussian, an Airy disc) sends beta up a flat valley to the top of
    its range in 60-100 iterations, and a fit stopped at 40 was counted
    as not converged, which left the CCD's beta to one or two stars or
    to the 3 assumed (an Airy PSF's FWHM came out -19 %, not -8 %).
    Returns the fit, the
    image coordinates of the fitted centres, the reduced chi-square with
    the model's own Poisson variance, and which stars have a cosmic ray
    on them (`residual_spikes`).
    """
    radius = int(np.clip(np.ceil(1.5 * fwhm_guess), 4, STAMP_MAX_RADIUS))
    ix = np.round(src.x[idx]).astype(np.intp)
    iy = np.round(src.y[idx]).astype(np.intp)
    data, usable = source_stamps(data_sub, bad, src.segmap, idx, ix, iy,
                                 radius)
    # Weights from the background noise alone (at the source: the RMS
    # map is smooth on the scale of a stamp): data-based Poisson
    # weights would bias the fit (upward fluctuations weigh less).
    sky_var = (src.noise[idx] ** 2)[:, None]
    invvar = np.where(usable, 1.0 / sky_var, 0.0)
    xs, ys = stamp_grid(radius)
    with np.errstate(divide="ignore", invalid="ignore"):
        iso_ell = (src.a[idx] - src.b[idx]) / (src.a[idx] + src.b[idx])
    initial = moffat.params_from_shape(
        x0=src.x[idx] - ix, y0=src.y[idx] - iy,
        flux=np.maximum(src.flux[idx], 1.0),
        fwhm=fwhm_guess, beta=3.0 if beta is None else beta,
        ellipticity=np.clip(np.nan_to_num(iso_ell), 0.0, 0.3),
        theta=np.degrees(src.theta[idx]),
    )
    if start is not None:
        usable_start = np.all(np.isfinite(start), axis=1)
        initial[usable_start] = start[usable_start]
    fixed = None if beta is None else np.full(idx.size, beta)
    order = 3 if fwhm_guess < FINE_INTEGRATION_FWHM else 2
    fit = moffat.fit_moffat(data, invvar, xs, ys, initial, order=order,
                            fixed_beta=fixed,
                            max_iter=40 if beta is not None
                            else BETA_FREE_ITER)
    model = moffat.render(fit.params, xs, ys, order=order, fast=True)
    var = sky_var + (np.maximum(model, 0.0) / gain if gain else 0.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        chi2 = np.sum(np.where(usable, (data - model) ** 2 / var, 0.0),
                      axis=1) / fit.ndof
    spiked = residual_spikes(data, model, var, usable, radius)
    return (fit, ix + fit.params[:, moffat.X0],
            iy + fit.params[:, moffat.Y0], chi2, spiked)


#: Relative accuracy granted to the Moffat model of a bright star when
#: looking for cosmic rays in its residuals (PSFEx's PSF_ACCURACY).
MODEL_ACCURACY = 0.02


def residual_spikes(data: FloatArray, model: FloatArray, var: FloatArray,
                    usable: NDArray[np.bool_], radius: int,
                    threshold: float = 5.0) -> NDArray[np.bool_]:
    """Stars with a cosmic ray on them.

    The residual of a star's fit, in units of its noise (with a
    MODEL_ACCURACY allowance for PSF-model mismatch), is smooth where the
    Moffat misses the PSF; a cosmic ray is a spike: a pixel more than
    ``threshold`` sigma above the fit and above the mean of its eight
    neighbours by as much.
    """
    size = 2 * radius + 1
    with np.errstate(divide="ignore", invalid="ignore"):
        norm = (data - model) / np.sqrt(var + (MODEL_ACCURACY * model) ** 2)
    norm = np.where(usable, norm, 0.0).reshape(-1, size, size)
    padded = np.pad(norm, ((0, 0), (1, 1), (1, 1)))
    neighbours = sum(
        padded[:, 1 + dy:1 + dy + size, 1 + dx:1 + dx + size]
        for dy in (-1, 0, 1) for dx in (-1, 0, 1) if (dy, dx) != (0, 0)
    ) / 8.0
    spike = (norm > threshold) & (norm - neighbours > threshold)
    return np.asarray(spike.reshape(norm.shape[0], -1).any(axis=1))


def misfit_clip(chi2: FloatArray, ndof: FloatArray, snr: FloatArray,
                keep: NDArray[np.bool_], kappa: float) -> NDArray[np.bool_]:
    """Clip stars whose fit is worse than the noise and the PSF allow.

    A Moffat is never a perfect PSF: the mismatch adds about c·(S/N)² to
    the chi-square of every star, c being the same for all, so the
    brightest stars have the largest chi-square and must not be clipped
    for it.  The expected chi-square is ndof + c·(S/N)² (c measured on
    the brighter half of the stars); a star is rejected when its excess
    over it is more than ``kappa`` times its scatter (noise, and half the
    mismatch term).  A cosmic ray or a neighbour on a star stands out.
    """
    total = chi2 * ndof
    snr2 = np.maximum(snr, 1.0) ** 2
    for _ in range(4):
        if keep.sum() < 3:
            break
        bright = keep & (snr >= np.median(snr[keep]))
        c = max(float(np.median((total[bright] - ndof[bright])
                                / snr2[bright])), 0.0)
        expected = c * snr2
        z = (total - ndof - expected) / np.sqrt(2.0 * ndof
                                                + (0.5 * expected) ** 2)
        new = keep & (z <= kappa)
        if np.array_equal(new, keep):
            break
        keep = new
    return keep



#: Relative FWHM error of a star's pixel-free fit, times its AUTO S/N
#: (measured on simulated stars: 0.6-1.3; the larger value is kept).
FWHM_NOISE = 1.5


def compact_clip(x: FloatArray, y: FloatArray, fwhm: FloatArray,
                 snr: FloatArray, keep: NDArray[np.bool_],
                 shape: tuple[int, int], kappa: float = 2.5,
                 seed: NDArray[np.bool_] | None = None,
                 ) -> tuple[NDArray[np.bool_], FloatArray]:
    """Reject sources broader than the stars: compact galaxies, blends.

    Contamination is one-sided (galaxies are only ever broader than the
    PSF).  The FWHM's trend across the CCD is fitted to the sources kept
    so far and levelled on the densest part of the ratios to it (their
    shorth mode, which the stars make, not the galaxies); the width is
    measured on the compact side: each source's noise FWHM_NOISE/SNR plus
    the stars' intrinsic scatter.  Sources more than ``kappa`` sigma
    broader (or 2 kappa sharper) are dropped and the trend refitted,
    until nothing changes.  Compact galaxies as sharp as the noise allows
    remain; the trend returned is levelled on the sources kept by
    `fwhm_level` (a biweight location: it moves continuously with them,
    where the shorth can jump between loose groups of stars).
    Given ``seed`` (sources known to be stars: `Locus.seeds`), at least
    `MIN_SEEDS` of them kept, the first trend is theirs instead of the
    peeled one: where galaxies are a third or more of the sources,
    peeling can settle between the two populations.

    Returns
    -------
    keep : ndarray of bool
        The sources kept.
    coef : ndarray
        The levelled FWHM trend (polynomial coefficients).
    """
    noise = FWHM_NOISE / np.maximum(snr, 1.0)
    weight = fwhm_weight(snr)
    base = keep.copy()

    def trend_and_sigma(kept: NDArray[np.bool_], *,
                        peeling: bool = False, final: bool = False,
                        ) -> tuple[FloatArray, FloatArray, FloatArray]:
        if peeling:
            # A plane while peeling: a contaminated sample can make BIC
            # prefer a constant, which hides a real gradient in the
            # "scatter" and the galaxies with it.
            degree = min(1, poly_degree(int(kept.sum())))
            coef = _weighted_lstsq(
                _poly_design(x[kept], y[kept], shape, degree), fwhm[kept],
                np.sqrt(weight[kept]))
        else:
            coef = fit_trend(x, y, fwhm, shape, keep=kept, weights=weight)
        # The clipping is centred on the mode (the shorth), which the
        # stars make even where galaxies are nearly half the sources (a
        # biweight started at their median kept 20 galaxies among 44
        # sources on a 6 px CCD where the mode keeps 12 among 37); the
        # field returned is levelled on the stars kept (`fwhm_level`).
        ratio = fwhm[kept] / _eval_coef(coef, x[kept], y[kept], shape)
        coef = coef * (fwhm_level(ratio) if final else _shorth_mode(ratio))
        rel = fwhm / _eval_coef(coef, x, y, shape) - 1.0
        low = kept & (rel < 0)
        intrinsic2 = 0.0
        if low.sum() >= 3:
            intrinsic2 = max(float(np.mean(rel[low] ** 2)
                                   - np.mean(noise[low] ** 2)), 0.0)
        return coef, rel, np.sqrt(noise**2 + intrinsic2)

    if keep.sum() < 3:
        level = float(np.median(fwhm[keep])) if keep.any() else np.nan
        return keep, np.array([level])
    seeded = seed is not None and int((seed & keep).sum()) >= MIN_SEEDS
    if seeded:
        assert seed is not None
        keep = keep & seed
    # Peel the broadest sources off a few at a time: galaxies clustered
    # in one part of the CCD tilt the first trend and hide among the
    # stars; removing only the worst lets the trend straighten.
    for _ in range(0 if seeded else 40):
        coef, rel, sigma = trend_and_sigma(keep, peeling=True)
        z = rel / sigma
        over = np.flatnonzero(keep & (z > kappa))
        if over.size == 0 or keep.sum() - over.size < 3:
            break
        worst = over[np.argsort(-z[over])[:max(1, over.size // 4)]]
        keep = keep.copy()
        keep[worst] = False
    # Then re-admit every candidate the clean trend accepts.
    for _ in range(3 if seeded else 1):
        coef, rel, sigma = trend_and_sigma(keep)
        readmitted = (base & (rel <= kappa * sigma)
                      & (rel >= -2 * kappa * sigma))
        if readmitted.sum() < 3 or np.array_equal(readmitted, keep):
            break
        keep = readmitted
    coef, _, _ = trend_and_sigma(keep, final=True)
    return keep, coef


#: Smallest intrinsic relative FWHM scatter of the stars allowed to the
#: mixture (numerical: keeps the stars' Gaussian from collapsing).
_MIN_SCATTER = 0.01


def _sharp_side_scatter2(rel: FloatArray, noise: FloatArray) -> float:
    """Square of the stars' intrinsic relative FWHM scatter.

    Measured on the sharp side of the trend, which galaxies do not
    reach (on both sides, the posterior-weighted estimate shrinks as
    the broader stars are handed to the galaxies, which hands over more).
    """
    low = rel < 0
    if low.sum() < 3:
        return _MIN_SCATTER**2
    return max(float(np.mean(rel[low] ** 2 - noise[low] ** 2)),
               _MIN_SCATTER**2)


def _mixture_em(fwhm: FloatArray, noise: FloatArray, design: FloatArray,
                coef: FloatArray, niter: int = 50,
                ) -> tuple[FloatArray, FloatArray, float]:
    """Fit the stars-plus-galaxies mixture of `mixture_clip` by EM.

    Returns the FWHM trend's coefficients, each source's probability of
    being a star, and the log-likelihood.
    """
    trend = design @ coef
    rel = fwhm / trend - 1.0
    s2 = 0.01**2
    excess = rel[rel > 0]
    tau = max(float(np.mean(excess)) if excess.size else 0.0, 0.01)
    frac = 0.5
    loglike = -np.inf
    prob = np.ones(fwhm.size)
    for _ in range(niter):
        var = noise**2 + s2
        sd = np.sqrt(var)
        log_star = (np.log(frac) - 0.5 * rel**2 / var
                    - 0.5 * np.log(2.0 * np.pi * var))
        # A point source broadened by an exponential excess (the
        # exponentially modified Gaussian): one-sided contamination.
        log_gal = (np.log1p(-frac) - np.log(tau) + 0.5 * var / tau**2
                   - rel / tau + log_ndtr(rel / sd - sd / tau))
        top = np.maximum(log_star, log_gal)
        total = top + np.log(np.exp(log_star - top)
                             + np.exp(log_gal - top))
        new_like = float(np.sum(total))
        prob = np.exp(log_star - total)
        if abs(new_like - loglike) < 1e-6 * max(abs(new_like), 1.0):
            loglike = new_like
            break
        loglike = new_like
        # M-step.  The trend: least squares on the stars' relative
        # residuals; the stars' intrinsic scatter; the galaxies' mean
        # excess; the star fraction.
        new_coef = _weighted_lstsq(design, fwhm,
                                   np.sqrt(prob / (var * trend**2)))
        if not np.all(design @ new_coef > 0):
            break
        coef = new_coef
        trend = design @ coef
        rel = fwhm / trend - 1.0
        s2 = _sharp_side_scatter2(rel, noise)
        g_sum = float(np.sum(1.0 - prob))
        if g_sum > 1e-6:
            tau = max(float(np.sum((1.0 - prob) * rel) / g_sum),
                      float(np.sqrt(np.median(noise**2) + s2)))
        frac = float(np.clip(prob.mean(), 0.01, 0.999))
    return coef, prob, loglike


def _single_fit(fwhm: FloatArray, noise: FloatArray, design: FloatArray,
                coef: FloatArray, niter: int = 20) -> float:
    """Log-likelihood of the sources as stars only (no galaxies).

    The trend and the stars' intrinsic scatter (both sides) fitted to
    all of them: the alternative `mixture_clip` must beat.
    """
    s2 = _MIN_SCATTER**2
    for _ in range(niter):
        trend = design @ coef
        rel = fwhm / trend - 1.0
        s2 = max(float(np.mean(rel**2 - noise**2)), _MIN_SCATTER**2)
        new_coef = _weighted_lstsq(
            design, fwhm, 1.0 / (np.sqrt(noise**2 + s2) * trend))
        if not np.all(design @ new_coef > 0):
            break
        coef = new_coef
    rel = fwhm / (design @ coef) - 1.0
    var = noise**2 + s2
    return float(np.sum(-0.5 * rel**2 / var
                        - 0.5 * np.log(2.0 * np.pi * var)))


def mixture_clip(x: FloatArray, y: FloatArray, fwhm: FloatArray,
                 snr: FloatArray, keep: NDArray[np.bool_],
                 shape: tuple[int, int], coef: FloatArray,
                 kappa: float = 2.5,
                 ) -> tuple[NDArray[np.bool_], FloatArray] | None:
    """Separate stars from compact galaxies on their fitted FWHM.

    Where the PSF is large, galaxies of r_e 1-3 px are only a few per
    cent broader than it: they fall in the r_h locus and fit a Moffat
    well, and when they are as many as the stars, `compact_clip`'s
    trend can settle between the two populations (or tilt through
    them) and clip bright stars instead.  The ratio of each source's
    FWHM to the trend is modelled as a mixture: stars, Gaussian about 1
    (their noise ``FWHM_NOISE/SNR`` and an intrinsic scatter), and
    galaxies, the same broadened by an exponential excess (one-sided).
    The trend (degree 0-2, chosen by BIC, started from ``coef``), the
    scatter, the excess scale and the star fraction are fitted by
    expectation-maximisation; sources more likely galaxies than stars
    are dropped, as are those sharper than ``2 kappa`` sigma.

    The mixture is used only where it describes the sources better (by
    the Bayesian information criterion) than stars alone do, with their
    trend and scatter: a PSF varying across the CCD more than a plane
    describes is not contamination.

    Returns
    -------
    (keep, coef) or None
        The sources kept and the stars' FWHM trend (polynomial
        coefficients); None where there is no one-sided population to
        separate, it finds no galaxy, or too few sources to tell.
    """
    use = np.flatnonzero(keep)
    if use.size < 8:
        return None
    noise = FWHM_NOISE / np.maximum(snr[use], 1.0)
    start = _eval_coef(coef, x[use], y[use], shape)
    best: tuple[float, FloatArray, FloatArray] | None = None
    single = np.inf
    for degree in range(3 if use.size >= 20 else 2):
        design = _poly_design(x[use], y[use], shape, degree)
        init = np.asarray(np.linalg.lstsq(design, start, rcond=None)[0],
                          dtype=np.float64)
        # Stars only: the trend and the scatter.
        single = min(single, -2.0 * _single_fit(fwhm[use], noise, design,
                                                init)
                     + (init.size + 1) * np.log(use.size))
        fitted, prob, loglike = _mixture_em(fwhm[use], noise, design, init)
        # Parameters: the trend, the scatter, the excess, the fraction.
        bic = -2.0 * loglike + (fitted.size + 3) * np.log(use.size)
        if np.isfinite(bic) and (best is None or bic < best[0]):
            best = (bic, fitted, prob)
    if best is None or not best[0] < single:
        # No sign of a one-sided population: nothing to separate.
        return None
    _, fitted, prob = best
    rel = fwhm[use] / _eval_coef(fitted, x[use], y[use], shape) - 1.0
    s2 = _sharp_side_scatter2(rel, noise)
    sharp = rel < -2.0 * kappa * np.sqrt(noise**2 + s2)
    star = (prob >= 0.5) & ~sharp
    if star.sum() < 3 or star.all():
        return None
    out = np.zeros_like(keep)
    out[use[star]] = True
    # The field through the stars as `compact_clip` makes it (degree by
    # BIC up to what their number supports, levelled by `fwhm_level`):
    # the mixture's own trend may be a quadratic through a few
    # dozen stars, whose value at the CCD centre (the PSF model's) a
    # few stars at the edges decide.
    field = fit_trend(x, y, fwhm, shape, keep=out,
                      weights=fwhm_weight(snr))
    field = field * fwhm_level(
        fwhm[out] / _eval_coef(field, x[out], y[out], shape))
    return out, field


def _eval_coef(coef: FloatArray, x: FloatArray, y: FloatArray,
               shape: tuple[int, int]) -> FloatArray:
    design = _poly_design(x, y, shape, _DEGREE_OF[coef.size])
    return np.asarray(design @ coef, dtype=np.float64)


def ccd_beta(fit: moffat.FitResult,
             good: NDArray[np.bool_]) -> tuple[float, float]:
    """Estimate the Moffat beta of the CCD, and its standard error.

    The inverse-variance weighted, clipped mean of the stars' beta (the
    bright stars, which constrain it, dominate).  Its error is that of
    a weighted mean, scaled up by the robust scatter of the pulls when
    the stars disagree by more than their own errors; NaN when no star
    constrains beta (3 is then assumed).
    """
    beta = fit.params[:, moffat.BETA]
    var = fit.variance[:, moffat.BETA]
    use = good & np.isfinite(var) & (var > 0)
    if use.sum() == 0:
        return 3.0, float("nan")
    keep = use.copy()
    for _ in range(5):
        w = 1.0 / var[keep]
        mean = float(np.sum(w * beta[keep]) / np.sum(w))
        pull = (beta - mean) / np.sqrt(var)
        sig = 1.4826 * float(np.median(np.abs(pull[keep])))
        new = use & (np.abs(pull) <= 4.0 * max(sig, 1.0))
        if new.sum() == 0 or np.array_equal(new, keep):
            break
        keep = new
    err = max(sig, 1.0) / float(np.sqrt(np.sum(w)))
    return float(np.clip(mean, moffat.BETA_RANGE[0] + 0.1, BETA_TOP)), err


#: The beta that stands for the Gaussian limit of the Moffat family:
#: its FWHM is that of the Gaussian of the same core within ~0.1 %
#: (the bias of a Moffat fitted to a Gaussian falls as 1/beta: -1.7 % at
#: 22.5), and the fitter's float32 arithmetic still resolves it.
GAUSSIAN_BETA = 500.0
#: `scan_beta`'s betas, from the top of the free fits' range to the
#: Gaussian limit, about evenly spaced in 1/beta's logarithm.
BETA_SCAN = (BETA_TOP, 45.0, 90.0, 180.0, GAUSSIAN_BETA)


def at_beta(params: FloatArray, beta: float) -> FloatArray:
    """Move parameters to another beta, keeping FWHM, shape and peak."""
    out = np.array(params, dtype=float, copy=True)
    ratio = (moffat.fwhm_factor(beta)
             / moffat.fwhm_factor(out[:, moffat.BETA])) ** 2
    out[:, moffat.Q11:moffat.Q22 + 1] *= ratio[:, None]
    out[:, moffat.BETA] = beta
    return out


def scan_beta(
    data_sub: NDArray[np.float32],
    bad: NDArray[np.bool_],
    src: Sources,
    idx: IntArray,
    fwhm_guess: float,
    *,
    gain: float | None,
    params: FloatArray,
) -> tuple[float, float]:
    """Find the CCD's beta beyond the free fits' range, and its error.

    Called when the brightest stars' betas run to the top of their
    range: the PSF's core is Gaussian-like, and the best Moffat of
    beta 22.5 reads a Gaussian's FWHM 1.7 % low.  The stars ``idx``
    (first-fit parameters ``params``) are fitted at each beta of
    `BETA_SCAN`, beta held; their summed chi-square is minimised in
    1/beta, by a parabola through the best point and its neighbours
    (1/beta is the natural variable: the Gaussian is at 0).  The error
    is where the chi-square rises by one, NaN at the Gaussian end.
    """
    chi2 = []
    converged = np.ones(idx.size, dtype=bool)
    for beta in BETA_SCAN:
        fit = fit_stars(data_sub, bad, src, idx, fwhm_guess, gain=gain,
                        beta=beta, start=at_beta(params, beta))[0]
        chi2.append(fit.chi2)
        converged &= fit.converged & np.isfinite(fit.chi2)
    if not converged.any():
        return BETA_TOP, float("nan")
    total = np.array([c[converged].sum() for c in chi2])
    u = 1.0 / np.asarray(BETA_SCAN)
    k = int(np.argmin(total))
    if k in (0, len(u) - 1):
        return BETA_SCAN[k], float("nan")
    # The parabola through the three points around the minimum.
    a, b, _ = np.polyfit(u[k - 1:k + 2], total[k - 1:k + 2], 2)
    if not a > 0:
        return BETA_SCAN[k], float("nan")
    best = float(np.clip(-b / (2.0 * a), u[-1], u[0]))
    return 1.0 / best, float(1.0 / np.sqrt(a) / best**2)


def undersampled_size(src: Sources, config: QualityConfig) -> float | None:
    """Tell whether the bright point sources are below the size range.

    Returns twice the median half-light radius of the unflagged, round
    sources at S/N >= ``psf_min_snr`` whose 2 r_h lies between 0.6 and
    1 times ``psf_fwhm_range``'s lower limit, when there are at least
    ``few_psf_stars`` of them and more than within the range: the PSF
    is undersampled below the limit.  None otherwise.  There a Moffat
    fit is not honest: with the limit lowered to 1.5 px, a 1.2 px Gaussian
    PSF reads 10 % low and 1.4-1.6 px Airy discs 26-29 %
    (`benchmarks/README.md`), so the PSF is withheld, and this says why.
    """
    lo, hi = config.psf_fwhm_range
    size = 2.0 * src.r_half
    bright = _bright_round(src, config)
    below = bright & (size >= 0.6 * lo) & (size < lo)
    within = bright & (size >= lo) & (size <= hi)
    n_below = int(below.sum())
    if n_below < config.few_psf_stars or n_below <= int(within.sum()):
        return None
    return float(np.median(size[below]))


def measure_psf(
    data_sub: NDArray[np.float32],
    bad: NDArray[np.bool_],
    src: Sources,
    *,
    gain: float | None,
    config: QualityConfig,
) -> PsfResult:
    """Select, fit and map the PSF stars of one CCD; build its model.

    Returns a `PsfResult` whose ``stars`` may be empty (no star found);
    the caller decides whether that is an error.
    """
    shape = data_sub.shape
    cells = grid_cells(shape, config.psf_grid_cells)
    found = select_candidates(src, config, data_sub, shape)
    locus, mode, double, seeds = (found.index, found.mode, found.double,
                                  found.seeds)
    fwhm_guess = 2.0 * mode if np.isfinite(mode) else 4.0
    idx = _isolated(src, found.fit, 2.0 * fwhm_guess)
    idx = _spread_pick(src, idx, shape, config.psf_max_stars, cells)
    empty = _empty_result(shape, cells, locus, mode, double)
    if idx.size == 0:
        if found.fit.size:
            near = (f"{found.fit.size} with a neighbour brighter than a "
                    f"tenth of it within {2.0 * fwhm_guess:.0f} px")
            return replace(empty, rejected=(near,))
        return empty
    # psf_fwhm_range applies to 2 r_h (as PSFEx's SAMPLE_FWHMRANGE); the
    # pixel-free FWHM of an undersampled PSF is legitimately below it.
    lo, hi = 0.5 * config.psf_fwhm_range[0], config.psf_fwhm_range[1]
    # First fit, beta free, on the brightest candidates (they alone
    # constrain it) of the compact half of the locus: galaxies only widen
    # it on the large side, and where bright stars are saturated, compact
    # galaxies can be most of the brightest sources.
    compact = idx[np.isin(idx, seeds)]
    if compact.size < BETA_STARS // 2:
        compact = idx[src.r_half[idx] <= mode]
    pool = compact if compact.size >= BETA_STARS // 2 else idx
    first = np.sort(pool[np.argsort(-src.snr[pool])[:BETA_STARS]])
    fit, xfit, yfit, chi2, spiked = fit_stars(
        data_sub, bad, src, first, fwhm_guess, gain=gain,
    )
    shp = moffat.shape_from_params(fit.params)
    shift = np.hypot(xfit - src.x[first], yfit - src.y[first])
    # A beta at the top of its range is a runaway fit, unless most stars
    # have one: then the PSF's core is Gaussian-like, and they are it.
    top = shp.beta >= BETA_TOP
    gaussian_like = bool(fit.converged.any()) and bool(
        np.median(shp.beta[fit.converged]) >= BETA_TOP)
    good = (
        fit.converged & np.isfinite(chi2) & np.isfinite(shp.fwhm)
        & (shp.fwhm >= lo) & (shp.fwhm <= hi) & (shift <= 1.5)
        & (shp.flux > 0) & (~top | gaussian_like)
        & ~spiked
    )
    good, _ = compact_clip(xfit, yfit, shp.fwhm, src.snr[first], good,
                           shape, seed=np.isin(first, seeds))
    beta, beta_err = ccd_beta(fit, good)
    if beta >= BETA_TOP and good.sum() >= BETA_STARS // 4:
        beta, beta_err = scan_beta(data_sub, bad, src, first[good],
                                   fwhm_guess, gain=gain,
                                   params=fit.params[good])
    start = np.full((idx.size, moffat.NPARAM), np.nan)
    if good.any():
        # The others start from the PSF of the first fit (its median
        # shape at the CCD's beta): only centre and flux have far to go.
        first_params = at_beta(fit.params[good], beta)
        q = np.median(first_params[:, [moffat.Q11, moffat.Q12,
                                       moffat.Q22]], axis=0)
        det = q[0] * q[2] - q[1] ** 2
        if det > 0:
            start[:, moffat.X0] = src.x[idx] - np.round(src.x[idx])
            start[:, moffat.Y0] = src.y[idx] - np.round(src.y[idx])
            start[:, moffat.AMP] = (np.maximum(src.flux[idx], 1.0)
                                    * (beta - 1.0) * np.sqrt(det) / np.pi)
            start[:, moffat.Q11:moffat.Q22 + 1] = q
            start[:, moffat.BETA] = beta
        start[np.searchsorted(idx, first[good])] = first_params
    # Second fit, beta fixed, all candidates: per-star FWHM and shape
    # without the FWHM-beta degeneracy of a single star (strong when
    # undersampled).
    fit, xfit, yfit, chi2, spiked = fit_stars(
        data_sub, bad, src, idx, fwhm_guess, gain=gain, beta=beta,
        start=start,
    )
    shp = moffat.shape_from_params(fit.params)
    shift = np.hypot(xfit - src.x[idx], yfit - src.y[idx])
    tests = {
        "fitted": (fit.converged & np.isfinite(chi2)
                   & np.isfinite(shp.fwhm) & (shp.flux > 0)),
        "sized": (shp.fwhm >= lo) & (shp.fwhm <= hi),
        "centred": shift <= 1.5,
        "smooth": ~spiked,
    }
    keep = np.logical_and.reduce(list(tests.values()))
    keep = misfit_clip(chi2, fit.ndof, src.snr[idx], keep,
                       config.psf_chi2_clip)
    clipped, fwhm_coef = compact_clip(xfit, yfit, shp.fwhm, src.snr[idx],
                                      keep, shape,
                                      seed=np.isin(idx, seeds))
    mixed = mixture_clip(xfit, yfit, shp.fwhm, src.snr[idx], keep, shape,
                         fwhm_coef)
    keep, fwhm_coef = (clipped, fwhm_coef) if mixed is None else mixed
    sel = np.flatnonzero(keep)
    if sel.size == 0:
        return replace(empty, rejected=_rejections(tests))
    stars = PsfStars(
        index=idx[sel],
        x=xfit[sel], y=yfit[sel],
        flux=shp.flux[sel], snr=src.snr[idx[sel]],
        r_half=src.r_half[idx[sel]],
        fwhm=shp.fwhm[sel], fwhm_major=shp.fwhm_major[sel],
        fwhm_minor=shp.fwhm_minor[sel], ellipticity=shp.ellipticity[sel],
        theta=shp.theta[sel], e1=shp.e1[sel], e2=shp.e2[sel],
        beta=shp.beta[sel], chi2=chi2[sel],
        elongation_iso=src.a[idx[sel]] / src.b[idx[sel]],
    )
    field = PsfField.fit(stars, shape, beta, fwhm_coef, beta_err)
    model = build_model(data_sub, bad, src, stars, fit.params[sel], field,
                        config=config)
    if model is not None and np.isfinite(model.profile_scale):
        # What the Moffat misses of the profile's core, in every FWHM
        # published; the Moffat description itself stays.
        scale = model.profile_scale
        field = replace(field, fwhm_scale=scale,
                        fwhm_scale_err=model.profile_scale_err)
        stars = replace(stars, fwhm=scale * stars.fwhm,
                        fwhm_major=scale * stars.fwhm_major,
                        fwhm_minor=scale * stars.fwhm_minor)
    grid = _grid(field, stars, cells)
    return PsfResult(
        stars=stars, grid=grid, model=model, field=field, locus=locus,
        locus_r_half=mode, double_locus=double, shape=shape,
    )


#: What each test of the second PSF fit (`measure_psf`) says of the
#: candidates it drops.
_REJECTED_BY = {
    "fitted": "whose Moffat fit failed",
    "sized": "with a fitted FWHM outside psf_fwhm_range",
    "centred": ("whose fit moved more than 1.5 px (a blend, or a "
                "distorted star)"),
    "smooth": ("with a spike in the fit's residual (a cosmic ray on it, "
               "or a second peak: doubled stars)"),
}


def _rejections(tests: dict[str, NDArray[np.bool_]]) -> tuple[str, ...]:
    """Why fitted candidates were dropped, for a CCD left without stars.

    ``tests`` are the second fit's tests, in order (`_REJECTED_BY`);
    each candidate counts under the first it fails.  Those passing all
    were dropped by the clipping (the fit's chi-square, the FWHM
    field).
    """
    left = np.ones(next(iter(tests.values())).shape, bool)
    out = []
    for name, passed in tests.items():
        n = int(np.count_nonzero(left & ~passed))
        if n:
            out.append(f"{n} {_REJECTED_BY[name]}")
        left &= passed
    n = int(np.count_nonzero(left))
    if n:
        out.append(f"{n} clipped as outliers (the fit's chi-square, or "
                   "the FWHM field)")
    return tuple(out)


def _empty_result(shape: tuple[int, int], cells: tuple[int, int],
                  locus: IntArray, mode: float, double: bool) -> PsfResult:
    empty_f = np.zeros(0)
    stars = PsfStars(
        index=np.zeros(0, np.intp), x=empty_f, y=empty_f, flux=empty_f,
        snr=empty_f, r_half=empty_f, fwhm=empty_f, fwhm_major=empty_f,
        fwhm_minor=empty_f, ellipticity=empty_f, theta=empty_f,
        e1=empty_f, e2=empty_f, beta=empty_f, chi2=empty_f,
        elongation_iso=empty_f,
    )
    gy, gx = cells
    nan = np.full(cells, np.nan)
    grid = PsfGrid(
        x=(np.arange(gx) + 0.5) * shape[1] / gx - 0.5,
        y=(np.arange(gy) + 0.5) * shape[0] / gy - 0.5,
        fwhm=nan, ellipticity=nan, theta=nan, e1=nan, e2=nan,
        nstars=np.zeros(cells, np.int64),
    )
    return PsfResult(
        stars=stars, grid=grid, model=None, field=None, locus=locus,
        locus_r_half=mode, double_locus=double, shape=shape,
    )


def _grid(field: PsfField, stars: PsfStars,
          cells: tuple[int, int]) -> PsfGrid:
    """Evaluate the PSF field on the centres of the cell grid."""
    gy, gx = cells
    ny, nx = field.shape
    cx = (np.arange(gx) + 0.5) * nx / gx - 0.5
    cy = (np.arange(gy) + 0.5) * ny / gy - 0.5
    mx, my = np.meshgrid(cx, cy)
    eps1, eps2 = field.eps_at(mx, my)
    sx = np.minimum((stars.x / nx * gx).astype(int), gx - 1)
    sy = np.minimum((stars.y / ny * gy).astype(int), gy - 1)
    counts = np.zeros(cells, np.int64)
    np.add.at(counts, (sy, sx), 1)
    return PsfGrid(
        x=cx, y=cy, fwhm=field.psf_fwhm_at(mx, my).reshape(cells),
        ellipticity=np.hypot(eps1, eps2).reshape(cells),
        theta=0.5 * np.degrees(np.arctan2(eps2, eps1)).reshape(cells),
        e1=field.evaluate(field.e1_coef, mx, my).reshape(cells),
        e2=field.evaluate(field.e2_coef, mx, my).reshape(cells),
        nstars=counts,
    )


# -- empirical model ---------------------------------------------------------
def model_oversampling(fwhm: float, config: QualityConfig) -> int:
    """Choose the model's samples per pixel: ~4 per FWHM, at least 2."""
    if config.psf_model_oversampling:
        return config.psf_model_oversampling
    return int(np.clip(np.ceil(8.0 / fwhm), 2, 4))


def build_model(
    data_sub: NDArray[np.float32],
    bad: NDArray[np.bool_],
    src: Sources,
    stars: PsfStars,
    params: FloatArray,
    field: PsfField,
    *,
    config: QualityConfig,
) -> PsfModel | None:
    """Build the oversampled effective PSF of the CCD from its stars.

    The model is the field's pixel-free Moffat at the centre of the CCD,
    integrated over a pixel at each oversampled offset, plus the mean of
    the stars' residuals from their own Moffat fits, stacked on the same
    oversampled grid (nearest node, 3-sigma clipped).  Stacking only the
    residuals keeps the model sharp where direct stacking of few,
    undersampled stars would blur and alias it; what the Moffat misses
    (a non-Moffat core, wings, asymmetry) is in the residual part.
    """
    fwhm = float(np.median(stars.fwhm))
    osamp = model_oversampling(fwhm, config)
    radius = int(np.clip(np.ceil(2.5 * fwhm), 5, 24))
    ix = np.round(stars.x).astype(np.intp)
    iy = np.round(stars.y).astype(np.intp)
    data, usable = source_stamps(data_sub, bad, src.segmap, stars.index,
                                 ix, iy, radius)
    xs, ys = stamp_grid(radius)
    # Each star's own fitted model on this stamp, and its residual.
    placed = params.copy()
    placed[:, moffat.X0] = stars.x - ix
    placed[:, moffat.Y0] = stars.y - iy
    own_model = moffat.render(placed, xs, ys, order=3)
    resid = (data - own_model) / stars.flux[:, None]
    dx = xs[None, :] - (stars.x - ix)[:, None]
    dy = ys[None, :] - (stars.y - iy)[:, None]
    # Nearest oversampled node of each sample; the grid spans ±radius.
    half = radius * osamp
    size = 2 * half + 1
    gx = np.round(dx * osamp).astype(np.intp) + half
    gy = np.round(dy * osamp).astype(np.intp) + half
    ok = usable & (gx >= 0) & (gx < size) & (gy >= 0) & (gy < size)
    node = (gy * size + gx)[ok]
    vals = resid[ok]
    # Per-node 3-sigma clipped mean of the residuals.
    cnt = np.bincount(node, minlength=size * size).astype(float)
    s1 = np.bincount(node, vals, minlength=size * size)
    s2 = np.bincount(node, vals * vals, minlength=size * size)
    with np.errstate(divide="ignore", invalid="ignore"):
        mean = s1 / cnt
        sig = np.sqrt(np.maximum(s2 / cnt - mean**2, 0.0))
        good = np.abs(vals - mean[node]) <= 3.0 * sig[node] + 1e-30
        cnt = np.bincount(node[good], minlength=size * size).astype(float)
        s1 = np.bincount(node[good], vals[good], minlength=size * size)
        s2 = np.bincount(node[good], vals[good] ** 2,
                         minlength=size * size)
        mean = np.where(cnt > 0, s1 / cnt, 0.0)
        var = np.where(cnt > 1, (s2 / cnt - mean**2) / (cnt - 1), np.nan)
    nodes = (np.arange(size) - half) / osamp
    ngx, ngy = np.meshgrid(nodes, nodes)
    xs, ys = ngx.ravel(), ngy.ravel()
    ny, nx = field.shape
    centre = field.params_at(np.array([(nx - 1) / 2]),
                             np.array([(ny - 1) / 2]))
    base = moffat.render(centre, xs, ys, order=3)[0]
    image = (base + mean).reshape(size, size)
    total = image.sum() / osamp**2
    if not total > 0:
        return None
    image = image / total
    # Weights: the residuals' per-node variance, floored so that nodes
    # seen once or with identical samples do not dominate.
    var = var / total**2
    floor = np.nanmedian(var[var > 0]) if np.any(var > 0) else 1.0
    invvar = np.where(np.isfinite(var) & (cnt > 1),
                      1.0 / np.maximum(var, floor), 1.0 / floor)
    scale = scale_err = float("nan")
    if fwhm >= PROFILE_MIN_FWHM:
        measured = cnt > 1
        scale, scale_err = profile_scale(
            xs[measured], ys[measured], mean[measured], invvar[measured],
            centre[0], fwhm)
    init = centre[0].copy()
    init[moffat.AMP] = float(image.max())
    fits = {}
    for order in (1, 3):  # 1: as sampled (PSFEx); 3: pixel-integrated
        res = moffat.fit_moffat(image.ravel()[None], invvar[None], xs, ys,
                                init[None], order=order)
        fits[order] = res.params[0]
    conv = moffat.shape_from_params(fits[1][None])
    free = moffat.shape_from_params(fits[3][None])
    r = np.hypot(xs, ys)
    within = r <= 2.0 * fwhm
    fitted = moffat.render_point(fits[1][None], xs, ys)[0]
    resid_rms = float(np.sqrt(np.mean((image.ravel() - fitted)[within] ** 2))
                      / image.max())
    rot = image[::-1, ::-1].ravel()
    odd = (image.ravel() - rot)[within]
    even = (image.ravel() + rot)[within]
    asym = float(np.sqrt(np.sum(odd**2) / np.sum(even**2)))
    return PsfModel(
        image=image,
        oversampling=osamp,
        fwhm=float(conv.fwhm[0]),
        fwhm_pixel_free=float(free.fwhm[0]),
        beta=float(conv.beta[0]),
        ellipticity=float(
            (conv.fwhm_major[0] - conv.fwhm_minor[0])
            / (conv.fwhm_major[0] + conv.fwhm_minor[0])
        ),
        residual=resid_rms,
        asymmetry=asym,
        area=psf_area(fits[3]),
        nstars=len(stars),
        profile_scale=scale,
        profile_scale_err=scale_err,
    )


#: `profile_scale`: the half widths at half maximum of the radial
#: correction's Gaussian components, in units of the Moffat's.  Chosen on
#: Gaussian, Moffat and Airy fields (`benchmarks/psf_edges.py`, seed 1);
#: a ladder down to 0.35 and up to 2.8 followed the noise (Moffat fields
#: moved by 0.5 %, an Airy disc read +8 %).
PROFILE_LADDER = (0.7, 1.0, 1.4, 2.0)
#: Below this Moffat FWHM [px] the profile's core is not measured: on
#: Moffat PSFs of beta 1.7-2.2 (`psf_edges.py`, seeds 2 and 3) the
#: correction was off by -1.0 to -1.3 % at 1.4 px and -2 to +0.3 % at
#: 1.2 px (the core's width is then a fraction of a pixel), against
#: -0.4 to -0.7 % at 1.6 px, where Kolmogorov seeing gains +2.1 to
#: +2.4 % (from -3.9 % to -1.8 %).
PROFILE_MIN_FWHM = 1.5
#: A correction further than this from 1 is said in a note: the FWHM
#: then rests on it (Kolmogorov seeing 1.013-1.029, a core with a halo
#: ~1.03, an Airy disc ~1.10).
FAR_FROM_MOFFAT = 0.05
#: The correction's own model error, as a fraction of the correction
#: (FWHM_CORR - 1), added to FWHM_PIX_ERR: measured against the truth
#: after the correction, Gaussian and Kolmogorov PSFs, a core with a halo
#: and Kolmogorov seeing through an obscured telescope were off by at
#: most 0.05-0.34 of their correction (0-0.5 %), an Airy disc by 0.3 of
#: it (+3 % for 1.10), an obscured Airy disc with jitter by 0.34 (+6-7 %
#: for 1.19; benchmarks/README.md, psf_edges and GalSim).
PROFILE_MODEL_ERROR = 0.35


def profile_scale(xs: FloatArray, ys: FloatArray, resid: FloatArray,
                  invvar: FloatArray, params: FloatArray,
                  fwhm: float) -> tuple[float, float]:
    """FWHM of the PSF over that of its Moffat description, and its error.

    ``resid`` are the stars' residuals from their own Moffat fits, per
    unit flux, averaged on the nodes ``xs``, ``ys`` of the model's grid
    (offsets from the centre; inverse variances ``invvar``); ``params``
    is the Moffat at the centre, ``fwhm`` the stars' FWHM.  The residual
    is fitted, by weighted least squares, with concentric Gaussians of
    the Moffat's shape (`PROFILE_LADDER`), each integrated over the pixel
    at each node: what the Moffat misses, before pixel sampling.
    (Integrated at each stacked pixel's own offset and averaged on the
    nodes as the residuals are, the figures moved by < 0.1 % at 1.2-1.4
    px, for 30 times the work.)  Returned: the half width at half
    maximum of the Moffat plus that correction over the Moffat's own (1
    for a Moffat PSF; Kolmogorov seeing, whose best Moffat reads 1.4-1.9
    % narrow, about 1.015), and its standard error, propagated from the
    components' covariance scaled by the fit's reduced chi-square when
    above 1.  NaN, NaN when the corrected profile has no half maximum.
    """
    p = np.asarray(params, dtype=float)
    beta = p[moffat.BETA]
    rho_h2 = 2.0 ** (1.0 / beta) - 1.0  # (r/a)² at half maximum
    s2 = np.square(PROFILE_LADDER) * rho_h2 / (2.0 * np.log(2.0))
    # Gauss-Legendre nodes per axis: ~16 per FWHM, 2 to 8.
    order = int(np.clip(np.ceil(16.0 / fwhm), 2, 8))
    offsets, weights = moffat.gauss_legendre_offsets(order)
    x = xs[:, None] + offsets[None, :, 0]
    y = ys[:, None] + offsets[None, :, 1]
    rho2 = (p[moffat.Q11] * x * x + 2.0 * p[moffat.Q12] * x * y
            + p[moffat.Q22] * y * y)
    design = np.stack([np.exp(-rho2 / (2.0 * s)) @ weights for s in s2],
                      axis=1)
    sw = np.sqrt(invvar)
    coef, _, rank, _ = np.linalg.lstsq(design * sw[:, None], resid * sw,
                                       rcond=None)
    nan = float("nan")
    if rank < len(PROFILE_LADDER) or resid.size <= rank:
        return nan, nan
    r2 = np.linspace(0.0, 9.0 * rho_h2, 9001)
    parts = np.exp(-r2[:, None] / (2.0 * s2[None, :]))
    prof = p[moffat.AMP] * (1.0 + r2) ** -beta + parts @ coef
    below = np.flatnonzero(prof <= prof[0] / 2.0)
    if below.size == 0 or below[0] == 0:
        return nan, nan
    i = below[0]
    t = (prof[i - 1] - prof[0] / 2.0) / (prof[i - 1] - prof[i])
    half2 = r2[i - 1] + t * (r2[i] - r2[i - 1])
    # d half2 / d coef from P(half2) = P(0) / 2; P' the profile's slope
    # in r² there.
    slope = (prof[i] - prof[i - 1]) / (r2[i] - r2[i - 1])
    at = np.exp(-half2 / (2.0 * s2))
    grad = -(at - 0.5) / slope / (2.0 * np.sqrt(half2 * rho_h2))
    chi2 = float(np.sum(invvar * (resid - design @ coef) ** 2))
    normal = (design * invvar[:, None]).T @ design
    cov = np.linalg.pinv(normal) * max(chi2 / (resid.size - rank), 1.0)
    err = float(np.sqrt(max(grad @ cov @ grad, 0.0)))
    return float(np.sqrt(half2 / rho_h2)), err


def psf_area(params: FloatArray) -> float:
    """Effective area 1/Σφ² of the pixel-sampled, normalised PSF [px²]."""
    shp = moffat.shape_from_params(params[None])
    radius = int(np.clip(np.ceil(6 * shp.fwhm_major[0]), 10, 80))
    xs, ys = stamp_grid(radius)
    p = params.copy()
    p[moffat.X0] = p[moffat.Y0] = 0.0
    phi = moffat.render(p[None], xs, ys, order=3)[0]
    phi = phi / phi.sum()
    return float(1.0 / np.sum(phi**2))


#: `galaxy_contamination`: the PSF stars' spread S scatters by more than
#: this many times its noise (robust, 1.4826 x median |S - median| / σ_S)
#: ...
CONTAMINATION_CHI = 2.5
#: ... and by more than this fraction of the reference galaxy's S
#: (1.4826 x median |S - median|; a real frame's PSF model errors: 0.13
#: on the NTT frame, 0.01-0.11 on simulated fields whose FWHM is right) ...
CONTAMINATION_SCATTER = 0.15
#: ... and at least this many bright, unflagged sources are sharper than
#: the PSF model (S + `CONTAMINATION_NSIGMA` σ_S < 0) ...
CONTAMINATION_SHARP = 3
CONTAMINATION_NSIGMA = 3.0
#: ... counting sources of S/N above this, and half-light radius above
#: `CONTAMINATION_MIN_SIZE` times the PSF stars' (sharper: cosmic rays,
#: hot pixels).
CONTAMINATION_SNR = 30.0
CONTAMINATION_MIN_SIZE = 0.5


@dataclass(frozen=True)
class Contamination:
    """`galaxy_contamination`'s evidence: compact galaxies as PSF stars."""

    #: Bright unflagged sources sharper than the PSF model.
    n_sharp: int
    #: The PSF stars' robust scatter of S in units of its noise.
    chi: float
    #: ... and in units of the reference galaxy's S.
    scatter: float


def galaxy_contamination(src: Sources, spread: FloatArray,
                         spread_err: FloatArray, stars: IntArray,
                         spread_ref: float) -> Contamination | None:
    """Whether the PSF stars are largely compact galaxies (None: no).

    With a large PSF, compact galaxies are hardly broader than it: the
    candidate selection and the clips may then keep more galaxies than
    stars, and the PSF model is too broad (+4 ... +6 % at 8-9.5 px,
    `docs/metrics.md`).  Two signatures, both required: the PSF stars'
    spread S (zero at their median, `qualityfits.classify`) scatters far
    beyond its noise (a mixture of stars and galaxies: 3.4-7.3 times,
    against at most 2.8 on simulated fields whose FWHM is right) and by
    a good part of the reference galaxy's S ``spread_ref`` (0.18-0.49,
    against 0.01-0.11; 0.13 on the NTT frame, whose PSF model errors
    make its stars' S scatter 6 times its noise), and bright,
    unflagged sources not much smaller than the PSF stars (not cosmic
    rays) are sharper than the model -- the true stars (3-24 of them,
    against 0-6 on the right fields).
    """
    ok = np.isfinite(spread[stars]) & np.isfinite(spread_err[stars]) & (
        spread_err[stars] > 0)
    if ok.sum() < 3 or not spread_ref > 0:
        return None
    s, e = spread[stars][ok], spread_err[stars][ok]
    dev = np.abs(s - np.median(s))
    chi = 1.4826 * float(np.median(dev / e))
    scatter = 1.4826 * float(np.median(dev)) / spread_ref
    r_psf = float(np.median(src.r_half[stars]))
    with np.errstate(invalid="ignore"):
        sharp = (np.isfinite(spread) & np.isfinite(spread_err)
                 & (np.nan_to_num(src.snr) > CONTAMINATION_SNR)
                 & (src.flags == 0)
                 & (src.r_half > CONTAMINATION_MIN_SIZE * r_psf)
                 & (spread + CONTAMINATION_NSIGMA * spread_err < 0))
    n_sharp = int(np.count_nonzero(sharp))
    if (chi > CONTAMINATION_CHI and scatter > CONTAMINATION_SCATTER
            and n_sharp >= CONTAMINATION_SHARP):
        return Contamination(n_sharp=n_sharp, chi=chi, scatter=scatter)
    return None
