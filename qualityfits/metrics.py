"""The metrics of a CCD: names, units, meanings, and the QA flags.

`METRICS` is the one definition of every per-extension statistic: the
report, its table, the JSON summary and (later) the VOTable all take
their column names, units, UCDs and descriptions from here.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

from qualityfits.config import QualityConfig


@dataclass(frozen=True)
class Metric:
    """Definition of one statistic."""

    name: str
    unit: str
    ucd: str
    description: str
    integer: bool = False
    #: The count of stars the value rests on (``NSTAR_FIT``: the fitted
    #: PSF stars, ``NSTAR_PSF``: the locus stars); it is withheld (NaN)
    #: when that count is below ``QualityConfig.psf_min_stars``.
    rests_on: str = ""


def _m(name: str, unit: str, ucd: str, description: str,
       integer: bool = False, rests_on: str = "") -> Metric:
    return Metric(name, unit, ucd, description, integer, rests_on)


_FIT, _LOCUS = "NSTAR_FIT", "NSTAR_PSF"


def _psf(name: str, unit: str, ucd: str, description: str,
         rests_on: str = _FIT) -> Metric:
    """Define a PSF metric, published only on enough stars."""
    return Metric(name, unit, ucd, description, rests_on=rests_on)


def _err(name: str, unit: str, how: str, rests_on: str = _FIT) -> Metric:
    """Define the standard error of the PSF metric ``name``."""
    return Metric(f"{name}_ERR", unit, "stat.error;instr.det.psf",
                  f"Standard error of {name}: {how}", rests_on=rests_on)




METRICS: tuple[Metric, ...] = (
    _m("SKY_MEAN", "adu", "instr.skyLevel",
       "Sky background: median of the SExtractor mesh mode estimates "
       "with the detected sources masked"),
    _m("SKY_RMS", "adu", "stat.stdev;instr.skyLevel",
       "Sky noise: median of the clipped mesh standard deviations with "
       "the detected sources masked"),
    _m("SKY_MEAN_MASKED", "adu", "instr.skyLevel",
       "The same as SKY_MEAN (its name before SKY_MEAN was masked)"),
    _m("SKY_MEAN_MESH", "adu", "instr.skyLevel",
       "Sky background with the sources in the meshes: SExtractor's "
       "Background_Mean (biased up by faint sources and wings)"),
    _m("SKY_RMS_MESH", "adu", "stat.stdev;instr.skyLevel",
       "Sky noise with the sources in the meshes: SExtractor's "
       "Background_StDev"),
    _m("SKY_MAG", "mag/arcsec**2", "phot.mag.sb;instr.skyLevel",
       "Sky surface brightness, ZP - 2.5 log10(SKY_MEAN / pixscale^2)"),
    _m("SKY_GRAD", "", "instr.skyLevel;arith.ratio",
       "(max - min) / mean of the filtered mesh background map"),
    _m("SKY_LUMPINESS", "", "stat.stdev;instr.skyLevel",
       "Robust scatter of the mesh map about a plane, in units of the "
       "noise of a mesh mean (about 1 for a smooth sky)"),
    _m("SATLEV", "adu", "instr.saturation",
       "Saturation level (header SATURATE, else read off the pixels)"),
    _m("NOBJ", "", "meta.number;src",
       "Sources detected above DETECT_THRESH sigma", integer=True),
    _m("ELLIP_SOURCES", "", "src.ellipticity;stat.median",
       "Elongation the bright sources share: the length of the median "
       "of the isophotal (A-B)/(A+B) vectors (angle doubled) of the "
       "unflagged sources at S/N >= psf_min_snr; galaxies point every "
       "way and cancel, the stars of an elongated PSF (trailed, shaken, "
       "the optics) do not. Measured without the PSF fit"),
    _m("NSTAR_PSF", "", "meta.number;src",
       "Stars selected for the PSF on the stellar locus (PSFEx's "
       "NStars_Accepted)", integer=True),
    _m("NSTAR_FIT", "", "meta.number;src",
       "PSF stars whose pixel-free fit was kept: FWHM_PIX, ELLIPTICITY "
       "and the PSF map rest on them", integer=True),
    _psf("FWHM_PIX", "pix", "instr.det.psf",
         "PSF FWHM before pixel sampling: the FWHM field of the stars' "
         "pixel-free Moffat fits times FWHM_CORR, median at the PSF "
         "stars"),
    _err("FWHM_PIX", "pix",
         "bootstrap of the FWHM field at the PSF stars, its trend and "
         "its level (a biweight location of the stars' FWHM over the "
         "field), each star kept in place with the FWHM/field ratio of "
         "a star drawn at random; FWHM_CORR's error and the "
         "correction's model error, 0.35 (FWHM_CORR - 1), added in "
         "quadrature"),
    _psf("FWHM_CORR", "", "instr.det.psf;arith.ratio",
         "FWHM of the PSF over that of its Moffat description: the "
         "stars' stacked residuals from their Moffat fits, fitted with "
         "concentric Gaussians, added to the Moffat (1 for a Moffat "
         "PSF; ~1.015 for Kolmogorov seeing)"),
    _err("FWHM_CORR", "",
         "propagated from the covariance of the Gaussians' amplitudes"),
    _psf("FWHM_ARCSEC", "arcsec", "phys.angSize;instr.det.psf",
         "FWHM_PIX times the pixel scale: the seeing"),
    _err("FWHM_ARCSEC", "arcsec", "FWHM_PIX_ERR times the pixel scale"),
    _psf("FWHM_MIN", "pix", "instr.det.psf;stat.min",
         "Smallest FWHM of the PSF map over the grid of the CCD"),
    _psf("FWHM_MAX", "pix", "instr.det.psf;stat.max",
         "Largest FWHM of the PSF map over the grid of the CCD"),
    _psf("FWHM_RH", "pix", "instr.det.psf",
         "Twice the median half-light radius of the stars on the locus, "
         "PSFEx's sample (PSFEx FWHM_FromFluxRadius)", rests_on=_LOCUS),
    _err("FWHM_RH", "pix",
         "of the median, 1.2533 x 1.4826 MAD / sqrt(n) of twice the "
         "locus stars' half-light radii", rests_on=_LOCUS),
    _psf("FWHM_MOFFAT", "pix", "instr.det.psf",
         "FWHM of a Moffat fitted to the empirical (pixel-convolved) PSF "
         "model (PSFEx FWHM)"),
    _err("FWHM_MOFFAT", "pix",
         "FWHM_MOFFAT FWHM_PIX_ERR / FWHM_PIX (the model is the FWHM "
         "field's Moffat at the centre)"),
    _psf("ELLIPTICITY", "", "src.ellipticity;instr.det.psf",
         "PSF (A-B)/(A+B), pixel-free: modulus of the mean ellipticity "
         "vector of the PSF stars"),
    _err("ELLIPTICITY", "",
         "propagated from the standard errors of the two clipped-mean "
         "components (sample standard deviation / sqrt(n))"),
    _psf("ELONGATION", "", "phys.size.axisRatio;instr.det.psf",
         "PSF A/B, pixel-free: (1 + ELLIPTICITY) / (1 - ELLIPTICITY)"),
    _err("ELONGATION", "", "2 ELLIPTICITY_ERR / (1 - ELLIPTICITY)^2"),
    _psf("THETA", "deg", "pos.posAng;instr.det.psf",
         "Position angle of the PSF major axis, counter-clockwise from +x"),
    _err("THETA", "deg",
         "propagated from the ellipticity components (at most 52 deg, "
         "that of a uniform angle, when the PSF is round)"),
    _psf("E1", "", "src.ellipticity;instr.det.psf",
         "Mean (C11 - C22)/(C11 + C22) of the PSF second moments "
         "(pixel-free)"),
    _err("E1", "", "clipped sample standard deviation / sqrt(n)"),
    _psf("E2", "", "src.ellipticity;instr.det.psf",
         "Mean 2 C12/(C11 + C22) of the PSF second moments (pixel-free)"),
    _err("E2", "", "clipped sample standard deviation / sqrt(n)"),
    _psf("ELLIP_PSFEX", "", "src.ellipticity;instr.det.psf",
         "(FWHMmax - FWHMmin)/(FWHMmax + FWHMmin) of the Moffat fitted to "
         "the pixel-convolved PSF model (PSFEx Ellipticity)"),
    _err("ELLIP_PSFEX", "",
         "ELLIPTICITY_ERR (the model's shape is the ellipticity field's "
         "at the centre)"),
    _psf("ELONG", "", "phys.size.axisRatio;instr.det.psf",
         "Median isophotal A/B of the stars on the locus (SExtractor "
         "ELONGATION of PSFEx's stars)", rests_on=_LOCUS),
    _err("ELONG", "",
         "of the median, 1.2533 x 1.4826 MAD / sqrt(n) of the locus "
         "stars' A/B", rests_on=_LOCUS),
    _psf("PSF_BETA", "", "instr.det.psf",
         "Moffat beta, median of the pixel-free star fits; above 22.5 "
         "for a Gaussian-like core, from the stars' chi-square at beta "
         "held up to 500, the Gaussian limit"),
    _err("PSF_BETA", "",
         "of the inverse-variance weighted mean of the brightest stars' "
         "beta, scaled up by their scatter when it exceeds their errors; "
         "above 22.5, where their chi-square rises by 1 (none at 500)"),
    _psf("PSF_CHI2", "", "stat.fit.chi2;instr.det.psf",
         "Median reduced chi-square of the star fits"),
    _psf("PSF_RESID", "", "stat.fit.residual;instr.det.psf",
         "RMS of PSF model minus its Moffat fit within 2 FWHM, over the "
         "model peak"),
    _psf("PSF_ASYM", "", "instr.det.psf",
         "RMS of the part of the PSF model odd under a 180 deg rotation "
         "over that of the even part"),
    _psf("PSF_AREA", "pix**2", "instr.det.psf",
         "Effective area 1/sum(phi^2) of the normalised pixel-sampled PSF"),
    _err("PSF_AREA", "pix**2",
         "2 PSF_AREA FWHM_PIX_ERR / FWHM_PIX (the area scales as the "
         "square of the FWHM field's level)"),
    _m("NSTAR", "", "meta.number;src",
       "Sources classified as stars", integer=True),
    _m("NGAL", "", "meta.number;src",
       "Sources classified as galaxies", integer=True),
    _m("NARTEFACT", "", "meta.number;src",
       "Sources classified as artefacts (cosmic rays, hot pixels)",
       integer=True),
    _m("MAG_TURNOVER", "mag", "phot.mag",
       "Peak of the galaxy counts (0.5 mag bins summed over 1 mag)"),
    _m("MAGLIM_5SIG", "mag", "phot.mag;stat.max",
       "Magnitude of a point source at S/N 5 in PSF photometry"),
    _m("ZEROPOINT", "mag", "phot.mag;arith.zp",
       "Zero point used (magnitude of 1 ADU in the image)"),
    _m("PIXSCALE", "arcsec", "instr.scale;instr.pixel",
       "Pixel scale used (geometric mean of the two axes)"),
    _m("GAIN", "", "instr.calib",
       "Gain used, electrons per pixel unit (header GAIN; 1, EXPTIME "
       "or GAIN x EXPTIME when BUNIT is electrons, e-/s or ADU/s)"),
    _m("EXPTIME", "s", "time.duration;obs.exposure",
       "Exposure time (header EXPTIME)"),
    _m("NCR", "", "meta.number;phys.particle",
       "Cosmic-ray events (connected groups of cosmic-ray pixels with "
       "one at 5.5 sigma or more in the Laplacian test)",
       integer=True),
    _m("CR_FRAC", "", "stat.filling;phys.particle",
       "Fraction of the data-section pixels hit by cosmic rays"),
    _m("STAR_CR_FRAC", "", "meta.number;arith.ratio;phys.particle",
       "Fraction of the star cores with a cosmic-ray pixel in their 3x3 "
       "pixels: round peaks at 10 sigma or more whose width is the "
       "image's PSF, found before the cosmic rays are masked"),
    _m("FRAC_W0", "", "stat.filling;instr.det",
       "Fraction of the data-section pixels with zero weight"),
    _m("W_MEAN", "", "stat.weight;stat.mean",
       "Mean weight of the data-section pixels (the weight map given, "
       "else the flat, normalised to median 1, else (median RMS / "
       "RMS)^2; flagged pixels count as 0)"),
    _m("NFLAG_BADFLAT", "", "meta.number;instr.det",
       "Pixels flagged BAD_FLAT (bit 1)", integer=True),
    _m("NFLAG_COSMIC", "", "meta.number;instr.det",
       "Pixels flagged COSMIC_RAY (bit 2)", integer=True),
    _m("NFLAG_SATURATED", "", "meta.number;instr.det",
       "Pixels flagged SATURATED (bit 4)", integer=True),
    _m("NFLAG_USERMASK", "", "meta.number;instr.det",
       "Pixels flagged USER_MASK (bit 8)", integer=True),
    _m("NFLAG_NODATA", "", "meta.number;instr.det",
       "Pixels flagged NO_DATA (bit 16)", integer=True),
    _m("NFLAG_ZEROWEIGHT", "", "meta.number;instr.det",
       "Pixels flagged ZERO_WEIGHT (bit 64): weight 0 in the weight map "
       "given", integer=True),
)

METRIC_BY_NAME: Mapping[str, Metric] = {m.name: m for m in METRICS}


@dataclass(frozen=True)
class QaFlag:
    """Definition of a QA flag."""

    name: str
    description: str


QA_FLAGS: tuple[QaFlag, ...] = (
    QaFlag("POOR_SEEING", "FWHM_ARCSEC above poor_seeing_arcsec"),
    QaFlag("ELONGATED", "ELLIPTICITY above elongated_ellipticity; where "
           "the PSF is not measured, ELLIP_SOURCES above half "
           "psf_max_ellip (stars trailed or smeared alike)"),
    QaFlag("FEW_PSF_STARS", "NSTAR_FIT below few_psf_stars"),
    QaFlag("PSF_WITHHELD",
           "NSTAR_FIT (or NSTAR_PSF) below psf_min_stars, or the PSF "
           "stars largely compact galaxies (bright sources sharper than "
           "the PSF model): the PSF metrics resting on those stars are "
           "withheld (null)"),
    QaFlag("BKG_ANOMALY",
           "SKY_GRAD above bkg_gradient, or SKY_RMS above "
           "bkg_noise_excess times the noise the sky level, gain and "
           "read noise predict"),
    QaFlag("PSF_VARIES",
           "(FWHM_MAX - FWHM_MIN) / FWHM_PIX above psf_varies"),
    QaFlag("DOUBLE_PSF",
           "two loci in the half-light radius distribution of bright "
           "compact sources (doubled image, lost guiding)"),
    QaFlag("CR_HEAVY", "STAR_CR_FRAC above cr_heavy"),
    QaFlag("MISSING_CCD", "an extension of the exposure failed"),
)


#: The fraction of ``psf_max_ellip`` above which the bright sources'
#: shared elongation (ELLIP_SOURCES) is an elongated PSF: the PSF
#: candidates are then chosen about that shape, a note says it, and
#: where the PSF itself is not measured, ``ELONGATED`` is raised (0.15
#: isophotal is a PSF ellipticity of about 0.22, above the grades' 0.2).
SHARED_ELONGATION = 0.5


def _gt(value: float, limit: float) -> bool:
    return math.isfinite(value) and value > limit


def qa_flags(metrics: Mapping[str, float], *, double_locus: bool,
             read_noise: float | None, config: QualityConfig,
             psf_contaminated: bool = False) -> list[str]:
    """QA flags of one CCD from its metrics.

    ``psf_contaminated``: the PSF stars were found to be largely compact
    galaxies (`qualityfits.psf.galaxy_contamination`), the PSF metrics
    withheld (`withhold`).
    """
    flags = []
    if _gt(metrics["FWHM_ARCSEC"], config.poor_seeing_arcsec):
        flags.append("POOR_SEEING")
    if _gt(metrics["ELLIPTICITY"], config.elongated_ellipticity) or (
            not math.isfinite(metrics["ELLIPTICITY"])
            and _gt(metrics.get("ELLIP_SOURCES", math.nan),
                    SHARED_ELONGATION * config.psf_max_ellip)):
        flags.append("ELONGATED")
    if metrics["NSTAR_FIT"] < config.few_psf_stars:
        flags.append("FEW_PSF_STARS")
    if psf_contaminated or any(_too_few(metrics, count, config)
                               for count in (_FIT, _LOCUS)):
        flags.append("PSF_WITHHELD")
    gain = metrics["GAIN"]
    expected = float("nan")
    if math.isfinite(gain) and metrics["SKY_MEAN"] > 0:
        rn = (read_noise or 0.0) / gain
        expected = math.sqrt(metrics["SKY_MEAN"] / gain + rn * rn)
    if _gt(metrics["SKY_GRAD"], config.bkg_gradient) or _gt(
            metrics["SKY_RMS"], config.bkg_noise_excess * expected):
        flags.append("BKG_ANOMALY")
    fwhm = metrics["FWHM_PIX"]
    if math.isfinite(fwhm) and fwhm > 0 and _gt(
            (metrics["FWHM_MAX"] - metrics["FWHM_MIN"]) / fwhm,
            config.psf_varies):
        flags.append("PSF_VARIES")
    if double_locus:
        flags.append("DOUBLE_PSF")
    if _gt(metrics["STAR_CR_FRAC"], config.cr_heavy):
        flags.append("CR_HEAVY")
    return flags


def _too_few(metrics: Mapping[str, float], count: str,
             config: QualityConfig) -> bool:
    """Whether the stars counted by ``count`` are too few to publish."""
    n = metrics.get(count, math.nan)
    return math.isfinite(n) and n < config.psf_min_stars


def withhold(metrics: dict[str, float], config: QualityConfig, *,
             contaminated: str = "") -> list[str]:
    """Withhold the PSF metrics that rest on too few stars.

    Every metric whose `Metric.rests_on` count is below
    ``config.psf_min_stars`` becomes NaN (null in every product); every
    PSF metric when ``contaminated`` says why the PSF stars are not
    stars (`qualityfits.psf.galaxy_contamination`).  Returns the notes
    that say what was withheld and why (none where nothing had been
    measured on those stars).
    """
    notes = []
    if contaminated:
        names = [m.name for m in METRICS if m.rests_on in (_FIT, _LOCUS)]
        if any(math.isfinite(metrics.get(name, math.nan))
               for name in names):
            for name in names:
                metrics[name] = math.nan
            notes.append(f"PSF withheld: {contaminated}")
        return notes
    for count, what, one, many in (
            (_FIT, "FWHM, ellipticity, beta, the PSF model and map",
             "PSF star", "PSF stars"),
            (_LOCUS, "FWHM_RH and ELONG", "star on the stellar locus",
             "stars on the stellar locus")):
        names = [m.name for m in METRICS if m.rests_on == count]
        if not _too_few(metrics, count, config) or not any(
                math.isfinite(metrics.get(name, math.nan))
                for name in names):
            continue  # enough stars, or nothing measured on them
        for name in names:
            metrics[name] = math.nan
        n = int(metrics[count])
        notes.append(f"{what} withheld: {n} {one if n == 1 else many}, "
                     f"at least {config.psf_min_stars} needed "
                     "(psf_min_stars)")
    return notes
