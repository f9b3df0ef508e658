"""Every tunable number of the pipeline, in one frozen object.

Defaults follow the TERAPIX QualityFITS/PSFEx configuration where one
exists (see ``docs/metrics.md``); the QA-flag thresholds follow the
TERAPIX grading comments.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any

from qualityfits.errors import InvalidParameterError


@dataclass(frozen=True, kw_only=True)
class QualityConfig:
    """Configuration of an assessment.

    Parameters
    ----------
    back_size : int
        Background mesh size in pixels (SExtractor ``BACK_SIZE``).
    back_filtersize : int
        Median filter over meshes (SExtractor ``BACK_FILTERSIZE``).
    detect_thresh : float
        Detection threshold in units of the background RMS.
    detect_minarea : int
        Minimum number of connected pixels above the threshold.
    detect_filter_fwhm : float
        FWHM [px] of the 7x7 Gaussian detection filter (TERAPIX's
        gauss_3.0_7x7 for QualityFITS); 0 uses sep's 3x3 default.
    deblend_nthresh, deblend_cont : int, float
        SExtractor deblending parameters.
    flat_min, flat_max : float
        Pixels of the master flat outside these bounds, relative to its
        median, are bad (WeightWatcher ``WEIGHT_MIN``/``WEIGHT_MAX`` of
        the TERAPIX runs).
    saturation_margin : float
        A pixel at or above ``saturation_margin`` times the saturation
        level counts as saturated.
    psf_min_snr : float
        Minimum S/N of a PSF star (PSFEx ``SAMPLE_MINSN``).
    psf_detect_thresh, psf_detect_filter_fwhm : float
        PSF stars are "bright sources" as in the original QualityFITS:
        detected at ``psf_detect_thresh`` sigma (at least 3 pixels) in the
        image filtered with a Gaussian of ``psf_detect_filter_fwhm``
        pixels (the TERAPIX PSFEx feed: DETECT_THRESH 10, gauss_3.0_7x7).
    psf_max_ellip : float
        Maximum isophotal (A-B)/(A+B) of a PSF candidate
        (PSFEx ``SAMPLE_MAXELLIP``), from the elongation the bright
        sources share when it exceeds half this (an elongated PSF),
        else from a round shape.
    psf_locus_width : float
        Half-width of the stellar locus, as a fraction of the local
        half-light radius (PSFEx ``SAMPLE_VARIABILITY``).
    psf_fwhm_range : tuple of float
        Allowed FWHM of PSF stars in pixels (PSFEx ``SAMPLE_FWHMRANGE``).
    psf_max_stars : int
        At most this many stars (the highest S/N) are fitted per CCD.
    psf_min_stars : int
        A PSF number is published only when it rests on at least this
        many stars: FWHM, ellipticity, beta, the PSF model and map on
        the fitted PSF stars (NSTAR_FIT), FWHM_RH and ELONG on the
        locus stars (NSTAR_PSF); below it they are null,
        with the ``PSF_WITHHELD`` flag and a note.  20 is where 99 % of
        subsets of simulated PSF stars give the FWHM within 1.5 % and
        95 % the ellipticity within 0.005 of the truth
        (``docs/metrics.md``).
    psf_chi2_clip : float
        Kappa of the clipping of stars on their fit chi-square.
    psf_grid_cells : int
        Cells of the PSF map along the short side of a CCD; the long side
        gets as many as keep the cells square.
    psf_model_oversampling : int
        Oversampling of the empirical PSF model; 0 chooses it from the
        FWHM (finer sampling for sharper images).
    class_nsigma : float
        A source sharper than the local PSF by more than this many
        standard deviations of its SPREAD is an artefact.
    class_star_nsigma : float
        A source broader than the local PSF by more than this many
        standard deviations of its SPREAD (one-sided: 97.7 % of stars
        stay below 2) is not a star.
    class_galaxy_re : float
        Half-light radius [px] of the reference galaxy (an exponential
        disc) that star/galaxy separation must tell from a star; see
        `qualityfits.classify`.
    class_confidence : float
        A source is called a star only where the reference galaxy would
        be told from a star with this confidence.
    class_min_snr : float
        ... and only from this S/N (AUTO) up: fainter, compact galaxies
        and stars cannot be told apart, and faint sources are counted as
        galaxies (at high galactic latitude most of them are).
    count_mag_bin : float
        Width of the magnitude bins of the source counts.
    poor_seeing_arcsec : float
        ``POOR_SEEING`` above this FWHM.
    elongated_ellipticity : float
        ``ELONGATED`` above this (A-B)/(A+B).
    few_psf_stars : int
        ``FEW_PSF_STARS`` below this number of PSF stars.
    psf_varies : float
        ``PSF_VARIES`` when (FWHM_MAX - FWHM_MIN) / FWHM_PIX exceeds this.
    bkg_gradient : float
        ``BKG_ANOMALY`` when (max - min) / mean of the mesh map exceeds
        this ...
    bkg_noise_excess : float
        ... or when SKY_RMS exceeds the noise expected from the sky level,
        gain and read noise by this factor.
    cosmic_rays : bool
        Detect cosmic rays (their pixels are then ignored by every
        measurement and flagged in the flag map).
    cr_protect_psf_cores : bool
        Never flag the cores of sources shaped like the PSF as cosmic
        rays (the PSF's FWHM is estimated from the brightest round
        peaks; see `qualityfits.cosmics.find_cosmic_rays`).  Off:
        L.A.Cosmic's tests alone, which flag many star cores on
        undersampled images (FWHM below ~2.5 px).
    cr_heavy : float
        ``CR_HEAVY`` when the fraction of PSF stars whose core is hit by
        a cosmic ray exceeds this.
    grade_fwhm_arcsec : tuple of float
        The exposure's grade (`qualityfits.grades`) is at best B, C, D
        when its median FWHM exceeds the first, second, third value
        [arcsec].
    grade_ellipticity : tuple of float
        The same limits for the median (A-B)/(A+B).
    grade_missing_frac : tuple of float
        The same limits for the fraction of CCDs not assessed.
    """

    back_size: int = 64
    back_filtersize: int = 3
    detect_thresh: float = 1.5
    detect_minarea: int = 5
    detect_filter_fwhm: float = 3.0
    deblend_nthresh: int = 32
    deblend_cont: float = 0.005
    flat_min: float = 0.7
    flat_max: float = 1.3
    saturation_margin: float = 0.98
    psf_min_snr: float = 20.0
    psf_detect_thresh: float = 10.0
    psf_detect_filter_fwhm: float = 3.0
    psf_max_ellip: float = 0.3
    psf_locus_width: float = 0.2
    psf_fwhm_range: tuple[float, float] = (2.0, 16.0)
    psf_max_stars: int = 150
    psf_min_stars: int = 20
    psf_chi2_clip: float = 4.0
    psf_grid_cells: int = 3
    psf_model_oversampling: int = 0
    class_nsigma: float = 3.0
    class_star_nsigma: float = 2.0
    class_galaxy_re: float = 2.0
    class_confidence: float = 0.9
    class_min_snr: float = 10.0
    count_mag_bin: float = 0.5
    poor_seeing_arcsec: float = 1.2
    elongated_ellipticity: float = 0.1
    few_psf_stars: int = 10
    psf_varies: float = 0.25
    bkg_gradient: float = 0.1
    bkg_noise_excess: float = 1.5
    cosmic_rays: bool = True
    cr_protect_psf_cores: bool = True
    cr_heavy: float = 0.1
    grade_fwhm_arcsec: tuple[float, float, float] = (1.0, 1.2, 2.0)
    grade_ellipticity: tuple[float, float, float] = (0.05, 0.1, 0.2)
    grade_missing_frac: tuple[float, float, float] = (0.0, 0.1, 0.5)

    def __post_init__(self) -> None:
        """Check every value; raise `InvalidParameterError` if one is bad."""
        positive = (
            "back_size", "detect_thresh", "detect_minarea",
            "deblend_nthresh", "saturation_margin", "psf_min_snr",
            "psf_detect_thresh", "psf_detect_filter_fwhm",
            "psf_max_ellip", "psf_locus_width", "psf_max_stars",
            "psf_min_stars",
            "psf_chi2_clip", "psf_grid_cells", "class_nsigma",
            "class_galaxy_re", "class_star_nsigma", "class_min_snr",
            "count_mag_bin", "poor_seeing_arcsec", "elongated_ellipticity",
            "psf_varies", "bkg_gradient", "bkg_noise_excess", "cr_heavy",
        )
        for name in positive:
            if not getattr(self, name) > 0:
                raise InvalidParameterError(
                    f"config {name} must be positive, got "
                    f"{getattr(self, name)!r}"
                )
        lo, hi = self.psf_fwhm_range
        if not 0 < lo < hi:
            raise InvalidParameterError(
                f"config psf_fwhm_range must be 0 < min < max, got "
                f"{self.psf_fwhm_range!r}"
            )
        if not 0 <= self.flat_min < 1 < self.flat_max:
            raise InvalidParameterError(
                f"config flat_min/flat_max must bracket 1, got "
                f"{self.flat_min!r}/{self.flat_max!r}"
            )
        if self.detect_filter_fwhm < 0:
            raise InvalidParameterError(
                f"config detect_filter_fwhm must be >= 0, got "
                f"{self.detect_filter_fwhm!r}"
            )
        if self.back_filtersize < 1 or self.psf_model_oversampling < 0:
            raise InvalidParameterError(
                "config back_filtersize must be >= 1 and "
                "psf_model_oversampling >= 0"
            )
        if not 0.5 < self.class_confidence < 1:
            raise InvalidParameterError(
                f"config class_confidence must be in (0.5, 1), got "
                f"{self.class_confidence!r}"
            )
        for name in ("grade_fwhm_arcsec", "grade_ellipticity",
                     "grade_missing_frac"):
            limits = getattr(self, name)
            if (len(limits) != 3 or not all(math.isfinite(v) and v >= 0
                                             for v in limits)
                    or list(limits) != sorted(limits)):
                raise InvalidParameterError(
                    f"config {name} must be three increasing limits >= 0 "
                    f"(grades B, C, D), got {limits!r}"
                )
        if not 0 < self.deblend_cont <= 1:
            raise InvalidParameterError(
                f"config deblend_cont must be in (0, 1], got "
                f"{self.deblend_cont!r}"
            )

    def to_dict(self) -> dict[str, Any]:
        """Return the configuration as a JSON-friendly dictionary."""
        return {
            k: list(v) if isinstance(v, tuple) else v
            for k, v in asdict(self).items()
        }

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> QualityConfig:
        """Build a configuration, rejecting unknown keys by name."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise InvalidParameterError(
                f"unknown config key(s): {', '.join(unknown)}"
            )
        kwargs: dict[str, Any] = {
            key: tuple(value) if isinstance(value, list) else value
            for key, value in values.items()
        }
        return cls(**kwargs)
