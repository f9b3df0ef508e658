"""Star/galaxy/artefact separation, source counts and depth.

Every source is compared with the PSF at its position by a linear
discriminant in the manner of SExtractor's SPREAD_MODEL:

    S = (G·p)/(φ·p) - (G·φ)/(φ·φ),

where p are the source's pixels, φ the local PSF (pixel-free Moffat of
the PSF field, integrated over the pixels at the source's sub-pixel
position, found by PSF photometry) and G a slightly broader copy of it.
S is 0 for a point source whatever its flux, positive for an extended
source and negative for one sharper than the PSF (a cosmic ray, a hot
pixel); its standard error σ_S follows from the pixel noise.  Because φ
is integrated over the pixels at the source's own position, S does not
depend on where a star falls on the pixel grid, which a half-light
radius does on undersampled images.

The decision is taken against a *reference galaxy*: an exponential disc
of half-light radius ``class_galaxy_re`` pixels seen through the local
PSF, whose S (S_ref) is computed once per CCD on the same stamp as the
sources' (its half-size scales with the FWHM, `spread_radius`).  A
source is a star when it is closer to 0 than to S_ref, its S rejects
the reference galaxy at ``class_confidence`` (S < S_ref - z σ_S: the
reference galaxy is called a star in at most 1 - ``class_confidence``
(10 %) of cases whatever σ_S, larger galaxies less often), it is
resolvable (z σ_S < S_ref: a point source's expected S passes that
test), bright enough (``class_min_snr``) and not clearly broader than
the PSF in half-light radius (S, computed after removing a local plane,
loses sources larger than its stamp); an artefact when it is
significantly sharper than the PSF; a galaxy otherwise.  Where
neighbours share a source's pixels (BLENDED, NEIGHBOURS) their light
inflates its half-light radius: there the radius vetoes only with S's
agreement, or beyond the stamp.  The tests scale with σ_S, so that they
hold from undersampled to 10 px PSFs, where S is noisy at S/N 20.
Faint sources that cannot be told apart are galaxies: at high galactic
latitude they mostly are, and star counts are only quoted where stars
are recognisable (SExtractor's CLASS_STAR tends to 0.5 there).
Saturated sources are stars.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum

import numpy as np
from numpy.typing import NDArray
from scipy.special import ndtri

from qualityfits import moffat
from qualityfits.config import QualityConfig
from qualityfits.detection import SourceFlag, Sources
from qualityfits.psf import PsfField, PsfResult, source_stamps, stamp_grid

FloatArray = NDArray[np.float64]

#: Broadening of the comparison template G: its FWHM is this much larger.
SPREAD_BROADENING = 0.25
#: Half-size of the stamps of S, in units of the local FWHM.
SPREAD_RADIUS = 1.25
#: Relative noise of a half-light radius times the source's S/N.
SIZE_NOISE = 0.9
#: Sources fainter than this S/N are not classified (they are galaxies).
MIN_CLASS_SNR = 5.0


class SourceClass(IntEnum):
    """Class of a source."""

    STAR = 0
    GALAXY = 1
    ARTEFACT = 2


CLASS_NAMES = {c: c.name.lower() for c in SourceClass}


@dataclass(frozen=True)
class Classification:
    """Class of every source and the quantities it rests on.

    ``spread`` is S minus its median over the PSF stars, ``spread_err``
    its standard error (NaN where not measured), ``spread_ref`` the S of
    the reference galaxy.
    """

    cls: NDArray[np.int64]
    spread: FloatArray
    spread_err: FloatArray
    spread_ref: float


def spread_radius(fwhm: float) -> int:
    """Half-size [px] of the stamps S is measured on.

    It scales with the PSF, so that S weighs the same part of the
    profile at every FWHM: the reference galaxy's S is computed on the
    same stamp as the sources'.  At most 24 px (a FWHM of 19 px, beyond
    ``psf_fwhm_range``), which bounds the memory of the stamps.
    """
    return int(np.clip(np.ceil(SPREAD_RADIUS * fwhm), 3, 24))


def _broadened(params: FloatArray) -> FloatArray:
    """Broaden a Moffat: the same shape, FWHM larger by SPREAD_BROADENING."""
    out = params.copy()
    scale = (1.0 + SPREAD_BROADENING) ** -2
    out[:, moffat.Q11] *= scale
    out[:, moffat.Q12] *= scale
    out[:, moffat.Q22] *= scale
    return out


def _project_plane(usable: NDArray[np.bool_], xs: FloatArray,
                   ys: FloatArray, *vectors: FloatArray) -> list[FloatArray]:
    """Remove from each row of each vector its least-squares plane.

    The plane a + b x + c y is fitted over the usable pixels of the row.

    Light that varies smoothly across a stamp -- the wings of a
    neighbour, a local error of the sky -- then does not bias S.
    """
    w = usable.astype(np.float64)
    basis = np.stack([np.ones_like(xs), xs, ys], axis=1)  # (npix, 3)
    btwb = np.einsum("np,pi,pj->nij", w, basis, basis)
    inv = np.linalg.pinv(btwb)
    out = []
    for v in vectors:
        btwv = np.einsum("np,pi,np->ni", w, basis, v)
        coef = np.einsum("nij,nj->ni", inv, btwv)
        out.append(v - coef @ basis.T)
    return out


def _spread(data: FloatArray, var: FloatArray, usable: NDArray[np.bool_],
            phi: FloatArray, g: FloatArray) -> tuple[FloatArray, FloatArray]:
    """S and its standard error, row by row (one source per row)."""
    w = usable.astype(np.float64)
    a = np.sum(w * g * data, axis=1)
    b = np.sum(w * phi * data, axis=1)
    c = np.sum(w * g * phi, axis=1)
    d = np.sum(w * phi * phi, axis=1)
    var_a = np.sum(w * g * g * var, axis=1)
    var_b = np.sum(w * phi * phi * var, axis=1)
    cov = np.sum(w * g * phi * var, axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        spread = a / b - c / d
        err2 = var_a / b**2 + a**2 * var_b / b**4 - 2.0 * a * cov / b**3
    return spread, np.sqrt(np.maximum(err2, 0.0))


def windowed_centroid(
    data: FloatArray, usable: NDArray[np.bool_], xs: FloatArray,
    ys: FloatArray, x0: FloatArray, y0: FloatArray, fwhm: float,
    niter: int = 3,
) -> tuple[FloatArray, FloatArray]:
    """Gaussian-windowed centroids (SExtractor's XWIN) on stamps.

    Starts at (x0, y0) in stamp coordinates; a source whose centroid
    wanders more than a pixel from its start keeps its start.
    """
    two_sig2 = 2.0 * (fwhm / moffat.SIGMA_TO_FWHM) ** 2
    cx, cy = x0.copy(), y0.copy()
    w_data = np.where(usable, data, 0.0)
    for _ in range(niter):
        dx = xs[None, :] - cx[:, None]
        dy = ys[None, :] - cy[:, None]
        w = np.exp(-(dx * dx + dy * dy) / two_sig2) * w_data
        tot = np.sum(w, axis=1)
        with np.errstate(divide="ignore", invalid="ignore"):
            step_x = 2.0 * np.sum(w * dx, axis=1) / tot
            step_y = 2.0 * np.sum(w * dy, axis=1) / tot
        ok = np.isfinite(step_x) & np.isfinite(step_y) & (tot > 0)
        cx = np.where(ok, cx + step_x, cx)
        cy = np.where(ok, cy + step_y, cy)
    lost = np.hypot(cx - x0, cy - y0) > 1.0
    return np.where(lost, x0, cx), np.where(lost, y0, cy)


#: Below this FWHM [px] the sources are centred by a fit of the PSF
#: (centre and flux, the shape held), not by a windowed centroid: an
#: undersampled source's windowed centroid is pulled towards the centre
#: of its pixel, and S then follows the pixel phase (correlation 0.88
#: with the distance from the pixel centre on a 1.0 px Moffat field, S
#: scattering 9.5 times its noise; 0.71 at 1.2 px).
FIT_CENTRE_FWHM = 1.5


def _fitted_centres(data: FloatArray, usable: NDArray[np.bool_],
                    sky_var: FloatArray, xs: FloatArray, ys: FloatArray,
                    placed: FloatArray, flux: FloatArray) -> FloatArray:
    """Move the PSF of each stamp to the centre a PSF fit finds.

    A source whose fit fails or wanders more than a pixel keeps its
    windowed centroid.
    """
    start = placed.copy()
    start[:, moffat.AMP] *= flux
    invvar = np.where(usable, 1.0 / sky_var, 0.0)
    fit = moffat.fit_moffat(data, invvar, xs, ys, start, order=4,
                            fit_shape=False, max_iter=20)
    moved = np.hypot(fit.params[:, moffat.X0] - placed[:, moffat.X0],
                     fit.params[:, moffat.Y0] - placed[:, moffat.Y0])
    ok = fit.converged & np.isfinite(moved) & (moved <= 1.0)
    out = placed.copy()
    out[ok, moffat.X0] = fit.params[ok, moffat.X0]
    out[ok, moffat.Y0] = fit.params[ok, moffat.Y0]
    return out


def measure_spread(
    data_sub: NDArray[np.float32],
    bad: NDArray[np.bool_],
    src: Sources,
    field: PsfField,
    idx: NDArray[np.intp],
    *,
    gain: float | None,
) -> tuple[FloatArray, FloatArray]:
    """SPREAD-like statistic and its error for the sources ``idx``."""
    if idx.size == 0:
        return np.zeros(0), np.zeros(0)
    fwhm = float(np.median(field.fwhm_at(src.x[idx], src.y[idx])))
    radius = spread_radius(fwhm)
    ix = np.round(src.x[idx]).astype(np.intp)
    iy = np.round(src.y[idx]).astype(np.intp)
    data, usable = source_stamps(data_sub, bad, src.segmap, idx, ix, iy,
                                 radius)
    # The sky noise at the source (the RMS map is smooth on the scale
    # of a stamp).
    sky_var = (src.noise[idx] ** 2)[:, None]
    xs, ys = stamp_grid(radius)
    # A windowed centroid places φ on the source as it falls on the
    # pixel grid; the pixel integration matters for sharp PSFs only.
    cx, cy = windowed_centroid(data, usable, xs, ys, src.x[idx] - ix,
                               src.y[idx] - iy, fwhm)
    placed = field.params_at(src.x[idx], src.y[idx], x0=cx, y0=cy)
    if fwhm < FIT_CENTRE_FWHM:
        placed = _fitted_centres(data, usable, sky_var, xs, ys, placed,
                                 np.maximum(src.flux[idx], 1.0))
    placed[:, moffat.AMP] = 1.0
    order = 2
    phi = moffat.render(placed, xs, ys, order=order, fast=True)
    g = moffat.render(_broadened(placed), xs, ys, order=order, fast=True)
    var = sky_var + (np.maximum(data, 0.0) / gain if gain else 0.0)
    data, phi, g = _project_plane(usable, xs, ys, data, phi, g)
    return _spread(data, var, usable, phi, g)


def _convolve_same(a: FloatArray, b: FloatArray) -> FloatArray:
    """Linear convolution of two equal-size odd square arrays, centred."""
    n = a.shape[0]
    size = 2 * n - 1
    full = np.fft.irfft2(np.fft.rfft2(a, (size, size))
                         * np.fft.rfft2(b, (size, size)), (size, size))
    half = (n - 1) // 2
    return np.asarray(full[half:half + n, half:half + n])


def reference_spread(field: PsfField, r_e: float) -> float:
    """Compute S for the reference galaxy, without noise.

    An exponential disc of half-light radius ``r_e`` [px] seen through
    the PSF at the centre of the CCD.
    """
    ny, nx = field.shape
    cx, cy = np.array([(nx - 1) / 2]), np.array([(ny - 1) / 2])
    params = field.params_at(cx, cy)
    fwhm = float(field.fwhm_at(cx, cy)[0])
    radius = spread_radius(fwhm)
    big = radius + int(np.ceil(6 * r_e + 3 * fwhm))
    sub = 3  # sub-samples per pixel (S within 0.4 % of 5 per pixel)
    n = 2 * big * sub + sub
    u = (np.arange(n) - (n - 1) / 2) / sub
    gx, gy = np.meshgrid(u, u)
    disc = np.exp(-1.678 * np.hypot(gx, gy) / r_e)
    p = params.copy()
    p[:, moffat.AMP] = 1.0
    psf = moffat.render_point(p, gx.ravel(), gy.ravel())[0].reshape(n, n)
    image = _convolve_same(disc, psf)
    # Integrate over pixels: sum the sub-samples of each pixel.
    image = image.reshape(n // sub, sub, n // sub, sub).sum(axis=(1, 3))
    mid = image.shape[0] // 2
    cut = image[mid - radius:mid + radius + 1, mid - radius:mid + radius + 1]
    xs, ys = stamp_grid(radius)
    placed = p.copy()
    placed[:, moffat.X0] = placed[:, moffat.Y0] = 0.0
    phi = moffat.render(placed, xs, ys, order=2)
    g = moffat.render(_broadened(placed), xs, ys, order=2)
    everywhere = np.ones((1, phi.shape[1]), bool)
    data, phi, g = _project_plane(everywhere, xs, ys,
                                  cut.ravel()[None], phi, g)
    spread, _ = _spread(data, np.ones((1, phi.shape[1])), everywhere, phi,
                        g)
    return float(spread[0])


def classify(
    data_sub: NDArray[np.float32],
    bad: NDArray[np.bool_],
    src: Sources,
    psf: PsfResult,
    *,
    gain: float | None,
    config: QualityConfig,
) -> Classification:
    """Classify every source as star, galaxy or artefact."""
    n = len(src)
    cls = np.full(n, SourceClass.GALAXY, dtype=np.int64)
    spread = np.full(n, np.nan)
    err = np.full(n, np.nan)
    if n == 0 or psf.field is None:
        return Classification(cls=cls, spread=spread, spread_err=err,
                              spread_ref=float("nan"))
    field = psf.field
    idx = np.flatnonzero(np.nan_to_num(src.snr) >= MIN_CLASS_SNR)
    spread[idx], err[idx] = measure_spread(
        data_sub, bad, src, field, idx, gain=gain)
    # The brighter half of the PSF stars, whose S is limited by the PSF
    # model rather than by noise, defines S = 0 and the model's error ε
    # (a 0.3 % error of the FWHM field moves S by ~0.003); ε is at least
    # 5 % of the reference galaxy's S.
    ref = reference_spread(field, config.class_galaxy_re)
    on_psf = spread[psf.stars.index]
    on_err = err[psf.stars.index]
    bright = np.isfinite(on_psf) & (on_err <= np.nanmedian(on_err))
    if bright.sum() < 3:
        bright = np.isfinite(on_psf)
    zero = float(np.median(on_psf[bright]))
    spread = spread - zero
    scatter = 1.4826 * float(np.median(np.abs(on_psf[bright] - zero)))
    noise = float(np.median(on_err[bright]))
    eps = max(float(np.sqrt(max(scatter**2 - noise**2, 0.0))), 0.05 * ref)
    k = config.class_nsigma
    with np.errstate(invalid="ignore"):
        measured = np.isfinite(spread) & np.isfinite(err)
        # SExtractor's rule for SPREAD_MODEL: |S| < sqrt(ε² + (κ σ_S)²);
        # plus: nearer to a point than to the reference galaxy, and
        # precise enough to tell them apart.
        # On the sharp side only cosmic rays and hot pixels go beyond the
        # PSF stars' own scatter; a galaxy is never sharper than the PSF.
        point = config.class_star_nsigma * np.sqrt(eps**2 + err**2)
        # A deblended source shares pixels with its neighbour: its S is
        # only trusted to tell a point from the reference galaxy.
        blended = (src.flags & SourceFlag.BLENDED) != 0
        band = np.where(blended, np.inf, point)
        sharp_band = k * np.sqrt(eps**2 + err**2)
        # Larger than a star by more than a quarter (and 3 sigma of the
        # r_h noise): extended whatever S says (S, computed after
        # removing a local plane, loses sources larger than its stamp)
        # -- unless neighbours share the source's pixels: their light
        # inflates r_h (in a crowded field, most stars' r_h), so there
        # S must also find the source broader than a point, or r_h
        # exceed the stamp S is measured on.
        r_psf = float(np.median(src.r_half[psf.stars.index]))
        snr = np.maximum(np.nan_to_num(src.snr), 1e-3)
        crowded = (src.flags & (SourceFlag.BLENDED
                                | SourceFlag.NEIGHBOURS)) != 0
        fwhm = field.fwhm_at(src.x, src.y)
        extended = (src.r_half > r_psf * (1.0 + np.maximum(
            0.25, 3.0 * SIZE_NOISE / snr))) & (
                ~crowded | (spread > point)
                | (src.r_half > SPREAD_RADIUS * fwhm))
        # The reference galaxy is rejected at ``class_confidence``: S
        # below S_ref - z σ_S, which the reference galaxy reaches in at
        # most 1 - class_confidence of cases whatever σ_S, larger
        # galaxies less often.  Resolvable: a point source's expected S
        # (0) passes that test.  Precise sources keep the midpoint rule.
        z = ndtri(config.class_confidence)
        star = (
            measured
            & ~extended
            & (src.snr >= config.class_min_snr)
            & (spread <= np.minimum(band, 0.5 * ref))
            & (spread <= ref - z * err)
            # Sharper than the reference galaxy is broad, but within
            # the noise: a star (noise, not a cosmic ray, where the PSF
            # is large and S noisy).
            & (spread >= -np.maximum(sharp_band, 0.5 * ref))
            & (err <= ref / z)
        )
        sharp_psf = float(np.median(src.peak[psf.stars.index]
                                    / src.flux[psf.stars.index]))
        artefact = (
            (measured & ~blended & (spread < -sharp_band)
             & (spread < -0.5 * ref))
            # Peakier than the PSF stars by more than the noise of
            # the peak pixel (large where the PSF is broad).
            | (src.peak - k * src.noise > 1.6 * sharp_psf * src.flux)
            | (src.r_half < 0.25 * fwhm)
        )
    cls[star] = SourceClass.STAR
    cls[artefact] = SourceClass.ARTEFACT
    # A saturated source's profile is cut: S is meaningless.  It is a
    # star unless its half-light radius says it is much broader.
    saturated = (src.flags & SourceFlag.SATURATED) != 0
    cls[saturated & (src.r_half < 2.0 * r_psf)] = SourceClass.STAR
    return Classification(cls=cls, spread=spread, spread_err=err,
                          spread_ref=ref)


@dataclass(frozen=True)
class Counts:
    """Star and galaxy counts per magnitude bin.

    ``per_deg2`` arrays are counts per square degree per bin (NaN
    without a pixel scale).
    """

    mag_edges: FloatArray
    nstar: NDArray[np.int64]
    ngal: NDArray[np.int64]
    nstar_per_deg2: FloatArray
    ngal_per_deg2: FloatArray


def counts(mag: FloatArray, cls: NDArray[np.int64], *,
           area_deg2: float | None, config: QualityConfig) -> Counts:
    """Histogram star and galaxy magnitudes in fixed-width bins."""
    finite = np.isfinite(mag)
    step = config.count_mag_bin
    if finite.any():
        lo = np.floor(mag[finite].min() / step) * step
        hi = np.ceil(mag[finite].max() / step) * step
        hi = max(hi, lo + step)
        edges = np.arange(lo, hi + step / 2, step)
    else:
        edges = np.array([0.0, step])
    nstar, _ = np.histogram(mag[finite & (cls == SourceClass.STAR)], edges)
    ngal, _ = np.histogram(mag[finite & (cls == SourceClass.GALAXY)], edges)
    scale = 1.0 / area_deg2 if area_deg2 else np.nan
    return Counts(
        mag_edges=edges,
        nstar=nstar.astype(np.int64),
        ngal=ngal.astype(np.int64),
        nstar_per_deg2=nstar * scale,
        ngal_per_deg2=ngal * scale,
    )


def turnover(c: Counts, width: float = 1.0) -> float:
    """Return MAG_TURNOVER: where the galaxy counts peak.

    The counts are summed over a running window of ``width`` magnitudes
    first, so that a flat top does not make the peak jump between bins.
    """
    if c.ngal.sum() == 0:
        return float("nan")
    step = float(c.mag_edges[1] - c.mag_edges[0])
    n = max(1, round(width / step))
    smooth = np.convolve(c.ngal, np.ones(n), mode="same")
    i = int(np.argmax(smooth))
    return float(0.5 * (c.mag_edges[i] + c.mag_edges[i + 1]))


def flux_limit(area: float, sky_rms: float, gain: float | None,
               snr: float = 5.0) -> float:
    """Flux of a point source detected at ``snr`` by PSF photometry.

    Solves F / sqrt(F/g + A σ²) = snr for F, with A the PSF effective
    area, σ the sky noise per pixel and g the gain (the source's own
    Poisson noise is dropped when the gain is unknown).
    """
    s2 = snr * snr
    if gain:
        return float(0.5 * (s2 / gain + np.sqrt((s2 / gain) ** 2
                                                + 4.0 * s2 * area
                                                * sky_rms**2)))
    return float(snr * sky_rms * np.sqrt(area))
