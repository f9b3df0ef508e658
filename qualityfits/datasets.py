"""Seeded synthetic CCD images whose truth is known exactly.

The simulator is the reference against which the accuracy of the
pipeline is judged, so its conventions are stated here once:

* Coordinates are 0-based numpy coordinates: ``x`` is the column, ``y``
  the row, pixel ``(j, i)`` is centred on ``(x, y) = (i, j)`` and covers
  ``x`` in ``[i - 0.5, i + 0.5]``, ``y`` in ``[j - 0.5, j + 0.5]``.
  Angles are in degrees, counter-clockwise from the +x axis.
* The PSF is an elliptical Moffat profile *before* pixel sampling
  (`moffat_profile`).  ``fwhm`` is the mean of the major- and minor-axis
  FWHM, ``ellipticity`` is ``(A - B) / (A + B)`` of these FWHMs and
  ``theta`` the position angle of the major axis.  Pixel values are
  integrals of the profile over the pixel (Gauss-Legendre quadrature,
  accurate to better than 1e-4), so a measurement code that fits a
  pixel-convolved model recovers ``fwhm`` exactly, one that fits the
  pixel values with a point-sampled model finds a slightly larger FWHM.
  A star's stamp holds at least 99.8 % of its flux (for beta >= 2);
  the far wings left out are below 0.001 sky sigma per pixel.  This
  holds for undersampled PSFs too (FWHM 1.6 px: the pixel values'
  second moments are the Moffat's plus the pixel box's 1/12 px²), so
  the truth FWHM (``SIMFWHM``, the ``fwhm`` column) is always the
  pixel-free one, smaller than the FWHM of the pixel image.
* Crowded fields (12 000 stars per 2048² and more) are just
  ``n_stars``: overlapping stars add, and every star is in the truth
  table (`write_exposure` ``truth=``, ``qualityfits-simulate --truth``).
* Auxiliary planes: ``layout="hst_flt"`` writes per CCD the HST
  calibrated-file extensions ``SCI``, ``ERR`` (the per-pixel sigma of
  the noiseless image) and ``DQ`` (`HST_DQ` bits: bad columns,
  saturation, cosmic rays); ``layout="cp"`` the NOIRLab Community
  Pipeline trio (image, inverse-variance weight, data quality with the
  `CP_DQ` codes; the weight is 0 wherever the data quality is not).
  ``n_bad_columns`` adds dead and hot columns to any layout.
* Galaxies are exponential discs convolved with the local PSF and
  integrated over the pixels; they are rendered exactly in Fourier space
  from the analytic transforms of the three factors, and hold all their
  flux.
* Fluxes are in ADU in the whole exposure; ``mag = zeropoint -
  2.5 log10(flux)``.  The truth S/N is that of optimal PSF photometry,
  ``flux / sqrt(flux / gain + area * sigma**2)``, with ``sigma`` the sky
  noise in ADU at the source and ``area = 1 / sum(phi**2)`` of the
  source's own pixel image ``phi`` scaled to unit total flux (the local
  PSF at its sub-pixel position for a star, the PSF-convolved disc for a
  galaxy).  `SimulatedImage.psf_area` is that area for a star centred on
  a pixel, at the central FWHM.
* The FWHM and the sky are linear ramps across the image (see
  `SimulationParams`); `SimulatedImage.fwhm_at` and `~.sky_at` give the
  truth anywhere.
* Noise is Poisson in electrons on the noiseless image plus Gaussian
  read noise; cosmic rays (never convolved with the PSF) are added after
  the noise, and the result is clipped at the saturation level.  A CR
  hit covers 1-4 adjacent pixels, the first with an amplitude
  log-uniform in 300-30000 ADU, the others 0.3-1 times that; a track is
  a 1 px wide segment 5-60 px long, anti-aliased, depositing 200-5000
  ADU per pixel length (log-uniform).

Only numpy, scipy, astropy and the standard library are used.

>>> from qualityfits.datasets import SimulationParams, simulate_image
>>> params = SimulationParams(shape=(256, 256), n_stars=20, n_galaxies=40)
>>> image = simulate_image(params, seed=1)
>>> image.data.shape
(256, 256)
"""

from __future__ import annotations

import argparse
import math
import multiprocessing
import sys
import time
from collections import deque
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass, replace
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, Literal

import numpy as np
from astropy.io import fits
from astropy.table import Table
from scipy import fft as sp_fft
from scipy import special

from qualityfits.errors import InvalidParameterError

if TYPE_CHECKING:
    from collections.abc import Iterator, Sequence

    from numpy.typing import ArrayLike, NDArray

__all__ = [
    "CP_DQ",
    "HST_DQ",
    "LAYOUTS",
    "SimulatedImage",
    "SimulationParams",
    "cp_file_names",
    "main",
    "moffat_profile",
    "render_psf_stamp",
    "simulate_exposure",
    "simulate_image",
    "write_exposure",
    "write_sample",
]

#: Sources are rendered out to where they fall below this fraction of the
#: sky noise (stars) ...
_STAR_DEPTH: Final = 1e-3
#: ... and galaxies out to this fraction; light beyond it is not lost but
#: folded back into the stamp, far below the noise.
_GALAXY_DEPTH: Final = 1e-2
#: Star stamps hold all but this fraction of the flux ...
_STAR_LOST_FLUX: Final = 2e-3
#: ... unless that needs more than this many Moffat scale lengths.
_MAX_LOST_ALPHAS: Final = 25.0
#: Half-size of the Gauss-Legendre core of a star stamp, in FWHMs.
_CORE_FWHMS: Final = 3.0
#: Quadrature order per axis outside the core.
_OUTER_GL_ORDER: Final = 2
#: Largest half-size of a star stamp, in pixels.
_MAX_STAR_HALF: Final = 512
#: Stamp half-sizes above the core grow in steps of this many pixels.
_STAR_HALF_STEP: Final = 8


def _five_smooth(n: int) -> bool:
    """Whether ``n`` has no prime factor above 5 (a fast FFT length)."""
    for p in (2, 3, 5):
        while n % p == 0:
            n //= p
    return n == 1


#: Galaxy stamp sizes: even 5-smooth numbers, in pixels.
_GALAXY_SIZES: Final = tuple(n for n in range(16, 1025, 2) if _five_smooth(n))
#: Elements of the largest work array of one rendering batch.
_BATCH_ELEMENTS: Final = 1 << 20
#: Pixels per block of the noise generation.
_NOISE_BLOCK: Final = 1 << 20
#: Faint flux limit: optimal S/N of the faintest star.
_FAINT_SNR: Final = 5.0
#: Bright flux limit: noiseless peak of the brightest star / saturation.
_BRIGHT_PEAK: Final = 5.0
#: Slope of the flux distribution, dN/dF ∝ F**-slope.
_FLUX_SLOPE: Final = 1.5
#: Brightest galaxy flux / brightest star flux.
_GALAXY_BRIGHT: Final = 0.1
#: Half-light radius / scale length of an exponential disc.
_EXP_B: Final = 1.678
#: Galaxy axis ratios are uniform in [_MIN_AXIS_RATIO, 1].
_MIN_AXIS_RATIO: Final = 0.3
#: Cosmic-ray hit amplitudes (ADU), track lengths (px) and deposits
#: (ADU per pixel of track), each log-uniform or uniform in the range.
_CR_HIT_ADU: Final = (300.0, 30000.0)
_CR_TRACK_LENGTH: Final = (5.0, 60.0)
_CR_TRACK_ADU: Final = (200.0, 5000.0)
#: Sub-samples per axis of a pixel when drawing a track.
_CR_SUBSAMPLES: Final = 5
#: A pixel is in the CR mask when its deposit exceeds this times sky_rms.
_CR_MASK_NSIGMA: Final = 0.5
#: Gaps between the CCDs of a mosaic, in pixels (x, y).
_GAP_X: Final = 70
_GAP_Y: Final = 200
#: Fractional FWHM change from the centre to the corner of the mosaic is
#: twice this (it goes from 1 - a to 1 + a).
_FOCAL_PLANE_FWHM: Final = 0.05
#: Sampling of the tabulated Fourier transform of the Moffat profile.
_FT_STEP: Final = 2.5e-4
_FT_MAX: Final = 20.0
#: Aliased copies of the spectrum weaker than this are neglected.
_ALIAS_TOLERANCE: Final = 1e-5

_NEIGHBOURS: Final = ((0, 1), (0, -1), (1, 0), (-1, 0))

Dtype = Literal["float32", "int16"]
Layout = Literal["plain", "hst_flt", "cp"]

#: The file layouts of `SimulationParams.layout`.
LAYOUTS: Final = ("plain", "hst_flt", "cp")
#: Data-quality bits of the HST ``_flt`` layout (WFC3/ACS conventions):
#: bad detector pixel, full-well saturation, cosmic ray (AstroDrizzle).
HST_DQ: Final = {"bad": 4, "saturated": 256, "cosmic_ray": 4096}
#: Data-quality codes of the NOIRLab Community Pipeline (``ood`` files):
#: bad pixel (BPM), saturated, cosmic ray.  The CP writes one code per
#: pixel; where several apply, a bad column wins over saturation, which
#: wins over a cosmic ray.
CP_DQ: Final = {"bad": 1, "saturated": 3, "cosmic_ray": 5}
#: A hot bad column reads this many sky sigmas above the sky.
_HOT_COLUMN_SIGMAS: Final = 50.0


# --------------------------------------------------------------------------
# Parameters


def _check_int(name: str, value: object, lo: int, hi: int) -> None:
    """Raise unless ``value`` is an integer in ``[lo, hi]``."""
    if (
        isinstance(value, bool)
        or not isinstance(value, int | np.integer)
        or not lo <= value <= hi
    ):
        raise InvalidParameterError(
            f"{name} must be an integer in [{lo}, {hi}], got {value!r}"
        )


def _check_real(
    name: str,
    value: object,
    lo: float,
    hi: float,
    *,
    lo_open: bool = False,
    hi_open: bool = False,
) -> None:
    """Raise unless ``value`` is a finite real number in the interval."""
    ok = False
    if not isinstance(value, bool) and isinstance(
        value, int | float | np.integer | np.floating
    ):
        v = float(value)
        ok = (
            math.isfinite(v)
            and (v > lo if lo_open else v >= lo)
            and (v < hi if hi_open else v <= hi)
        )
    if not ok:
        interval = (
            f"{'(' if lo_open else '['}{lo:g}, {hi:g}{')' if hi_open else ']'}"
        )
        raise InvalidParameterError(
            f"{name} must be a finite number in {interval}, got {value!r}"
        )


@dataclass(frozen=True, kw_only=True)
class SimulationParams:
    """Everything that defines a simulated CCD image except the seed.

    Parameters
    ----------
    shape : tuple of int
        Image shape ``(ny, nx)``, each at least 16 pixels.
    fwhm : float
        PSF FWHM at the image centre, in pixels (mean of the major- and
        minor-axis FWHM of the Moffat profile before pixel sampling).
    fwhm_variation : float
        Peak-to-peak fractional variation of the FWHM across the image:
        ``fwhm(x, y) = fwhm * (1 + fwhm_variation * u(x, y))``, ``u`` a
        linear ramp along a seeded random direction that spans exactly
        ``[-0.5, 0.5]`` over the pixel centres.
    beta : float
        Moffat exponent.
    ellipticity : float
        PSF ellipticity ``(A - B) / (A + B)``.
    theta : float
        Position angle of the PSF major axis, degrees counter-clockwise
        from +x.
    sky : float
        Mean sky level, ADU.
    sky_gradient : float
        Peak-to-peak fractional variation of the sky across the image, a
        linear ramp along another seeded random direction.
    gain : float
        Gain, electrons per ADU.
    read_noise : float
        Read noise, electrons.
    saturation : float
        Saturation level, ADU; pixel values are clipped there.
    n_stars, n_galaxies : int
        Number of stars and galaxies.
    r_e_range : tuple of float
        Range of galaxy half-light radii (major axis), pixels;
        log-uniform.
    n_cr_hits, n_cr_tracks : int
        Number of cosmic-ray hits (1-4 pixels) and tracks.
    zeropoint : float
        Photometric zero point for fluxes in ADU (``PHOTZP``).
    exptime : float
        Exposure time, seconds (header only).
    pixscale : float
        Pixel scale, arcsec per pixel (header and WCS only).
    ra, dec : float
        Sky position of the image (or mosaic) centre, degrees.
    gl_order : int
        Gauss-Legendre nodes per axis and pixel in the core of stars.
    dtype : {"float32", "int16"}
        Output pixel type; ``"int16"`` means FITS BITPIX 16 with BZERO
        32768, i.e. a ``uint16`` array, rounded and clipped to 0..65535.
    n_bad_columns : int
        Number of bad columns (distinct, seeded, drawn after everything
        else so that the rest of the image does not depend on it): the
        even-numbered ones of the sorted list are dead (they read 0 ADU),
        the odd ones hot (the observed column plus 50 sky sigmas).  The
        truth catalogues ignore them; `SimulatedImage.bad_columns` lists
        them.
    layout : {"plain", "hst_flt", "cp"}
        How `write_exposure` writes the image: ``"plain"`` one image HDU
        per CCD; ``"hst_flt"`` the HST calibrated ``_flt`` layout, an
        empty primary and per CCD the extensions ``SCI``, ``ERR`` (the
        per-pixel sigma) and ``DQ`` (int16 flags, `HST_DQ`) with
        ``EXTVER`` = CCD number + 1; ``"cp"`` the NOIRLab Community
        Pipeline trio, three files (image, inverse-variance weight,
        data quality, `cp_file_names`) each an empty primary and one
        extension per CCD.  Any layout but ``"plain"`` makes the
        simulation keep the per-pixel sigma (`SimulatedImage.sigma`).

    Raises
    ------
    InvalidParameterError
        (a `ValueError`) if a value is out of range.
    """

    shape: tuple[int, int] = (2048, 2048)
    fwhm: float = 4.0
    fwhm_variation: float = 0.0
    beta: float = 3.0
    ellipticity: float = 0.0
    theta: float = 0.0
    sky: float = 1000.0
    sky_gradient: float = 0.0
    gain: float = 1.6
    read_noise: float = 5.0
    saturation: float = 60000.0
    n_stars: int = 600
    n_galaxies: int = 1500
    r_e_range: tuple[float, float] = (0.7, 8.0)
    n_cr_hits: int = 300
    n_cr_tracks: int = 30
    zeropoint: float = 30.0
    exptime: float = 300.0
    pixscale: float = 0.187
    ra: float = 150.0
    dec: float = 2.0
    gl_order: int = 6
    dtype: Dtype = "float32"
    n_bad_columns: int = 0
    layout: Layout = "plain"

    def __post_init__(self) -> None:
        """Check every value and normalise the tuples."""
        shape = tuple(self.shape)
        if len(shape) != 2:
            raise InvalidParameterError(
                f"shape must be (ny, nx), got {self.shape!r}"
            )
        for name, value in zip(("shape[0]", "shape[1]"), shape, strict=True):
            _check_int(name, value, 16, 100_000)
        object.__setattr__(self, "shape", (int(shape[0]), int(shape[1])))
        r_e = tuple(self.r_e_range)
        if len(r_e) != 2:
            raise InvalidParameterError(
                f"r_e_range must be (min, max), got {self.r_e_range!r}"
            )
        _check_real("r_e_range[0]", r_e[0], 0.05, 100.0)
        _check_real("r_e_range[1]", r_e[1], float(r_e[0]), 100.0)
        object.__setattr__(self, "r_e_range", (float(r_e[0]), float(r_e[1])))
        _check_real("fwhm", self.fwhm, 1.0, 50.0)
        _check_real("fwhm_variation", self.fwhm_variation, 0.0, 1.0)
        _check_real("beta", self.beta, 1.5, 50.0)
        _check_real("ellipticity", self.ellipticity, 0.0, 0.5)
        _check_real("theta", self.theta, -360.0, 360.0)
        _check_real("sky", self.sky, 0.0, 1e7)
        _check_real("sky_gradient", self.sky_gradient, 0.0, 2.0, hi_open=True)
        _check_real("gain", self.gain, 0.0, 1e4, lo_open=True)
        _check_real("read_noise", self.read_noise, 0.0, 1e4)
        _check_real("saturation", self.saturation, 0.0, 1e9, lo_open=True)
        for name in ("n_stars", "n_galaxies", "n_cr_hits", "n_cr_tracks"):
            _check_int(name, getattr(self, name), 0, 10_000_000)
        _check_real("zeropoint", self.zeropoint, -100.0, 100.0)
        _check_real("exptime", self.exptime, 0.0, 1e7, lo_open=True)
        _check_real("pixscale", self.pixscale, 0.0, 3600.0, lo_open=True)
        _check_real("ra", self.ra, 0.0, 360.0, hi_open=True)
        _check_real("dec", self.dec, -90.0, 90.0)
        _check_int("gl_order", self.gl_order, 1, 64)
        _check_int("n_bad_columns", self.n_bad_columns, 0, shape[1])
        if self.layout not in LAYOUTS:
            raise InvalidParameterError(
                f"layout must be one of {', '.join(LAYOUTS)}, got "
                f"{self.layout!r}"
            )
        if self.dtype not in ("float32", "int16"):
            raise InvalidParameterError(
                f"dtype must be 'float32' or 'int16', got {self.dtype!r}"
            )
        if self.dtype == "int16" and self.saturation > 65535:
            raise InvalidParameterError(
                "saturation must be <= 65535 ADU for dtype 'int16', got "
                f"{self.saturation!r}"
            )
        sky_max = self.sky * (1 + self.sky_gradient / 2)
        if self.saturation <= sky_max:
            raise InvalidParameterError(
                f"saturation ({self.saturation!r} ADU) must exceed the "
                f"highest sky level ({sky_max:g} ADU)"
            )

    @property
    def sky_rms(self) -> float:
        """Noise at the mean sky level, ADU."""
        return math.sqrt(
            self.sky / self.gain + (self.read_noise / self.gain) ** 2
        )


# --------------------------------------------------------------------------
# The result


def _ramp(
    value: float,
    slope: tuple[float, float],
    centre: tuple[float, float],
    x: ArrayLike,
    y: ArrayLike,
) -> NDArray[np.float64]:
    """``value * (1 + slope . ((x, y) - centre))``, vectorised."""
    xa = np.asarray(x, dtype=np.float64)
    ya = np.asarray(y, dtype=np.float64)
    return np.asarray(
        value
        * (1 + slope[0] * (xa - centre[0]) + slope[1] * (ya - centre[1])),
        dtype=np.float64,
    )


@dataclass(frozen=True, eq=False)
class SimulatedImage:
    """A simulated CCD image and its truth.

    Attributes
    ----------
    data : ndarray
        The pixels, ``float32`` or ``uint16`` (see `SimulationParams`).
    header : astropy.io.fits.Header
        Instrument, WCS and truth keywords (``SIM*``).
    params : SimulationParams
        The parameters of this image (for a CCD of an exposure, its own
        FWHM, FWHM variation and PSF angle).
    seed : int
        The seed of this image.
    stars : astropy.table.Table
        One row per star: ``x``, ``y`` (0-based numpy coordinates),
        ``flux`` (ADU), ``mag``, ``fwhm`` (local truth, px), ``snr``
        (optimal PSF photometry), ``peak`` (noiseless peak pixel above
        the sky, ADU) and ``saturated`` (peak + sky >= saturation).
    galaxies : astropy.table.Table
        One row per galaxy: ``x``, ``y``, ``flux``, ``mag``, ``r_e``
        (half-light radius along the major axis before the PSF, px),
        ``q`` (axis ratio), ``theta`` (degrees) and ``snr``.
    cr_mask : ndarray of bool
        Pixels whose cosmic-ray deposit exceeds 0.5 ``sky_rms``.
    cr_events : astropy.table.Table
        One row per cosmic ray: ``x``, ``y`` (deposit-weighted centre),
        ``npix`` (its pixels above the mask threshold), ``kind``
        (``"hit"`` or ``"track"``), ``flux`` (ADU in the image),
        ``length`` (px, 0 for hits) and ``angle`` (degrees, 0 for hits).
    fwhm_slope : tuple of float
        Fractional change of the FWHM per pixel along x and y.
    sky_slope : tuple of float
        Fractional change of the sky per pixel along x and y.
    psf_area : float
        Effective area ``1 / sum(phi**2)`` (px) of the pixel-integrated
        PSF of unit flux centred on a pixel, at the central FWHM.
    bad_columns : tuple of int
        The bad columns (0-based), sorted; see
        `SimulationParams.n_bad_columns`.
    sigma : ndarray of float32 or None
        Expected noise of each pixel, ADU: ``sqrt(m / gain + (read_noise
        / gain)**2)`` of the noiseless image ``m`` (sky and sources,
        without cosmic rays), kept when ``params.layout`` is not
        ``"plain"``.
    """

    data: NDArray[Any]
    header: fits.Header
    params: SimulationParams
    seed: int
    stars: Table
    galaxies: Table
    cr_mask: NDArray[np.bool_]
    cr_events: Table
    fwhm_slope: tuple[float, float]
    sky_slope: tuple[float, float]
    psf_area: float
    bad_columns: tuple[int, ...] = ()
    sigma: NDArray[np.float32] | None = None

    @property
    def _centre(self) -> tuple[float, float]:
        ny, nx = self.params.shape
        return ((nx - 1) / 2, (ny - 1) / 2)

    def fwhm_at(self, x: ArrayLike, y: ArrayLike) -> NDArray[np.float64]:
        """Return the truth FWHM (px) at numpy coordinates ``(x, y)``."""
        return _ramp(self.params.fwhm, self.fwhm_slope, self._centre, x, y)

    def sky_at(self, x: ArrayLike, y: ArrayLike) -> NDArray[np.float64]:
        """Return the noiseless sky level (ADU) at ``(x, y)``."""
        return _ramp(self.params.sky, self.sky_slope, self._centre, x, y)

    @property
    def sky_mean(self) -> float:
        """The exact mean of the noiseless sky map over all pixels, ADU."""
        ny, nx = self.params.shape
        # The map is linear, so its mean is its value at the mean pixel.
        return float(self.sky_at((nx - 1) / 2, (ny - 1) / 2))

    @property
    def sky_rms(self) -> float:
        """The expected pixel noise at the mean sky level, ADU."""
        return self.params.sky_rms

    def to_hdu(self, name: str | None = None) -> fits.ImageHDU:
        """Return the image as an image extension.

        Parameters
        ----------
        name : str, optional
            ``EXTNAME`` of the extension.

        Returns
        -------
        astropy.io.fits.ImageHDU
            The extension; it shares ``data`` with this object.
        """
        header = self.header.copy()
        if name is not None:
            # set the card rather than ``name=``, which upper-cases it
            header["EXTNAME"] = (name, "extension name")
        return fits.ImageHDU(data=self.data, header=header)

    @property
    def saturated(self) -> NDArray[np.bool_]:
        """Pixels at the saturation level (where the simulator clipped)."""
        level = np.asarray(self.params.saturation).astype(self.data.dtype)
        return np.asarray(self.data >= level, dtype=bool)

    def dq(self, coding: Literal["hst", "cp"]) -> NDArray[np.int16]:
        """Return the data-quality flags of every pixel.

        Parameters
        ----------
        coding : {"hst", "cp"}
            ``"hst"``: bits `HST_DQ` or-ed together; ``"cp"``: one code
            of `CP_DQ` per pixel (bad column over saturated over cosmic
            ray).  Cosmic rays are the pixels of `cr_mask`.

        Returns
        -------
        ndarray of int16
            0 for a good pixel.
        """
        codes = HST_DQ if coding == "hst" else CP_DQ
        flags = np.zeros(self.data.shape, dtype=np.int16)
        order = ("cosmic_ray", "saturated", "bad")
        masks = {
            "cosmic_ray": self.cr_mask,
            "saturated": self.saturated,
            "bad": np.zeros(self.data.shape, dtype=bool),
        }
        masks["bad"][:, list(self.bad_columns)] = True
        for what in order:
            if coding == "hst":
                flags[masks[what]] |= codes[what]
            else:
                flags[masks[what]] = codes[what]
        return flags

    def _need_sigma(self) -> NDArray[np.float32]:
        if self.sigma is None:
            raise InvalidParameterError(
                "the per-pixel sigma was not kept: simulate with a layout "
                "other than 'plain'"
            )
        return self.sigma

    def inverse_variance(self) -> NDArray[np.float32]:
        """Return the CP-style weight: ``1 / sigma**2``, 0 where flagged.

        Raises
        ------
        InvalidParameterError
            If the image was simulated with the ``"plain"`` layout.
        """
        sigma = self._need_sigma()
        weight = np.asarray(1.0 / np.square(sigma, dtype=np.float64))
        weight[self.dq("cp") != 0] = 0.0
        return weight.astype(np.float32)

    def hst_hdus(self, extver: int = 1) -> list[fits.ImageHDU]:
        """Return the ``SCI``, ``ERR`` and ``DQ`` extensions of this CCD.

        ``SCI`` holds the pixels and the whole header, ``ERR`` the
        per-pixel sigma (`sigma`, ADU, float32) and ``DQ`` the `HST_DQ`
        flags (int16); ``ERR`` and ``DQ`` carry the WCS.  All three have
        ``EXTVER = extver``.

        Raises
        ------
        InvalidParameterError
            If the image was simulated with the ``"plain"`` layout.
        """
        sigma = self._need_sigma()
        sci = self.header.copy()
        sci["EXTNAME"] = ("SCI", "extension name")
        sci["EXTVER"] = (extver, "extension version (chip)")
        aux = fits.Header()
        for key in ("EXTNAME", "EXTVER", "BUNIT", "CCDNAME"):
            if key in sci:
                aux[key] = (sci[key], sci.comments[key])
        for key, _, _ in _wcs_cards(self.params, (0.0, 0.0)):
            aux[key] = (sci[key], sci.comments[key])
        err = aux.copy()
        err["EXTNAME"] = ("ERR", "extension name")
        dq = aux.copy()
        dq["EXTNAME"] = ("DQ", "extension name")
        dq["BUNIT"] = ("UNITLESS", "bit flags, see HST_DQ")
        return [
            fits.ImageHDU(data=self.data, header=sci),
            fits.ImageHDU(data=sigma, header=err),
            fits.ImageHDU(data=self.dq("hst"), header=dq),
        ]

    def cp_header(self, name: str) -> fits.Header:
        """Return the extension header of this CCD in the CP trio.

        It is the simulation header plus the cards the NOIRLab Community
        Pipeline writes in every extension of its ``ooi``, ``oow`` and
        ``ood`` files: ``FWHM`` (the CP's seeing, px; here the truth
        pixel-free FWHM at the CCD centre), ``ELLIPTIC`` (1 - B/A of the
        truth PSF, SExtractor's ELLIPTICITY), ``AVSKY``, ``AVSIG``
        (truth sky and its noise), ``GAINA``/``GAINB``,
        ``RDNOISEA``/``RDNOISEB``, ``SATURATA``/``SATURATB``,
        ``DETPOS``, and ``WTMAP``/``BPM`` naming the companions.
        """
        p = self.params
        header = self.header.copy()
        header["EXTNAME"] = (name, "extension name")
        cards: tuple[tuple[str, Any, str], ...] = (
            ("DETPOS", name, "detector position ID"),
            ("GAINA", p.gain, "[e-/ADU] gain, amplifier A"),
            ("GAINB", p.gain, "[e-/ADU] gain, amplifier B"),
            ("RDNOISEA", p.read_noise, "[electrons] read noise, amp A"),
            ("RDNOISEB", p.read_noise, "[electrons] read noise, amp B"),
            ("SATURATA", p.saturation, "[ADU] saturation, amp A"),
            ("SATURATB", p.saturation, "[ADU] saturation, amp B"),
            ("FWHM", p.fwhm, "Median FWHM in pixels (truth, pixel-free)"),
            (
                "ELLIPTIC",
                2 * p.ellipticity / (1 + p.ellipticity),
                "Median ELLIPTICITY (truth 1 - B/A)",
            ),
            ("AVSKY", self.sky_mean, "[ADU] mean sky (truth)"),
            ("AVSIG", self.sky_rms, "[ADU] sky noise (truth)"),
            ("WTMAP", f"oow[{name}]", "inverse-variance weight map"),
            ("BPM", f"ood[{name}]", "data-quality map"),
        )
        for key, value, comment in cards:
            header[key] = (value, comment)
        return header


# --------------------------------------------------------------------------
# The PSF


def _moffat_alphas(
    fwhm: NDArray[np.float64] | float, beta: float, ellipticity: float
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """Major- and minor-axis Moffat scale lengths for a mean FWHM."""
    alpha = np.asarray(fwhm, dtype=np.float64) / (
        2 * math.sqrt(2 ** (1 / beta) - 1)
    )
    return alpha * (1 + ellipticity), alpha * (1 - ellipticity)


def _quadratic_form(
    a: NDArray[np.float64], b: NDArray[np.float64], theta: float
) -> tuple[NDArray[np.float64], NDArray[np.float64], NDArray[np.float64]]:
    """Coefficients of ``(x'/a)**2 + (y'/b)**2 = A x² + B x y + C y²``."""
    c, s = math.cos(math.radians(theta)), math.sin(math.radians(theta))
    ia2, ib2 = 1 / a**2, 1 / b**2
    return (
        c * c * ia2 + s * s * ib2,
        2 * c * s * (ia2 - ib2),
        s * s * ia2 + c * c * ib2,
    )


def moffat_profile(
    x: ArrayLike,
    y: ArrayLike,
    *,
    x0: float = 0.0,
    y0: float = 0.0,
    fwhm: float,
    beta: float,
    ellipticity: float = 0.0,
    theta: float = 0.0,
    flux: float = 1.0,
) -> NDArray[np.float64]:
    """Evaluate the elliptical Moffat PSF before pixel sampling.

    ``I = flux (beta - 1) / (pi a b) (1 + r²)**-beta`` with
    ``r² = (x'/a)² + (y'/b)²``, ``(x', y')`` the offsets from the centre
    rotated by ``theta``, ``a = alpha (1 + e)``, ``b = alpha (1 - e)``
    and ``alpha = fwhm / (2 sqrt(2**(1/beta) - 1))``: the mean of the
    major- and minor-axis FWHM is ``fwhm`` and ``(A - B) / (A + B) = e``.

    Parameters
    ----------
    x, y : array_like
        Where to evaluate, numpy coordinates (pixels).
    x0, y0 : float
        Centre.
    fwhm : float
        Mean FWHM, pixels.
    beta : float
        Moffat exponent (> 1).
    ellipticity : float
        ``(A - B) / (A + B)``.
    theta : float
        Position angle of the major axis, degrees counter-clockwise
        from +x.
    flux : float
        Total flux.

    Returns
    -------
    ndarray
        Surface brightness, flux per square pixel.
    """
    a, b = _moffat_alphas(fwhm, beta, ellipticity)
    qa, qb, qc = _quadratic_form(a, b, theta)
    dx = np.asarray(x, dtype=np.float64) - x0
    dy = np.asarray(y, dtype=np.float64) - y0
    r2 = qa * dx * dx + qb * dx * dy + qc * dy * dy
    norm = flux * (beta - 1) / (math.pi * float(a) * float(b))
    return np.asarray(norm * (1 + r2) ** -beta, dtype=np.float64)


@lru_cache(maxsize=16)
def _gauss_legendre(order: int) -> tuple[NDArray[np.float64], ...]:
    """Nodes on [-0.5, 0.5] and weights summing to 1."""
    nodes, weights = np.polynomial.legendre.leggauss(order)
    return 0.5 * nodes, 0.5 * weights


def _moffat_pixels(
    dx: NDArray[np.float64],
    dy: NDArray[np.float64],
    a: NDArray[np.float64],
    b: NDArray[np.float64],
    *,
    beta: float,
    theta: float,
    order: int,
) -> NDArray[np.float64]:
    """Pixel integrals of unit-flux Moffat profiles, a batch at once.

    Parameters
    ----------
    dx, dy : ndarray, shape (n, W) and (n, H)
        Offsets of the pixel centres from the centre of each profile.
    a, b : ndarray, shape (n,)
        Major- and minor-axis scale lengths.
    beta, theta : float
        Moffat exponent and position angle (degrees).
    order : int
        Gauss-Legendre nodes per pixel and axis.

    Returns
    -------
    ndarray, shape (n, H, W)
        The integral of each profile over each pixel.
    """
    nodes, weights = _gauss_legendre(order)
    n, width = dx.shape
    height = dy.shape[1]
    ux = (dx[:, :, None] + nodes).reshape(n, width * order)
    uy = (dy[:, :, None] + nodes).reshape(n, height * order)
    qa, qb, qc = _quadratic_form(a, b, theta)
    row = (qc[:, None] * uy * uy + 1)[:, :, None]
    col = (qa[:, None] * ux * ux)[:, None, :]
    r2 = row + col
    if np.any(qb != 0):
        r2 += (qb[:, None] * uy)[:, :, None] * ux[:, None, :]
    np.power(r2, -beta, out=r2)
    per_row = r2.reshape(n, height, order, width, order) @ weights
    pixels = np.einsum("q,nhqw->nhw", weights, per_row)
    norm = (beta - 1) / (np.pi * a * b)
    return np.asarray(pixels * norm[:, None, None], dtype=np.float64)


def render_psf_stamp(
    shape: tuple[int, int],
    *,
    x: float,
    y: float,
    fwhm: float,
    beta: float,
    ellipticity: float = 0.0,
    theta: float = 0.0,
    flux: float = 1.0,
    gl_order: int = 6,
) -> NDArray[np.float64]:
    """Integrate the Moffat PSF over every pixel of a stamp.

    Every pixel gets ``gl_order`` × ``gl_order`` Gauss-Legendre nodes
    (the simulator uses them only in the core of a star and two per
    axis outside it).

    Parameters
    ----------
    shape : tuple of int
        ``(ny, nx)`` of the stamp.
    x, y : float
        Centre of the star in the numpy coordinates of the stamp.
    fwhm, beta, ellipticity, theta, flux : float
        The profile, as in `moffat_profile`.
    gl_order : int
        Quadrature nodes per pixel and axis.

    Returns
    -------
    ndarray
        Flux in each pixel.

    Raises
    ------
    InvalidParameterError
        If a parameter is out of range.
    """
    ny, nx = shape
    _check_int("shape[0]", ny, 1, 100_000)
    _check_int("shape[1]", nx, 1, 100_000)
    _check_real("fwhm", fwhm, 0.0, 1e4, lo_open=True)
    _check_real("beta", beta, 1.0, 100.0, lo_open=True)
    _check_real("ellipticity", ellipticity, 0.0, 1.0, hi_open=True)
    _check_int("gl_order", gl_order, 1, 64)
    a, b = _moffat_alphas(
        np.array([fwhm], dtype=np.float64), beta, ellipticity
    )
    out = np.empty((ny, nx), dtype=np.float64)
    dx = (np.arange(nx, dtype=np.float64) - x)[None, :]
    rows = max(1, _BATCH_ELEMENTS // (nx * gl_order * gl_order))
    for j0 in range(0, ny, rows):
        j1 = min(ny, j0 + rows)
        dy = (np.arange(j0, j1, dtype=np.float64) - y)[None, :]
        out[j0:j1] = _moffat_pixels(
            dx, dy, a, b, beta=beta, theta=theta, order=gl_order
        )[0]
    return out * flux


def _moffat_radius(
    flux: NDArray[np.float64],
    a: NDArray[np.float64],
    b: NDArray[np.float64],
    *,
    beta: float,
    threshold: float,
) -> NDArray[np.float64]:
    """Radius along the major axis where a Moffat falls to ``threshold``."""
    peak = flux * (beta - 1) / (np.pi * a * b)
    ratio = np.maximum(peak / threshold, 1.0) ** (1 / beta)
    return np.asarray(a * np.sqrt(ratio - 1), dtype=np.float64)


def _star_half_sizes(
    flux: NDArray[np.float64],
    a: NDArray[np.float64],
    b: NDArray[np.float64],
    *,
    beta: float,
    core_half: int,
    threshold: float,
) -> NDArray[np.intp]:
    """Stamp half-sizes for the stars.

    A stamp reaches down to ``threshold`` ADU per pixel and holds at
    least ``1 - _STAR_LOST_FLUX`` of the flux (up to `_MAX_LOST_ALPHAS`
    scale lengths, which matters only for beta < 2).
    """
    depth = _moffat_radius(flux, a, b, beta=beta, threshold=threshold)
    # flux outside radius R: (1 + R²/a²)**(1 - beta) for a circular Moffat
    enclosing = a * min(
        math.sqrt(_STAR_LOST_FLUX ** (1 / (1 - beta)) - 1), _MAX_LOST_ALPHAS
    )
    radius = np.maximum(depth, enclosing) + 1
    steps = np.ceil(np.maximum(radius - core_half, 0) / _STAR_HALF_STEP)
    half = core_half + _STAR_HALF_STEP * steps
    return np.minimum(half, max(_MAX_STAR_HALF, core_half)).astype(np.intp)


def _star_stamps(
    dx0: NDArray[np.float64],
    dy0: NDArray[np.float64],
    a: NDArray[np.float64],
    b: NDArray[np.float64],
    *,
    beta: float,
    theta: float,
    half: int,
    core_half: int,
    order: int,
) -> NDArray[np.float64]:
    """Unit-flux star stamps of half-size ``half`` (a batch).

    The central ``2 core_half + 1`` pixels are integrated with ``order``
    nodes per axis, the others with `_OUTER_GL_ORDER`.
    """
    core_half = min(core_half, half)
    pc = np.arange(-core_half, core_half + 1, dtype=np.float64)
    core = _moffat_pixels(
        pc - dx0[:, None],
        pc - dy0[:, None],
        a,
        b,
        beta=beta,
        theta=theta,
        order=order,
    )
    if half == core_half:
        return core
    p = np.arange(-half, half + 1, dtype=np.float64)
    stamps = _moffat_pixels(
        p - dx0[:, None],
        p - dy0[:, None],
        a,
        b,
        beta=beta,
        theta=theta,
        order=_OUTER_GL_ORDER,
    )
    inner = slice(half - core_half, half + core_half + 1)
    stamps[:, inner, inner] = core
    return stamps


def _add_stamp(
    image: NDArray[np.float64], stamp: NDArray[np.float64], j0: int, i0: int
) -> tuple[slice, slice, slice, slice] | None:
    """Add ``stamp`` with its corner at pixel ``(j0, i0)``; clip at edges.

    Returns the image and stamp slices used, or None if the stamp misses
    the image.
    """
    ny, nx = image.shape
    h, w = stamp.shape
    ja, jb = max(j0, 0), min(j0 + h, ny)
    ia, ib = max(i0, 0), min(i0 + w, nx)
    if ja >= jb or ia >= ib:
        return None
    img = (slice(ja, jb), slice(ia, ib))
    sub = (slice(ja - j0, jb - j0), slice(ia - i0, ib - i0))
    image[img] += stamp[sub]
    return (*img, *sub)


# --------------------------------------------------------------------------
# Galaxies


@lru_cache(maxsize=16)
def _moffat_transform_table(beta: float) -> NDArray[np.float64]:
    """Fourier transform of the unit circular Moffat, on a regular grid.

    ``T(s) = 2 (pi s)**nu K_nu(2 pi s) / Gamma(nu)``, ``nu = beta - 1``,
    the transform of ``(beta - 1) / pi (1 + r²)**-beta`` at spatial
    frequency ``s`` (cycles per unit length); ``T(0) = 1``.
    """
    nu = beta - 1
    s = np.arange(1, round(_FT_MAX / _FT_STEP) + 1) * _FT_STEP
    z = 2 * np.pi * s
    with np.errstate(divide="ignore", over="ignore", invalid="ignore"):
        log_t = (
            math.log(2)
            + nu * np.log(np.pi * s)
            + np.log(special.kve(nu, z))
            - z
            - special.gammaln(nu)
        )
    values = np.where(np.isfinite(log_t), np.exp(log_t), 0.0)
    return np.concatenate(([1.0], values))


def _lookup(table: NDArray[np.float64], s: NDArray[np.float64]) -> Any:
    """Linear interpolation of a `_moffat_transform_table` at ``s`` >= 0."""
    last = table.size - 1
    pos = np.minimum(s * (1 / _FT_STEP), last)
    index = pos.astype(np.intp)
    np.minimum(index, last - 1, out=index)
    frac = pos - index
    lower = table[index]
    return lower + frac * (table[index + 1] - lower)


def _galaxy_batch(
    size: int,
    *,
    dx0: NDArray[np.float64],
    dy0: NDArray[np.float64],
    scale: NDArray[np.float64],
    q: NDArray[np.float64],
    angle: NDArray[np.float64],
    a: NDArray[np.float64],
    b: NDArray[np.float64],
    beta: float,
    theta: float,
) -> NDArray[np.float64]:
    """Unit-flux pixel images of PSF-convolved exponential discs.

    The image is the inverse DFT of the pixel samples' spectrum,
    ``sum_n f(nu + n) exp(-2 pi i (nu + n) . d)`` (Poisson summation),
    with ``f`` the product of the analytic transforms of the disc, the
    Moffat PSF and the pixel box: exact pixel integrals, up to aliases
    below `_ALIAS_TOLERANCE` and to light folded from beyond the stamp.

    Parameters
    ----------
    size : int
        Stamp size; offset 0 is at index ``size // 2``.
    dx0, dy0 : ndarray, shape (n,)
        Centre of each galaxy relative to the stamp's central pixel.
    scale, q, angle : ndarray, shape (n,)
        Exponential scale length (major axis, px), axis ratio and
        position angle (degrees) of each disc.
    a, b : ndarray, shape (n,)
        Moffat scale lengths of the local PSF.
    beta, theta : float
        Moffat exponent and position angle.

    Returns
    -------
    ndarray, shape (n, size, size)
        The stamps; each sums to 1.
    """
    table = _moffat_transform_table(beta)
    fy = sp_fft.fftfreq(size)
    fx = sp_fft.rfftfreq(size)
    c, s = math.cos(math.radians(theta)), math.sin(math.radians(theta))
    pa = (a * c) ** 2 + (b * s) ** 2
    pb = 2 * c * s * (a * a - b * b)
    pc = (a * s) ** 2 + (b * c) ** 2
    cg, sg = np.cos(np.radians(angle)), np.sin(np.radians(angle))
    k = (2 * np.pi * scale) ** 2
    ga = k * (cg * cg + (q * sg) ** 2)
    gb = k * 2 * cg * sg * (1 - q * q)
    gc = k * (sg * sg + (q * cg) ** 2)
    sharpest = float(np.min(b))
    spectrum = np.zeros((dx0.size, size, fx.size), dtype=np.complex128)
    for ny_ in range(-2, 3):
        for nx_ in range(-2, 3):
            # distance from the origin of the nearest frequency of this
            # alias: vx + nx_ with vx in [0, 0.5], vy + ny_ with |vy| <= 0.5
            dist = math.hypot(
                nx_ if nx_ >= 0 else -nx_ - 0.5, max(0, abs(ny_) - 0.5)
            )
            weight = _lookup(table, np.array([sharpest * dist]))[0]
            if weight < _ALIAS_TOLERANCE:
                continue
            vx = fx + nx_
            vy = fy + ny_
            vxy = vy[:, None] * vx[None, :]
            psf_s2 = (
                (pa[:, None] * vx * vx)[:, None, :]
                + (pc[:, None] * vy * vy)[:, :, None]
                + pb[:, None, None] * vxy
            )
            term = _lookup(table, np.sqrt(psf_s2, out=psf_s2))
            disc = (
                (ga[:, None] * vx * vx)[:, None, :]
                + (gc[:, None] * vy * vy + 1)[:, :, None]
                + gb[:, None, None] * vxy
            )
            term *= np.power(disc, -1.5, out=disc)
            col = np.sinc(vx) * np.exp(-2j * np.pi * vx * dx0[:, None])
            row = np.sinc(vy) * np.exp(-2j * np.pi * vy * dy0[:, None])
            spectrum += term * row[:, :, None] * col[:, None, :]
    stamps = sp_fft.irfft2(spectrum, s=(size, size), axes=(1, 2))
    return np.asarray(sp_fft.fftshift(stamps, axes=(1, 2)), dtype=np.float64)


def _galaxy_sizes(
    flux: NDArray[np.float64],
    scale: NDArray[np.float64],
    q: NDArray[np.float64],
    a: NDArray[np.float64],
    b: NDArray[np.float64],
    *,
    beta: float,
    threshold: float,
) -> NDArray[np.intp]:
    """FFT stamp sizes holding each galaxy down to ``threshold`` ADU."""
    central = flux / (2 * np.pi * scale * scale * q)
    disc = scale * np.log(np.maximum(central / threshold, np.e))
    psf = _moffat_radius(flux, a, b, beta=beta, threshold=threshold)
    width = 2 * (np.minimum(disc, 30 * scale) + psf) + 3
    ladder = np.asarray(_GALAXY_SIZES)
    index = np.minimum(np.searchsorted(ladder, width), ladder.size - 1)
    return np.asarray(ladder[index], dtype=np.intp)


# --------------------------------------------------------------------------
# Cosmic rays


def _cosmic_rays(
    rng: np.random.Generator, params: SimulationParams
) -> tuple[NDArray[np.intp], NDArray[np.float64], Table]:
    """Draw the cosmic rays.

    Returns the sorted flat indices of the touched pixels, the total
    deposit there (ADU) and the events table.
    """
    ny, nx = params.shape
    threshold = _CR_MASK_NSIGMA * params.sky_rms
    pieces: list[tuple[NDArray[np.intp], NDArray[np.float64]]] = []
    rows: list[tuple[float, float, int, str, float, float, float]] = []

    def record(
        jj: NDArray[np.intp],
        ii: NDArray[np.intp],
        adu: NDArray[np.float64],
        *,
        kind: str,
        length: float,
        angle: float,
    ) -> None:
        inside = (jj >= 0) & (jj < ny) & (ii >= 0) & (ii < nx) & (adu > 0)
        jj, ii, adu = jj[inside], ii[inside], adu[inside]
        total = float(adu.sum())
        if total > 0:
            x = float(np.dot(ii, adu) / total)
            y = float(np.dot(jj, adu) / total)
        else:
            x = y = math.nan
        rows.append(
            (
                x,
                y,
                int(np.count_nonzero(adu > threshold)),
                kind,
                total,
                length,
                angle,
            )
        )
        pieces.append((jj * nx + ii, adu))

    lo, hi = np.log(_CR_HIT_ADU)
    for _ in range(params.n_cr_hits):
        j = int(rng.integers(ny))
        i = int(rng.integers(nx))
        npix = int(rng.integers(1, 5))
        amplitude = float(np.exp(rng.uniform(lo, hi)))
        pixels = [(j, i)]
        while len(pixels) < npix:
            bj, bi = pixels[int(rng.integers(len(pixels)))]
            dj, di = _NEIGHBOURS[int(rng.integers(4))]
            if (bj + dj, bi + di) not in pixels:
                pixels.append((bj + dj, bi + di))
        adu = amplitude * np.concatenate(
            ([1.0], rng.uniform(0.3, 1.0, size=npix - 1))
        )
        where = np.array(pixels, dtype=np.intp)
        record(
            where[:, 0], where[:, 1], adu, kind="hit", length=0.0, angle=0.0
        )

    lo, hi = np.log(_CR_TRACK_ADU)
    sub = (np.arange(_CR_SUBSAMPLES) + 0.5) / _CR_SUBSAMPLES - 0.5
    for _ in range(params.n_cr_tracks):
        length = float(rng.uniform(*_CR_TRACK_LENGTH))
        angle = float(rng.uniform(0.0, 180.0))
        xc = float(rng.uniform(-0.5, nx - 0.5))
        yc = float(rng.uniform(-0.5, ny - 0.5))
        deposit = float(np.exp(rng.uniform(lo, hi)))
        ux, uy = math.cos(math.radians(angle)), math.sin(math.radians(angle))
        hx = abs(ux) * length / 2 + 1
        hy = abs(uy) * length / 2 + 1
        ii = np.arange(math.floor(xc - hx), math.ceil(xc + hx) + 1)
        jj = np.arange(math.floor(yc - hy), math.ceil(yc + hy) + 1)
        sx = (ii[:, None] + sub).ravel() - xc
        sy = (jj[:, None] + sub).ravel() - yc
        along = sx[None, :] * ux + sy[:, None] * uy
        across = sy[:, None] * ux - sx[None, :] * uy
        inside = (np.abs(along) <= length / 2) & (np.abs(across) <= 0.5)
        cover = inside.reshape(
            jj.size, _CR_SUBSAMPLES, ii.size, _CR_SUBSAMPLES
        ).mean(axis=(1, 3))
        gj, gi = np.meshgrid(jj, ii, indexing="ij")
        record(
            gj.ravel(),
            gi.ravel(),
            deposit * cover.ravel(),
            kind="track",
            length=length,
            angle=angle,
        )

    if pieces:
        flat = np.concatenate([p[0] for p in pieces])
        adu = np.concatenate([p[1] for p in pieces])
    else:
        flat = np.zeros(0, dtype=np.intp)
        adu = np.zeros(0)
    index, inverse = np.unique(flat, return_inverse=True)
    total = np.bincount(inverse, weights=adu, minlength=index.size)
    events = Table(
        rows=rows or None,
        names=("x", "y", "npix", "kind", "flux", "length", "angle"),
        dtype=(float, float, int, "U5", float, float, float),
        units=("pix", "pix", None, None, "adu", "pix", "deg"),
    )
    return (index.astype(np.intp), np.asarray(total, dtype=np.float64), events)


# --------------------------------------------------------------------------
# The simulation


def _power_law(
    rng: np.random.Generator, n: int, lo: float, hi: float
) -> NDArray[np.float64]:
    """Draw from dN/dF ∝ F**-_FLUX_SLOPE on [lo, hi]."""
    k = 1 - _FLUX_SLOPE
    u = rng.uniform(size=n)
    return np.asarray(
        (lo**k + u * (hi**k - lo**k)) ** (1 / k), dtype=np.float64
    )


def _random_slope(
    rng: np.random.Generator, amplitude: float, shape: tuple[int, int]
) -> tuple[float, float]:
    """Draw a ramp along a random direction, ``amplitude`` peak to peak.

    The ramp ``slope . (p - centre)`` takes values in exactly
    ``[-amplitude / 2, amplitude / 2]`` over the pixel centres.
    """
    ny, nx = shape
    phi = rng.uniform(0.0, 2 * np.pi)
    ux, uy = math.cos(phi), math.sin(phi)
    extent = abs(ux) * (nx - 1) + abs(uy) * (ny - 1)
    return (amplitude * ux / extent, amplitude * uy / extent)


def _wcs_cards(
    params: SimulationParams, crpix: tuple[float, float]
) -> list[tuple[str, Any, str]]:
    """Describe a TAN WCS, north up and east left, as header cards."""
    scale = params.pixscale / 3600
    return [
        ("WCSAXES", 2, "number of WCS axes"),
        ("CTYPE1", "RA---TAN", "gnomonic projection"),
        ("CTYPE2", "DEC--TAN", "gnomonic projection"),
        ("CUNIT1", "deg", ""),
        ("CUNIT2", "deg", ""),
        ("CRVAL1", params.ra, "[deg] RA of the tangent point"),
        ("CRVAL2", params.dec, "[deg] Dec of the tangent point"),
        ("CRPIX1", crpix[0], "tangent point, FITS pixel x"),
        ("CRPIX2", crpix[1], "tangent point, FITS pixel y"),
        ("CD1_1", -scale, "[deg/px] east left"),
        ("CD1_2", 0.0, ""),
        ("CD2_1", 0.0, ""),
        ("CD2_2", scale, "[deg/px] north up"),
        ("RADESYS", "ICRS", ""),
        ("EQUINOX", 2000.0, ""),
    ]


def _header(
    params: SimulationParams,
    *,
    seed: int,
    fwhm_slope: tuple[float, float],
    sky_slope: tuple[float, float],
    psf_area: float,
    crpix: tuple[float, float] | None,
    extra: Sequence[tuple[str, Any, str]],
) -> fits.Header:
    """Build the header of a simulated image."""
    ny, nx = params.shape
    if crpix is None:
        crpix = ((nx + 1) / 2, (ny + 1) / 2)
    cards: list[tuple[str, Any, str]] = [
        ("OBJECT", "QualityFITS simulation", ""),
        ("BUNIT", "adu", "pixel unit"),
        ("FILTER", "r", "filter"),
        ("EXPTIME", params.exptime, "[s] exposure time"),
        ("GAIN", params.gain, "[e-/ADU] gain"),
        ("RDNOISE", params.read_noise, "[e-] read noise"),
        ("SATURATE", params.saturation, "[ADU] saturation level"),
        ("PHOTZP", params.zeropoint, "[mag] zero point, flux in ADU"),
        ("PIXSCAL1", params.pixscale, "[arcsec/px] pixel scale along x"),
        ("PIXSCAL2", params.pixscale, "[arcsec/px] pixel scale along y"),
        *_wcs_cards(params, crpix),
        ("SIMFWHM", params.fwhm, "[px] truth PSF FWHM at the image centre"),
        (
            "SIMFWVAR",
            params.fwhm_variation,
            "truth peak-to-peak fractional FWHM variation",
        ),
        ("SIMFWGX", fwhm_slope[0], "[1/px] fractional FWHM slope along x"),
        ("SIMFWGY", fwhm_slope[1], "[1/px] fractional FWHM slope along y"),
        ("SIMBETA", params.beta, "truth Moffat beta"),
        ("SIMELLIP", params.ellipticity, "truth PSF (A-B)/(A+B)"),
        ("SIMTHETA", params.theta, "[deg] truth PSF major axis, CCW from +x"),
        ("SIMSKY", params.sky, "[ADU] truth mean sky level"),
        (
            "SIMSKYGR",
            params.sky_gradient,
            "truth peak-to-peak fractional sky gradient",
        ),
        ("SIMSKGX", sky_slope[0], "[1/px] fractional sky slope along x"),
        ("SIMSKGY", sky_slope[1], "[1/px] fractional sky slope along y"),
        ("SIMSKRMS", params.sky_rms, "[ADU] truth noise at the mean sky"),
        ("SIMPSFA", psf_area, "[px] truth PSF effective area at SIMFWHM"),
        ("SIMNSTAR", params.n_stars, "number of simulated stars"),
        ("SIMNGAL", params.n_galaxies, "number of simulated galaxies"),
        ("SIMSEED", seed, "random seed of this image"),
        *extra,
    ]
    header = fits.Header()
    for key, value, comment in cards:
        header[key] = (value, comment)
    return header


@dataclass(frozen=True)
class _Scene:
    """The smooth fields of one image: PSF, sky and noise."""

    params: SimulationParams
    fwhm_slope: tuple[float, float]
    sky_slope: tuple[float, float]

    @property
    def centre(self) -> tuple[float, float]:
        """Centre of the image, numpy coordinates."""
        ny, nx = self.params.shape
        return ((nx - 1) / 2, (ny - 1) / 2)

    def fwhm(self, x: ArrayLike, y: ArrayLike) -> NDArray[np.float64]:
        """Return the local PSF FWHM."""
        return _ramp(self.params.fwhm, self.fwhm_slope, self.centre, x, y)

    def sky(self, x: ArrayLike, y: ArrayLike) -> NDArray[np.float64]:
        """Return the local sky level."""
        return _ramp(self.params.sky, self.sky_slope, self.centre, x, y)

    def noise(self, x: ArrayLike, y: ArrayLike) -> NDArray[np.float64]:
        """Return the local sky noise, ADU."""
        gain = self.params.gain
        read = self.params.read_noise / gain
        return np.sqrt(self.sky(x, y) / gain + read * read)

    def alphas(
        self, x: ArrayLike, y: ArrayLike
    ) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
        """Return the local Moffat scale lengths (major, minor)."""
        return _moffat_alphas(
            self.fwhm(x, y), self.params.beta, self.params.ellipticity
        )

    @property
    def core_half(self) -> int:
        """Half-size of the quadrature core of every star stamp."""
        ny, nx = self.params.shape
        corners = self.fwhm(
            [-0.5, nx - 0.5, -0.5, nx - 0.5],
            [-0.5, -0.5, ny - 0.5, ny - 0.5],
        )
        return math.ceil(_CORE_FWHMS * float(np.max(corners)))

    @property
    def depth(self) -> float:
        """Noise level that sets how far sources are rendered, ADU."""
        return max(self.params.sky_rms, 1 / self.params.gain)

    def sky_map(self) -> NDArray[np.float64]:
        """Return the noiseless sky image."""
        ny, nx = self.params.shape
        return self.sky(
            np.arange(nx, dtype=np.float64)[None, :],
            np.arange(ny, dtype=np.float64)[:, None],
        )


def _flux_limits(scene: _Scene) -> tuple[float, float, float]:
    """Return the PSF area at the centre and the faint and bright limits.

    The faint limit has an optimal S/N of `_FAINT_SNR` at the mean sky;
    the bright limit peaks at `_BRIGHT_PEAK` times the saturation level.
    """
    params = scene.params
    beta, gain = params.beta, params.gain
    a, b = _moffat_alphas(np.array([params.fwhm]), beta, params.ellipticity)
    half = max(scene.core_half, math.ceil(10 * params.fwhm))
    unit = _star_stamps(
        np.zeros(1),
        np.zeros(1),
        a,
        b,
        beta=beta,
        theta=params.theta,
        half=half,
        core_half=scene.core_half,
        order=params.gl_order,
    )[0]
    psf_area = float(1 / np.sum(unit * unit))
    snr2 = _FAINT_SNR**2
    faint = (
        snr2 / gain
        + math.sqrt(
            snr2**2 / gain**2 + 4 * snr2 * psf_area * params.sky_rms**2
        )
    ) / 2
    bright = _BRIGHT_PEAK * params.saturation / float(unit.max())
    if bright <= 10 * faint:
        raise InvalidParameterError(
            f"saturation ({params.saturation:g} ADU) is too low for the "
            f"noise: the S/N 5 flux ({faint:.3g} ADU) is not well below "
            f"the flux of a star peaking at {_BRIGHT_PEAK:g}x saturation "
            f"({bright:.3g} ADU)"
        )
    return psf_area, faint, bright


def _add_stars(
    model: NDArray[np.float64],
    scene: _Scene,
    rng: np.random.Generator,
    *,
    faint: float,
    bright: float,
) -> Table:
    """Draw the stars, add them to ``model`` and return their truth."""
    params = scene.params
    ny, nx = params.shape
    beta, theta, gl_order = params.beta, params.theta, params.gl_order
    core_half = scene.core_half
    n = params.n_stars
    x = rng.uniform(-0.5, nx - 0.5, size=n)
    y = rng.uniform(-0.5, ny - 0.5, size=n)
    flux = _power_law(rng, n, faint, bright)
    a, b = scene.alphas(x, y)
    i0 = np.floor(x + 0.5).astype(np.intp)
    j0 = np.floor(y + 0.5).astype(np.intp)
    halves = _star_half_sizes(
        flux,
        a,
        b,
        beta=beta,
        core_half=core_half,
        threshold=_STAR_DEPTH * scene.depth,
    )
    peak = np.zeros(n)
    saturated = np.zeros(n, dtype=bool)
    area = np.zeros(n)
    for half in np.unique(halves):
        members = np.flatnonzero(halves == half)
        per_star = max(
            (2 * min(core_half, half) + 1) ** 2 * gl_order**2,
            (2 * half + 1) ** 2 * _OUTER_GL_ORDER**2,
        )
        chunk = max(1, _BATCH_ELEMENTS // per_star)
        for start in range(0, members.size, chunk):
            batch = members[start : start + chunk]
            stamps = _star_stamps(
                x[batch] - i0[batch],
                y[batch] - j0[batch],
                a[batch],
                b[batch],
                beta=beta,
                theta=theta,
                half=int(half),
                core_half=core_half,
                order=gl_order,
            )
            for k, star in enumerate(batch):
                stamp = stamps[k] * flux[star]
                area[star] = flux[star] ** 2 / np.sum(stamp * stamp)
                used = _add_stamp(
                    model, stamp, int(j0[star] - half), int(i0[star] - half)
                )
                if used is None:
                    continue
                inside = stamp[used[2:]]
                jp, ip = np.unravel_index(np.argmax(inside), inside.shape)
                peak[star] = inside[jp, ip]
                sky = scene.sky(used[1].start + ip, used[0].start + jp)
                saturated[star] = peak[star] + sky >= params.saturation
    snr = flux / np.sqrt(flux / params.gain + area * scene.noise(x, y) ** 2)
    mag = params.zeropoint - 2.5 * np.log10(flux)
    return Table(
        [x, y, flux, mag, scene.fwhm(x, y), snr, peak, saturated],
        names=("x", "y", "flux", "mag", "fwhm", "snr", "peak", "saturated"),
        units=("pix", "pix", "adu", "mag", "pix", None, "adu", None),
    )


def _add_galaxies(
    model: NDArray[np.float64],
    scene: _Scene,
    rng: np.random.Generator,
    *,
    faint: float,
    bright: float,
) -> Table:
    """Draw the galaxies, add them to ``model`` and return their truth."""
    params = scene.params
    ny, nx = params.shape
    n = params.n_galaxies
    x = rng.uniform(-0.5, nx - 0.5, size=n)
    y = rng.uniform(-0.5, ny - 0.5, size=n)
    flux = _power_law(rng, n, faint, bright)
    lo, hi = np.log(params.r_e_range)
    r_e = np.exp(rng.uniform(lo, hi, size=n))
    q = rng.uniform(_MIN_AXIS_RATIO, 1.0, size=n)
    angle = rng.uniform(0.0, 180.0, size=n)
    scale = r_e / _EXP_B
    a, b = scene.alphas(x, y)
    i0 = np.floor(x + 0.5).astype(np.intp)
    j0 = np.floor(y + 0.5).astype(np.intp)
    sizes = _galaxy_sizes(
        flux,
        scale,
        q,
        a,
        b,
        beta=params.beta,
        threshold=_GALAXY_DEPTH * scene.depth,
    )
    area = np.zeros(n)
    for size in np.unique(sizes):
        members = np.flatnonzero(sizes == size)
        chunk = max(1, _BATCH_ELEMENTS // (size * (size // 2 + 1)))
        for start in range(0, members.size, chunk):
            batch = members[start : start + chunk]
            stamps = _galaxy_batch(
                int(size),
                dx0=x[batch] - i0[batch],
                dy0=y[batch] - j0[batch],
                scale=scale[batch],
                q=q[batch],
                angle=angle[batch],
                a=a[batch],
                b=b[batch],
                beta=params.beta,
                theta=params.theta,
            )
            area[batch] = 1 / np.sum(stamps * stamps, axis=(1, 2))
            for k, galaxy in enumerate(batch):
                _add_stamp(
                    model,
                    stamps[k] * flux[galaxy],
                    int(j0[galaxy] - size // 2),
                    int(i0[galaxy] - size // 2),
                )
    snr = flux / np.sqrt(flux / params.gain + area * scene.noise(x, y) ** 2)
    mag = params.zeropoint - 2.5 * np.log10(flux)
    return Table(
        [x, y, flux, mag, r_e, q, angle, snr],
        names=("x", "y", "flux", "mag", "r_e", "q", "theta", "snr"),
        units=("pix", "pix", "adu", "mag", "pix", None, "deg", None),
    )


def _observe(
    model: NDArray[np.float64],
    params: SimulationParams,
    rng: np.random.Generator,
    *,
    cr_index: NDArray[np.intp],
    cr_adu: NDArray[np.float64],
    noise: bool,
) -> NDArray[Any]:
    """Add noise and cosmic rays to ``model``, clip and convert.

    Works on blocks of rows, so that the only full-size work array is
    the output.
    """
    ny, nx = params.shape
    out_dtype = np.float32 if params.dtype == "float32" else np.uint16
    data = np.empty((ny, nx), dtype=out_dtype)
    rows = max(1, _NOISE_BLOCK // nx)
    read_sigma = params.read_noise / params.gain
    for j0 in range(0, ny, rows):
        j1 = min(ny, j0 + rows)
        block = np.maximum(model[j0:j1], 0.0)
        if noise:
            block = rng.poisson(block * params.gain) / params.gain
            block += rng.normal(0.0, read_sigma, size=block.shape)
        lo, hi = np.searchsorted(cr_index, (j0 * nx, j1 * nx))
        block.ravel()[cr_index[lo:hi] - j0 * nx] += cr_adu[lo:hi]
        np.minimum(block, params.saturation, out=block)
        if out_dtype is np.uint16:
            np.rint(block, out=block)
            np.clip(block, 0, 65535, out=block)
        data[j0:j1] = block
    return data


def _bad_columns(
    data: NDArray[Any], params: SimulationParams, rng: np.random.Generator
) -> tuple[int, ...]:
    """Draw the bad columns and spoil them in ``data``, in place."""
    if params.n_bad_columns == 0:
        return ()
    nx = params.shape[1]
    columns = np.sort(
        rng.choice(nx, size=params.n_bad_columns, replace=False)
    )
    hot = _HOT_COLUMN_SIGMAS * params.sky_rms
    for k, column in enumerate(columns):
        if k % 2 == 0:
            data[:, column] = 0
        else:
            raised = data[:, column].astype(np.float64) + hot
            data[:, column] = np.minimum(raised, params.saturation)
    return tuple(int(c) for c in columns)


def _simulate(
    params: SimulationParams,
    *,
    seed: int,
    fwhm_slope: tuple[float, float] | None = None,
    crpix: tuple[float, float] | None = None,
    extra_cards: Sequence[tuple[str, Any, str]] = (),
    noise: bool = True,
) -> SimulatedImage:
    """Simulate one image; see `simulate_image`.

    ``fwhm_slope`` replaces the random FWHM ramp (for the CCDs of an
    exposure), ``crpix`` the reference pixel of the WCS, ``extra_cards``
    are appended to the header, and ``noise=False`` (for tests) leaves
    out the Poisson and read noise.
    """
    _check_int("seed", seed, 0, 2**63 - 1)
    rng = np.random.default_rng(seed)
    random_fwhm_slope = _random_slope(rng, params.fwhm_variation, params.shape)
    scene = _Scene(
        params=params,
        fwhm_slope=random_fwhm_slope if fwhm_slope is None else fwhm_slope,
        sky_slope=_random_slope(rng, params.sky_gradient, params.shape),
    )
    psf_area, faint, bright = _flux_limits(scene)
    model = scene.sky_map()
    stars = _add_stars(model, scene, rng, faint=faint, bright=bright)
    galaxies = _add_galaxies(
        model, scene, rng, faint=faint, bright=_GALAXY_BRIGHT * bright
    )
    cr_index, cr_adu, cr_events = _cosmic_rays(rng, params)
    cr_mask = np.zeros(params.shape, dtype=bool)
    threshold = _CR_MASK_NSIGMA * params.sky_rms
    cr_mask.ravel()[cr_index[cr_adu > threshold]] = True
    sigma = None
    if params.layout != "plain":
        sigma = np.sqrt(
            np.maximum(model, 0.0) / params.gain
            + (params.read_noise / params.gain) ** 2
        ).astype(np.float32)
    data = _observe(
        model, params, rng, cr_index=cr_index, cr_adu=cr_adu, noise=noise
    )
    del model
    bad_columns = _bad_columns(data, params, rng)
    fwhm_slope = (float(scene.fwhm_slope[0]), float(scene.fwhm_slope[1]))
    sky_slope = (float(scene.sky_slope[0]), float(scene.sky_slope[1]))
    header = _header(
        params,
        seed=seed,
        fwhm_slope=fwhm_slope,
        sky_slope=sky_slope,
        psf_area=psf_area,
        crpix=crpix,
        extra=extra_cards,
    )
    return SimulatedImage(
        data=data,
        header=header,
        params=params,
        seed=seed,
        stars=stars,
        galaxies=galaxies,
        cr_mask=cr_mask,
        cr_events=cr_events,
        fwhm_slope=fwhm_slope,
        sky_slope=sky_slope,
        psf_area=psf_area,
        bad_columns=bad_columns,
        sigma=sigma,
    )


def simulate_image(params: SimulationParams, *, seed: int) -> SimulatedImage:
    """Simulate one CCD image with stars, galaxies, sky, noise and CRs.

    Parameters
    ----------
    params : SimulationParams
        What to simulate.
    seed : int
        Seed of `numpy.random.default_rng`, 0 <= seed < 2**63; the
        result depends on nothing else.

    Returns
    -------
    SimulatedImage
        The pixels, header and truth.

    Raises
    ------
    InvalidParameterError
        If the seed is invalid, or the saturation level is too low for
        the noise to leave a range of star fluxes.
    """
    return _simulate(params, seed=seed)


# --------------------------------------------------------------------------
# Exposures


def _mosaic_grid(n_ccds: int, shape: tuple[int, int]) -> tuple[int, int]:
    """Columns and rows of the most nearly square exact mosaic."""
    ny, nx = shape
    best: tuple[float, int, int] | None = None
    for cols in range(1, n_ccds + 1):
        if n_ccds % cols:
            continue
        rows = n_ccds // cols
        badness = abs(math.log(cols * nx / (rows * ny)))
        if best is None or badness <= best[0] + 1e-12:
            best = (badness, cols, rows)
    assert best is not None
    return best[1], best[2]


@dataclass(frozen=True)
class _CcdTask:
    """Everything needed to simulate one CCD of an exposure."""

    params: SimulationParams
    seed: int
    fwhm_slope: tuple[float, float]
    crpix: tuple[float, float]
    cards: tuple[tuple[str, Any, str], ...]
    name: str


def _check_exposure(n_ccds: int, seed: int, jobs: int) -> None:
    """Raise unless the arguments of an exposure are valid."""
    _check_int("n_ccds", n_ccds, 1, 1000)
    _check_int("seed", seed, 0, 2**63 - 1)
    _check_int("jobs", jobs, 1, 1024)


def _exposure_tasks(
    params: SimulationParams, n_ccds: int, seed: int
) -> tuple[list[_CcdTask], fits.Header]:
    """Per-CCD tasks and the primary header of an exposure."""
    ny, nx = params.shape
    cols, rows = _mosaic_grid(n_ccds, params.shape)
    width = cols * nx + (cols - 1) * _GAP_X
    height = rows * ny + (rows - 1) * _GAP_Y
    centre = ((width + 1) / 2, (height + 1) / 2)
    corner = math.hypot(width / 2, height / 2)
    rng = np.random.default_rng(seed)
    seeds = rng.integers(0, 2**63 - 1, size=n_ccds)
    tasks = []
    for k in range(n_ccds):
        row, col = divmod(k, cols)
        x1 = col * (nx + _GAP_X) + 1
        y1 = row * (ny + _GAP_Y) + 1
        dx = x1 + (nx - 1) / 2 - centre[0]
        dy = y1 + (ny - 1) / 2 - centre[1]
        # FWHM = fwhm (1 + A (2 rho² - 1)), rho = radius / corner radius,
        # linearised over the CCD, plus the image's own random ramp
        rho2 = (dx * dx + dy * dy) / corner**2
        fwhm0 = params.fwhm * (1 + _FOCAL_PLANE_FWHM * (2 * rho2 - 1))
        grad = 4 * _FOCAL_PLANE_FWHM * params.fwhm / corner**2 / fwhm0
        extra = _random_slope(rng, params.fwhm_variation, params.shape)
        slope = (grad * dx + extra[0], grad * dy + extra[1])
        variation = abs(slope[0]) * (nx - 1) + abs(slope[1]) * (ny - 1)
        if variation > 1:
            raise InvalidParameterError(
                f"fwhm_variation ({params.fwhm_variation!r}) plus the "
                f"focal-plane variation exceeds 1 on CCD {k}"
            )
        theta = (params.theta + math.degrees(math.atan2(dy, dx))) % 180
        name = f"ccd{k:02d}"
        cards = (
            ("EXTNAME", name, "extension name"),
            ("CCDNAME", name, "CCD name"),
            ("CCDNUM", k, "CCD number"),
            ("DETSIZE", f"[1:{width},1:{height}]", "mosaic size"),
            (
                "DETSEC",
                f"[{x1}:{x1 + nx - 1},{y1}:{y1 + ny - 1}]",
                "section of the mosaic",
            ),
            ("DATASEC", f"[1:{nx},1:{ny}]", "data section"),
        )
        tasks.append(
            _CcdTask(
                params=replace(
                    params,
                    fwhm=fwhm0,
                    fwhm_variation=variation,
                    theta=theta,
                ),
                seed=int(seeds[k]),
                fwhm_slope=slope,
                crpix=(centre[0] - x1 + 1, centre[1] - y1 + 1),
                cards=cards,
                name=name,
            )
        )
    primary = fits.Header()
    for key, value, comment in (
        ("INSTRUME", "QualityFITS-sim", "simulated MegaCam-like mosaic"),
        ("OBJECT", "QualityFITS simulation", ""),
        ("NEXTEND", n_ccds, "number of extensions"),
        ("EXPTIME", params.exptime, "[s] exposure time"),
        ("FILTER", "r", "filter"),
        ("RA_DEG", params.ra, "[deg] mosaic centre"),
        ("DEC_DEG", params.dec, "[deg] mosaic centre"),
        ("DETSIZE", f"[1:{width},1:{height}]", "mosaic size"),
        ("SIMSEED", seed, "random seed of the exposure"),
    ):
        primary[key] = (value, comment)
    return tasks, primary


def _run_task(task: _CcdTask) -> SimulatedImage:
    """Simulate one CCD (module level, for the process pool)."""
    return _simulate(
        task.params,
        seed=task.seed,
        fwhm_slope=task.fwhm_slope,
        crpix=task.crpix,
        extra_cards=task.cards,
    )


def _run_tasks(
    tasks: Sequence[_CcdTask], jobs: int
) -> Iterator[SimulatedImage]:
    """Yield the simulated CCDs in order, at most ``jobs + 1`` in flight."""
    if jobs == 1 or len(tasks) == 1:
        for task in tasks:
            yield _run_task(task)
        return
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=jobs, mp_context=context) as pool:
        pending: deque[Future[SimulatedImage]] = deque()
        queue = iter(tasks)
        for task in queue:
            pending.append(pool.submit(_run_task, task))
            if len(pending) > jobs:
                break
        while pending:
            image = pending.popleft().result()
            following = next(queue, None)
            if following is not None:
                pending.append(pool.submit(_run_task, following))
            yield image


def simulate_exposure(
    params: SimulationParams,
    *,
    n_ccds: int = 36,
    seed: int,
    jobs: int = 1,
) -> tuple[fits.HDUList, list[SimulatedImage]]:
    """Simulate a MegaCam-like mosaic exposure in memory.

    The CCDs (``params.shape`` each) are laid out on the most nearly
    square grid that holds them exactly (9 columns by 4 rows for 36
    CCDs of 4612 x 2048), ``ccd00`` at the lower left, filling rows
    along +x, with gaps of 70 px between columns and 200 px between
    rows.  One TAN projection centred on the mosaic gives each CCD its
    WCS.  The PSF FWHM follows ``fwhm (1 + 0.05 (2 rho² - 1))`` (rho the
    distance from the mosaic centre over the corner distance),
    linearised over each CCD, plus each CCD's own random ramp of
    ``fwhm_variation``; the PSF angle is ``theta`` plus the polar angle
    of the CCD centre.  Each CCD's `SimulatedImage.params` holds its
    own FWHM, variation and angle.

    Parameters
    ----------
    params : SimulationParams
        Parameters of every CCD.
    n_ccds : int
        Number of CCDs.
    seed : int
        Seed of the exposure; the CCDs' seeds are drawn from it.
    jobs : int
        Worker processes; the result does not depend on it.

    Returns
    -------
    astropy.io.fits.HDUList
        An empty primary HDU and one image extension per CCD.
    list of SimulatedImage
        The CCDs with their truth.

    Raises
    ------
    InvalidParameterError
        If ``n_ccds``, ``seed`` or ``jobs`` is invalid.

    Notes
    -----
    This keeps the whole exposure in memory (1.4 GB for 36 full CCDs);
    `write_exposure` streams it to disk instead.
    """
    _check_exposure(n_ccds, seed, jobs)
    tasks, primary = _exposure_tasks(params, n_ccds, seed)
    images = list(_run_tasks(tasks, jobs))
    hdus = fits.HDUList([fits.PrimaryHDU(header=primary)])
    for task, image in zip(tasks, images, strict=True):
        hdus.append(image.to_hdu(name=task.name))
    return hdus, images


def cp_file_names(path: str | Path) -> tuple[Path, Path, Path]:
    """Return the image, weight and data-quality files of a CP trio.

    A name holding ``ooi`` (the CP's image code) gets ``oow`` and
    ``ood`` in its place (``c4d_x_ooi_z.fits`` -> ``c4d_x_oow_z.fits``,
    ``c4d_x_ood_z.fits``); any other name gets ``_oow`` and ``_ood``
    before its ``.fits`` suffix (``sim.fits`` -> ``sim_oow.fits``).
    """
    path = Path(path)
    name = path.name
    if "ooi" in name:
        return (
            path,
            path.with_name(name.replace("ooi", "oow", 1)),
            path.with_name(name.replace("ooi", "ood", 1)),
        )
    stem, dot, rest = name.partition(".fits")
    suffix = dot + rest if dot else ""
    return (
        path,
        path.with_name(f"{stem}_oow{suffix}"),
        path.with_name(f"{stem}_ood{suffix}"),
    )


def _single_primary(params: SimulationParams, seed: int) -> fits.Header:
    """Primary header of a one-CCD file whose image is an extension."""
    primary = fits.Header()
    for key, value, comment in (
        ("INSTRUME", "QualityFITS-sim", "simulated image"),
        ("OBJECT", "QualityFITS simulation", ""),
        ("EXPTIME", params.exptime, "[s] exposure time"),
        ("FILTER", "r", "filter"),
        ("SIMSEED", seed, "random seed of the exposure"),
    ):
        primary[key] = (value, comment)
    return primary


#: A CCD's name and its truth tables (stars, galaxies, cosmic rays).
_Truth = tuple[str, dict[str, Table]]


def _truth_of(name: str, image: SimulatedImage) -> _Truth:
    return name, {
        kind: getattr(image, kind)
        for kind in ("stars", "galaxies", "cr_events")
    }


def _truth_tables(truths: Sequence[_Truth]) -> fits.HDUList:
    """Return the STARS, GALAXIES and COSMICS tables of every CCD."""
    hdus = fits.HDUList([fits.PrimaryHDU()])
    for kind in ("stars", "galaxies", "cr_events"):
        parts = []
        for name, tables in truths:
            table = Table(tables[kind], copy=True)
            table.add_column(
                np.full(len(table), name, dtype="U16"), name="ccd", index=0
            )
            parts.append(table)
        merged = parts[0] if len(parts) == 1 else _vstack(parts)
        hdu = fits.table_to_hdu(merged)
        hdu.name = {"cr_events": "COSMICS"}.get(kind, kind.upper())
        hdus.append(hdu)
    return hdus


def _vstack(tables: list[Table]) -> Table:
    from astropy.table import vstack  # noqa: PLC0415

    return vstack(tables, join_type="exact")


def _write_layout(
    path: Path,
    layout: Layout,
    primary: fits.Header,
    images: Iterator[tuple[str, SimulatedImage]],
    truth: list[_Truth],
) -> None:
    """Write the CCDs in ``layout``, one at a time; collect the truth."""
    targets: tuple[Path, ...] = (path,)
    kinds: tuple[str, ...] = ("image",)
    if layout == "cp":
        targets = cp_file_names(path)
        kinds = ("image", "wtmap", "dqmask")
    for target, kind in zip(targets, kinds, strict=True):
        header = primary.copy()
        if layout == "cp":
            header["PROCTYPE"] = ("InstCal", "Data processing level")
            header["PRODTYPE"] = (kind, "Data product type")
            header["OBSTYPE"] = ("object", "Type of observation")
        else:
            header["TELESCOP"] = ("HST", "HST _flt layout (simulated)")
            header["FILETYPE"] = ("SCI", "type of data found in data file")
        fits.PrimaryHDU(header=header).writeto(target, overwrite=True)
    for k, (name, image) in enumerate(images):
        truth.append(_truth_of(name, image))
        if layout == "hst_flt":
            for hdu in image.hst_hdus(extver=k + 1):
                fits.append(path, hdu.data, hdu.header, verify=False)
            continue
        header = image.cp_header(name)
        planes: tuple[NDArray[Any], ...] = (
            image.data,
            image.inverse_variance(),
            image.dq("cp").astype(np.int32),
        )
        for target, plane in zip(targets, planes, strict=True):
            fits.append(target, plane, header, verify=False)


def write_exposure(
    path: str | Path,
    params: SimulationParams,
    *,
    n_ccds: int = 36,
    seed: int,
    jobs: int = 1,
    truth: str | Path | None = None,
) -> Path:
    """Simulate an exposure and write it CCD by CCD to a FITS file.

    The file is the one `simulate_exposure` would give; at most
    ``jobs + 1`` CCDs are held in memory at a time.  With
    ``n_ccds == 1`` the image goes in the primary HDU instead.  The
    layouts other than ``"plain"`` (`SimulationParams.layout`) always
    have an empty primary: ``"hst_flt"`` writes ``SCI``, ``ERR``, ``DQ``
    per CCD, ``"cp"`` writes the trio `cp_file_names` (``path`` is the
    image; the data-quality file is int32, as the CP's).

    Parameters
    ----------
    path : str or Path
        Output file; overwritten if it exists.
    params : SimulationParams
        Parameters of every CCD.
    n_ccds, seed, jobs : int
        As in `simulate_exposure`.
    truth : str or Path, optional
        Also write the truth here: a FITS file with the tables
        ``STARS``, ``GALAXIES`` and ``COSMICS`` (the `SimulatedImage`
        tables, every source of every CCD, a first column ``ccd``
        naming its CCD: ``ccd00``... or ``image`` for a single CCD).

    Returns
    -------
    Path
        The file written (the image of a CP trio).

    Raises
    ------
    InvalidParameterError
        If ``n_ccds``, ``seed`` or ``jobs`` is invalid.
    """
    _check_exposure(n_ccds, seed, jobs)
    path = Path(path)
    collected: list[_Truth] = []
    if n_ccds == 1:
        image = simulate_image(params, seed=seed)
        name = "ccd00" if params.layout == "cp" else "image"
        if params.layout == "plain":
            header = image.header.copy()
            header["INSTRUME"] = ("QualityFITS-sim", "simulated image")
            fits.PrimaryHDU(data=image.data, header=header).writeto(
                path, overwrite=True
            )
            collected.append(_truth_of(name, image))
        else:
            _write_layout(
                path,
                params.layout,
                _single_primary(params, seed),
                iter([(name, image)]),
                collected,
            )
    else:
        tasks, primary = _exposure_tasks(params, n_ccds, seed)
        names = [task.name for task in tasks]
        if params.layout == "plain":
            fits.PrimaryHDU(header=primary).writeto(path, overwrite=True)
            for name, image in zip(names, _run_tasks(tasks, jobs),
                                   strict=True):
                fits.append(path, image.data, image.header, verify=False)
                collected.append(_truth_of(name, image))
        else:
            _write_layout(
                path,
                params.layout,
                primary,
                zip(names, _run_tasks(tasks, jobs), strict=True),
                collected,
            )
    if truth is not None:
        _truth_tables(collected).writeto(Path(truth), overwrite=True)
    return path


def write_sample(
    path: str | Path,
    *,
    n_ccds: int = 4,
    shape: tuple[int, int] = (2048, 1024),
    seed: int = 2026,
) -> Path:
    """Write the project's demo image, a small simulated mosaic.

    Star, galaxy and cosmic-ray counts scale with the CCD area from the
    `SimulationParams` defaults (600 stars and 1500 galaxies per
    2048 x 2048 pixels); the PSF is a Moffat with FWHM 4 px, beta 3,
    ellipticity 0.05 at 30 degrees, varying by 10 % over each CCD.

    Parameters
    ----------
    path : str or Path
        Output file; overwritten if it exists.
    n_ccds : int
        Number of CCDs (1 writes a single-image file).
    shape : tuple of int
        ``(ny, nx)`` of each CCD.
    seed : int
        Seed.

    Returns
    -------
    Path
        The file written.
    """
    area = shape[0] * shape[1] / 2048**2
    defaults = SimulationParams()
    params = SimulationParams(
        shape=shape,
        fwhm_variation=0.1,
        ellipticity=0.05,
        theta=30.0,
        sky_gradient=0.02,
        n_stars=round(defaults.n_stars * area),
        n_galaxies=round(defaults.n_galaxies * area),
        n_cr_hits=round(defaults.n_cr_hits * area),
        n_cr_tracks=round(defaults.n_cr_tracks * area),
    )
    return write_exposure(path, params, n_ccds=n_ccds, seed=seed)


# --------------------------------------------------------------------------
# Command line


def _parser() -> argparse.ArgumentParser:
    """Build the argument parser of ``qualityfits-simulate``."""
    parser = argparse.ArgumentParser(
        prog="qualityfits-simulate",
        description=(
            "Write a simulated CCD image or MegaCam-like mosaic with "
            "known truth."
        ),
    )
    parser.add_argument("output", type=Path, help="output FITS file")
    parser.add_argument(
        "--ccds",
        type=int,
        default=1,
        help="number of CCDs (1: single image; default 1)",
    )
    parser.add_argument(
        "--shape",
        type=int,
        nargs=2,
        metavar=("NY", "NX"),
        help="CCD shape (default 2048 2048)",
    )
    parser.add_argument(
        "--seed", type=int, default=0, help="random seed (default 0)"
    )
    parser.add_argument(
        "--dtype",
        choices=("float32", "int16"),
        help="pixel type (default float32)",
    )
    parser.add_argument("--fwhm", type=float, help="PSF FWHM, px")
    parser.add_argument("--beta", type=float, help="Moffat beta")
    parser.add_argument("--ellipticity", type=float, help="PSF (A-B)/(A+B)")
    parser.add_argument(
        "--theta", type=float, help="PSF major axis, degrees CCW from +x"
    )
    parser.add_argument(
        "--fwhm-variation",
        type=float,
        help="peak-to-peak fractional FWHM variation across a CCD",
    )
    parser.add_argument("--sky", type=float, help="sky level, ADU")
    parser.add_argument(
        "--sky-gradient",
        type=float,
        help="peak-to-peak fractional sky variation across a CCD",
    )
    parser.add_argument("--gain", type=float, help="gain, e-/ADU")
    parser.add_argument("--read-noise", type=float, help="read noise, e-")
    parser.add_argument(
        "--saturation", type=float, help="saturation level, ADU"
    )
    parser.add_argument(
        "--stars", type=int, dest="n_stars", help="stars per CCD"
    )
    parser.add_argument(
        "--galaxies", type=int, dest="n_galaxies", help="galaxies per CCD"
    )
    parser.add_argument(
        "--cr-hits", type=int, dest="n_cr_hits", help="cosmic-ray hits"
    )
    parser.add_argument(
        "--cr-tracks", type=int, dest="n_cr_tracks", help="cosmic-ray tracks"
    )
    parser.add_argument(
        "--bad-columns",
        type=int,
        dest="n_bad_columns",
        help="bad columns per CCD (half dead, half hot; default 0)",
    )
    parser.add_argument(
        "--mjd-obs",
        type=float,
        metavar="MJD",
        help="start of the exposure, written as MJD-OBS and DATE-OBS "
        "(default: none, as the header of an undated image)",
    )
    parser.add_argument(
        "--airmass", type=float, help="airmass, written as AIRMASS"
    )
    parser.add_argument(
        "--layout",
        choices=LAYOUTS,
        help=(
            "plain: one image HDU per CCD (default); hst_flt: SCI, ERR, "
            "DQ extensions per CCD; cp: NOIRLab CP trio, OUTPUT plus its "
            "_oow (inverse-variance weight) and _ood (data-quality) files"
        ),
    )
    parser.add_argument(
        "--truth",
        type=Path,
        help="also write the truth (STARS, GALAXIES, COSMICS tables) here",
    )
    parser.add_argument(
        "--jobs", type=int, default=1, help="worker processes (default 1)"
    )
    return parser


def _date(path: Path, mjd: float | None, airmass: float | None) -> None:
    """Write when and at what airmass the exposure was taken."""
    if mjd is not None:
        if not (math.isfinite(mjd) and 0 < mjd < 100_000):
            raise InvalidParameterError(
                f"--mjd-obs: {mjd} is not a modified Julian date")
        from astropy.time import Time  # noqa: PLC0415

        fits.setval(path, "MJD-OBS", value=mjd,
                    comment="[d] start of the exposure (simulated)")
        fits.setval(path, "DATE-OBS",
                    value=Time(mjd, format="mjd", scale="utc").isot,
                    comment="start of the exposure, UTC (simulated)")
    if airmass is not None:
        if not (math.isfinite(airmass) and airmass >= 1):
            raise InvalidParameterError(
                f"--airmass: {airmass} is below 1")
        fits.setval(path, "AIRMASS", value=airmass,
                    comment="airmass (simulated)")


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``qualityfits-simulate``.

    Parameters
    ----------
    argv : sequence of str, optional
        Arguments without the program name; default ``sys.argv[1:]``.

    Returns
    -------
    int
        Exit status: 0 on success, 2 for invalid parameters.
    """
    parser = _parser()
    args = parser.parse_args(argv)
    names = (
        "dtype",
        "fwhm",
        "beta",
        "ellipticity",
        "theta",
        "fwhm_variation",
        "sky",
        "sky_gradient",
        "gain",
        "read_noise",
        "saturation",
        "n_stars",
        "n_galaxies",
        "n_cr_hits",
        "n_cr_tracks",
        "n_bad_columns",
        "layout",
    )
    options: dict[str, Any] = {
        name: getattr(args, name)
        for name in names
        if getattr(args, name) is not None
    }
    if args.shape is not None:
        options["shape"] = tuple(args.shape)
    start = time.perf_counter()
    try:
        params = SimulationParams(**options)
        path = write_exposure(
            args.output,
            params,
            n_ccds=args.ccds,
            seed=args.seed,
            jobs=args.jobs,
            truth=args.truth,
        )
        _date(path, args.mjd_obs, args.airmass)
    except InvalidParameterError as exc:
        print(f"qualityfits-simulate: error: {exc}", file=sys.stderr)
        return 2
    ny, nx = params.shape
    kind = "single image" if args.ccds == 1 else f"{args.ccds} CCDs"
    if params.layout == "hst_flt":
        kind += " (SCI, ERR, DQ each)"
    print(
        f"wrote {path}: {kind} of {nx}x{ny} {params.dtype} pixels, "
        f"seed {args.seed}, in {time.perf_counter() - start:.1f} s"
    )
    if params.layout == "cp":
        _, weight, dq = cp_file_names(path)
        print(f"wrote {weight}: inverse-variance weight")
        print(f"wrote {dq}: data quality")
    if args.truth is not None:
        print(f"wrote {args.truth}: truth tables")
    return 0
