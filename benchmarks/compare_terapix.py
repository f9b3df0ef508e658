"""Compare our pipeline with the TERAPIX reference, estimator by estimator.

``python benchmarks/compare_terapix.py [IMAGE ...]`` runs
``qualityfits.assess`` and the reference chain of ``terapix.py``
(SExtractor + PSFEx, TERAPIX-like configurations) on each image and
prints, per image extension, a side-by-side table: our value, the
reference value, their difference, the tolerance of the metric table
(``../shared/docs/qualityfits.md`` section 7) and PASS / FAIL / n.a.
Without arguments it runs on the science frames of ``../shared/data``.

The comparison logic lives in importable functions, reused by
``tests/qualityfits/test_terapix_agreement.py``:

* :func:`run_both` runs the two sides and times them (:class:`Runs`);
* :func:`compare_runs` turns two runs into :class:`Row` objects;
* :func:`compare` does both for one image.

Estimator pairs (compare like with like, qualityfits.md section 4):

====  ===============  =====================================  ==========
#     ours             reference                              tolerance
====  ===============  =====================================  ==========
1     SKY_MEAN_MESH    SExtractor XML Background_Mean         0.2 % or
                                                              0.1 sigma
2     SKY_RMS_MESH     SExtractor XML Background_StDev        2 %
5     NSTAR_PSF        PSFEx NStars_Accepted_Mean             10 %
6     FWHM_RH          PSFEx FWHM_FromFluxRadius_Mean         2 %
7     FWHM_MOFFAT      PSFEx FWHM_Mean                        5 %
7/8   FWHM_PIX         PSFEx FWHM_PixelFree_Mean              5 %
9     ELLIP_PSFEX      PSFEx Ellipticity_Mean                 abs 0.01
11    ELONG            median ELONGATION of the PSFEx stars   2 %
13    NOBJ             SExtractor NSextracted                 report
13    NSTAR            N(CLASS_STAR > 0.9), whole catalogue   report
13    N_SRC_COMPLETE   see "Counts above completeness"        5 %
13    N_STAR_COMPLETE  see "Counts above completeness"        5 %
====  ===============  =====================================  ==========

The metric table gives no separate tolerance for the pixel-free FWHM:
it takes the Moffat FWHM's (#7, #8).  Sizes are in pixels on both sides.
The sky-mean tolerance is met when either bound holds (sigma = the
reference Background_StDev).

Two counterparts are not quite the same statistic, and the printout's
details section shows by how much:

* PSFEx ``FWHM_FromFluxRadius`` is ``set->fwhm`` of its sample loader:
  the midpoint of the shortest interval holding a quarter of the values
  of 2 FLUX_RADIUS over the *pre-selected candidates* (SNR_WIN > 20,
  flags, elongation, 2-16 px), not a median over the stars it accepts;
  FWHM_RH is 2 x the median r_h of our PSF stars.  The details give
  2 x median r_h of the PSFEx stars, and of the stars common to both.
* SExtractor ELONGATION of the PSFEx stars comes from the PSFEx feed
  (isophote at ANALYSIS_THRESH 5 sigma); ELONG is measured at our
  detection isophote.  The details give both on the common stars, and
  the 1.5-sigma full-catalogue value.

Counts above completeness (metric #13, "+-5 % above completeness")
-------------------------------------------------------------------
Raw counts at 1.5 sigma (NOBJ vs NSextracted, NSTAR vs all CLASS_STAR >
0.9) are shown for information only: near the threshold they count
noise peaks and depend on the deblending and cleaning details of each
extractor, and CLASS_STAR calls cosmic rays stars.  The +-5 % tolerance
is applied to two quantities defined as follows.

``N_SRC_COMPLETE`` -- sources brighter than the completeness limit:

1. Both sides use instrumental magnitudes m = -2.5 log10(FLUX_AUTO
   [ADU]) (our MAG_AUTO carries the header zero point, the reference's
   none); sources with FLUX_AUTO <= 0 are left out.
2. The completeness limit is the turnover of the *reference*
   catalogue's magnitude histogram: the centre of its most populated
   bin, bins of 0.5 mag on multiples of 0.5 mag.  The compared range is
   m < turnover - ``COUNT_MAG_OFFSET`` (1 mag by default).
3. N_ours = our sources (all classes: SExtractor's catalogue includes
   cosmic rays too) with m_ours below the limit; N_ref = reference
   sources with m_ref below it.  Each side cuts on its own magnitude.
4. For diagnosis (not part of the test) the two catalogues are matched
   one-to-one by position (mutual nearest neighbours within
   ``MATCH_RADIUS`` = 1 px, FITS 1-based positions on both sides):
   the number matched, unmatched on each side, and the median
   magnitude offset of the matched pairs.  A systematic offset dm moves
   a steep galaxy count (d log N / dm ~ 0.4) by ~0.9 dm x 100 %, so
   +-5 % needs the two MAG_AUTO scales to agree to ~0.05 mag.

``N_STAR_COMPLETE`` -- stars where they are resolvable, cosmic rays out:

1. The sample is the matched pairs (as above) whose reference SNR_WIN
   exceeds ``STAR_MIN_SNR`` (50 by default): bright enough for both
   classifiers (CLASS_STAR tends to 0.5 for faint sources; ours calls
   unresolvable sources galaxies).
2. Cosmic rays are removed: pairs whose source *we* classify as an
   artefact are dropped from both sides (SExtractor has no CR class,
   and CLASS_STAR gives cosmic rays ~1).
3. N_ours = pairs with our CLASS == "star"; N_ref = pairs with
   CLASS_STAR > ``CLASS_STAR_CUT`` (0.9).  The details also give the
   confusion (star on both sides, ours only, reference only), the
   cosmic rays removed and the reference sources of the range without
   a counterpart.

The details section of the printout scans the magnitude offset and the
S/N limit, to show how much the agreement depends on the range.

Minimum samples.  A comparison is *meaningful* (``Row.enough``; the
tests assert only those) when: PSF rows -- at least ``MIN_PSF_STARS``
(10) PSF stars on both sides (the metric table's FEW_PSF_STARS limit);
count rows -- at least ``MIN_COUNT`` (40) sources on both sides, so that
one source is at most half the 5 % tolerance; sky rows -- always.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from astropy.table import Table
from astropy.utils.exceptions import AstropyWarning
from scipy.spatial import cKDTree

BENCHMARKS = Path(__file__).resolve().parent
if str(BENCHMARKS) not in sys.path:
    sys.path.insert(0, str(BENCHMARKS))

import terapix  # noqa: E402

import qualityfits  # noqa: E402
from qualityfits.report import ExtensionReport, QualityReport  # noqa: E402

__all__ = [
    "DEFAULT_IMAGES",
    "PSF_PAIRS",
    "Row",
    "Runs",
    "compare",
    "compare_runs",
    "format_rows",
    "run_both",
    "source_counts",
    "star_counts",
]

#: ``../shared/data`` beside the project.
SHARED_DATA = BENCHMARKS.parent.parent / "shared" / "data"
#: The science frames of the shared data folder.
DEFAULT_IMAGES = (
    "ntt_emmi_R_galaxies.fits.gz",
    "kpno_m51_B_devpix.fits.gz",
    "megacam_1616687p_ccd10_cutout.fits.gz",
    "megacam_1616681p_ccd21_cutout.fits.gz",
    "decam_c4d_170316_062107_ooi_z_ls9.N2.fits.gz",
)

MIN_PSF_STARS = 10
MIN_COUNT = 40
MATCH_RADIUS = 1.0  # pixels
COUNT_MAG_BIN = 0.5
COUNT_MAG_OFFSET = 1.0
STAR_MIN_SNR = 50.0
CLASS_STAR_CUT = 0.9
SCAN_OFFSETS = (0.0, 0.5, 1.0, 1.5, 2.0, 3.0)
SCAN_SNR = (10.0, 20.0, 50.0, 100.0)

PASS, FAIL, NA, INFO = "PASS", "FAIL", "n.a.", "info"


@dataclass(frozen=True)
class Tolerance:
    """A tolerance of the metric table.

    ``kind`` is ``"rel"`` (|ours/ref - 1| <= value), ``"abs"``
    (|ours - ref| <= value), ``"sky"`` (|d| <= value x |ref| or |d| <=
    0.1 sigma) or ``"info"`` (no tolerance: reported only).
    """

    metric: str
    kind: str
    value: float = math.nan

    @property
    def text(self) -> str:
        if self.kind == "rel":
            return f"{100 * self.value:g} %"
        if self.kind == "abs":
            return f"abs {self.value:g}"
        if self.kind == "sky":
            return f"{100 * self.value:g}% or 0.1sig"
        return "report"


SKY_MEAN_TOL = Tolerance("#1", "sky", 0.002)
SKY_RMS_TOL = Tolerance("#2", "rel", 0.02)
COUNT_TOL = Tolerance("#13", "rel", 0.05)
INFO_TOL = Tolerance("#13", "info")

#: (our metric, PSFEx XML field or None for the ELONGATION median,
#: tolerance): the estimator-matched PSF pairs.
PSF_PAIRS: tuple[tuple[str, str, Tolerance], ...] = (
    ("NSTAR_PSF", "NStars_Accepted_Mean", Tolerance("#5", "rel", 0.10)),
    ("FWHM_RH", "FWHM_FromFluxRadius_Mean", Tolerance("#6", "rel", 0.02)),
    ("FWHM_MOFFAT", "FWHM_Mean", Tolerance("#7", "rel", 0.05)),
    ("FWHM_PIX", "FWHM_PixelFree_Mean", Tolerance("#7/8", "rel", 0.05)),
    ("ELLIP_PSFEX", "Ellipticity_Mean", Tolerance("#9", "abs", 0.01)),
    ("ELONG", "median ELONGATION(PSFEx stars)",
     Tolerance("#11", "rel", 0.02)),
)


@dataclass(frozen=True)
class Row:
    """One line of the comparison.

    ``diff`` is ours/ref - 1 for relative tolerances, ours - ref
    otherwise; ``enough`` says the sample is large enough for the
    comparison to mean something (see the module docstring); ``note``
    explains n.a., small samples or the counts' definitions.
    """

    image: str
    extension: str
    quantity: str
    ours_name: str
    ref_name: str
    ours: float
    ref: float
    diff: float
    tolerance: Tolerance
    status: str
    enough: bool
    note: str = ""


@dataclass(frozen=True)
class Runs:
    """Both sides on one image, with their wall times [s]."""

    image: Path
    ours: QualityReport
    reference: terapix.ReferenceRun
    ours_seconds: float
    reference_seconds: float


# ------------------------------------------------------------- running


def run_both(image: Path, *, jobs: int | None = None,
             workdir: Path | None = None) -> Runs:
    """Run our pipeline and the TERAPIX reference on ``image``."""
    image = Path(image)
    with warnings.catch_warnings():
        # Old headers (MIDAS ESO-LOG cards, dd/mm/yy dates) are harmless.
        warnings.simplefilter("ignore", AstropyWarning)
        start = time.perf_counter()
        # The estimators compared on the same pixels: SExtractor and
        # PSFEx see the cosmic rays, so ours are not masked here.  (With
        # them masked, the PSFEx-rule sample of the NTT image gains five
        # sharp central stars and loses three broad edge ones: FWHM_RH
        # -2.0 %, FWHM_PIX -1.9 % against the unmasked run.)
        ours = qualityfits.assess(
            image, jobs=jobs,
            config=qualityfits.QualityConfig(cosmic_rays=False))
        ours_seconds = time.perf_counter() - start
    start = time.perf_counter()
    ref = terapix.run_reference(image, workdir=workdir)
    ref_seconds = time.perf_counter() - start
    return Runs(image=image, ours=ours, reference=ref,
                ours_seconds=ours_seconds, reference_seconds=ref_seconds)


def pairs(runs: Runs) -> list[tuple[ExtensionReport,
                                    terapix.ReferenceExtension]]:
    """Our extension reports and the reference's, matched by HDU index."""
    by_index = {e.index: e for e in runs.reference.extensions}
    out = []
    for ext in runs.ours.extensions:
        ref = by_index.get(ext.index)
        if ref is not None:
            out.append((ext, ref))
    return out


# ------------------------------------------------------------ judging


def _finite(value: float) -> bool:
    return value is not None and math.isfinite(value)


def judge(ours: float, ref: float, tol: Tolerance,
          ref_sigma: float = math.nan) -> tuple[float, str]:
    """(difference, status) of one pair of values."""
    if not (_finite(ours) and _finite(ref)):
        return math.nan, NA
    if tol.kind in ("rel", "sky", "info"):
        diff = ours / ref - 1.0 if ref != 0 else math.inf
    else:
        diff = ours - ref
    if tol.kind == "info":
        return diff, INFO
    if tol.kind == "sky":
        ok = abs(ours - ref) <= tol.value * abs(ref) or (
            _finite(ref_sigma) and abs(ours - ref) <= 0.1 * ref_sigma)
    else:
        ok = abs(diff) <= tol.value
    return diff, PASS if ok else FAIL


def _row(image: str, ext: str, quantity: str, ours_name: str,
         ref_name: str, ours: float, ref: float, tol: Tolerance, *,
         enough: bool, note: str = "",
         ref_sigma: float = math.nan) -> Row:
    ours, ref = float(ours), float(ref)
    diff, status = judge(ours, ref, tol, ref_sigma)
    return Row(image=image, extension=ext, quantity=quantity,
               ours_name=ours_name, ref_name=ref_name, ours=ours, ref=ref,
               diff=diff, tolerance=tol, status=status, enough=enough,
               note=note)


# ------------------------------------------------------------ matching


def _column(table: Table | None, name: str) -> np.ndarray:
    if table is None or name not in table.colnames:
        return np.zeros(0)
    return np.asarray(table[name], dtype=np.float64)


def match(x1: np.ndarray, y1: np.ndarray, x2: np.ndarray, y2: np.ndarray,
          radius: float = MATCH_RADIUS) -> tuple[np.ndarray, np.ndarray]:
    """One-to-one match: mutual nearest neighbours within ``radius``.

    Returns the indices (i1, i2) of the matched pairs.
    """
    if len(x1) == 0 or len(x2) == 0:
        return np.zeros(0, dtype=int), np.zeros(0, dtype=int)
    p1 = np.column_stack([x1, y1])
    p2 = np.column_stack([x2, y2])
    d12, j12 = cKDTree(p2).query(p1)
    _, j21 = cKDTree(p1).query(p2)
    i1 = np.flatnonzero((d12 <= radius) & (j21[j12] == np.arange(len(x1))))
    return i1, j12[i1]


def _instrumental_mag(flux: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(flux > 0, -2.5 * np.log10(flux), np.nan)


def reference_turnover(catalogue: Table,
                       bin_width: float = COUNT_MAG_BIN) -> float:
    """Centre of the fullest bin of the reference's instrumental mags."""
    mag = _instrumental_mag(_column(catalogue, "FLUX_AUTO"))
    mag = mag[np.isfinite(mag)]
    if mag.size == 0:
        return math.nan
    lo = math.floor(mag.min() / bin_width) * bin_width
    hi = math.ceil(mag.max() / bin_width) * bin_width
    edges = np.arange(lo, max(hi, lo + bin_width) + bin_width / 2,
                      bin_width)
    hist, _ = np.histogram(mag, edges)
    i = int(np.argmax(hist))
    return float(0.5 * (edges[i] + edges[i + 1]))


@dataclass(frozen=True)
class SourceCounts:
    """Sources brighter than a magnitude limit on both sides."""

    mag_limit: float
    turnover: float
    n_ours: int
    n_ref: int
    n_matched: int
    n_ours_unmatched: int
    n_ref_unmatched: int
    median_dmag: float  # ours - ref, matched pairs below the limit


def source_counts(sources: Table | None, catalogue: Table,
                  offset: float = COUNT_MAG_OFFSET) -> SourceCounts:
    """Source counts brighter than the reference turnover - ``offset``."""
    turn = reference_turnover(catalogue)
    limit = turn - offset
    m_ours = _instrumental_mag(_column(sources, "FLUX_AUTO"))
    m_ref = _instrumental_mag(_column(catalogue, "FLUX_AUTO"))
    with np.errstate(invalid="ignore"):
        b_ours = m_ours < limit
        b_ref = m_ref < limit
    i_ours, i_ref = match(_column(sources, "X_IMAGE"),
                          _column(sources, "Y_IMAGE"),
                          _column(catalogue, "X_IMAGE"),
                          _column(catalogue, "Y_IMAGE"))
    both = b_ours[i_ours] & b_ref[i_ref]
    matched_ours = np.zeros(len(m_ours), dtype=bool)
    matched_ours[i_ours] = True
    matched_ref = np.zeros(len(m_ref), dtype=bool)
    matched_ref[i_ref] = True
    dmag = (m_ours[i_ours] - m_ref[i_ref])[both]
    return SourceCounts(
        mag_limit=limit, turnover=turn,
        n_ours=int(b_ours.sum()), n_ref=int(b_ref.sum()),
        n_matched=int(both.sum()),
        n_ours_unmatched=int((b_ours & ~matched_ours).sum()),
        n_ref_unmatched=int((b_ref & ~matched_ref).sum()),
        median_dmag=float(np.median(dmag)) if dmag.size else math.nan,
    )


@dataclass(frozen=True)
class StarCounts:
    """Star counts over the matched pairs of a S/N range, CRs removed."""

    min_snr: float
    n_sample: int  # matched pairs in the range, our artefacts removed
    n_ours: int
    n_ref: int
    n_both: int
    n_cosmics: int  # pairs of the range that we call artefacts
    n_cosmics_ref_star: int  # ... of which CLASS_STAR > cut
    n_ref_unmatched: int  # reference sources of the range, no match


def star_counts(sources: Table | None, catalogue: Table,
                min_snr: float = STAR_MIN_SNR,
                class_star_cut: float = CLASS_STAR_CUT) -> StarCounts:
    """Our stars vs CLASS_STAR > cut, reference SNR_WIN > ``min_snr``."""
    i_ours, i_ref = match(_column(sources, "X_IMAGE"),
                          _column(sources, "Y_IMAGE"),
                          _column(catalogue, "X_IMAGE"),
                          _column(catalogue, "Y_IMAGE"))
    snr = _column(catalogue, "SNR_WIN")
    with np.errstate(invalid="ignore"):
        bright_ref = snr > min_snr
    cls = (np.asarray(sources["CLASS"]).astype(str)
           if sources is not None and "CLASS" in sources.colnames
           else np.zeros(0, dtype=str))
    class_star = _column(catalogue, "CLASS_STAR")
    in_range = bright_ref[i_ref]
    io, ir = i_ours[in_range], i_ref[in_range]
    cosmic = cls[io] == "artefact"
    ref_star = class_star[ir] > class_star_cut
    our_star = cls[io] == "star"
    keep = ~cosmic
    matched_ref = np.zeros(len(snr), dtype=bool)
    matched_ref[i_ref] = True
    return StarCounts(
        min_snr=min_snr,
        n_sample=int(keep.sum()),
        n_ours=int((our_star & keep).sum()),
        n_ref=int((ref_star & keep).sum()),
        n_both=int((our_star & ref_star & keep).sum()),
        n_cosmics=int(cosmic.sum()),
        n_cosmics_ref_star=int((cosmic & ref_star).sum()),
        n_ref_unmatched=int((bright_ref & ~matched_ref).sum()),
    )


# ---------------------------------------------------------- comparing


def _psf_count(ext: ExtensionReport) -> int:
    value = ext.metrics.get("NSTAR_PSF", math.nan)
    return int(value) if _finite(value) else 0


def compare_extension(image: str, ext: ExtensionReport,
                      ref: terapix.ReferenceExtension) -> list[Row]:
    """The comparison rows of one extension."""
    name = ext.name
    m = ext.metrics
    rows = [
        _row(image, name, "sky mean [ADU]", "SKY_MEAN_MESH",
             "Background_Mean",
             m.get("SKY_MEAN_MESH", math.nan), ref.background_mean,
             SKY_MEAN_TOL, enough=True, ref_sigma=ref.background_stdev),
        _row(image, name, "sky RMS [ADU]", "SKY_RMS_MESH",
             "Background_StDev",
             m.get("SKY_RMS_MESH", math.nan), ref.background_stdev,
             SKY_RMS_TOL, enough=True),
    ]

    n_ours = _psf_count(ext)
    n_ref = int(ref.psfex.get("NStars_Accepted_Mean", 0) or 0)
    enough = min(n_ours, n_ref) >= MIN_PSF_STARS
    few = (f"PSF stars {n_ours}/{n_ref} < {MIN_PSF_STARS}"
           if not enough else "")
    elong_ref = (float(np.median(_column(ref.psf_stars, "ELONGATION")))
                 if len(ref.psf_stars) else math.nan)
    labels = {
        "NSTAR_PSF": "PSF stars", "FWHM_RH": "FWHM 2 r_h [px]",
        "FWHM_MOFFAT": "FWHM Moffat [px]",
        "FWHM_PIX": "FWHM pixel-free [px]",
        "ELLIP_PSFEX": "ellipticity (PSFEx)", "ELONG": "elongation A/B",
    }
    for ours_key, ref_key, tol in PSF_PAIRS:
        ref_value = (elong_ref if ours_key == "ELONG"
                     else ref.psfex.get(ref_key, math.nan))
        ours_value = m.get(ours_key, math.nan)
        note = few
        if not _finite(ref_value) and n_ref == 0:
            note = "PSFEx accepted no star"
        elif not _finite(ours_value) and n_ours == 0:
            note = "we found no PSF star"
        rows.append(_row(image, name, labels[ours_key], ours_key, ref_key,
                         ours_value, ref_value, tol,
                         enough=enough if ours_key != "NSTAR_PSF"
                         else min(n_ours, n_ref) >= MIN_PSF_STARS,
                         note=note))

    cat, src = ref.catalogue, ext.sources
    n_class_star = int((_column(cat, "CLASS_STAR") > CLASS_STAR_CUT).sum())
    n_art = m.get("NARTEFACT", math.nan)
    n_art_text = f"{int(n_art)}" if _finite(n_art) else "n.a."
    rows.append(_row(image, name, "sources, 1.5 sigma", "NOBJ",
                     "NSextracted", m.get("NOBJ", math.nan),
                     ref.nsextracted, INFO_TOL, enough=False,
                     note=f"NDetect {ref.ndetect}; raw counts"))
    rows.append(_row(image, name, "stars, all", "NSTAR",
                     f"N(CLASS_STAR>{CLASS_STAR_CUT:g})",
                     m.get("NSTAR", math.nan), n_class_star, INFO_TOL,
                     enough=False,
                     note=f"CLASS_STAR incl. CRs; our artefacts "
                          f"{n_art_text}"))
    sc = source_counts(src, cat)
    rows.append(_row(
        image, name, "sources above compl.", "N(m<lim)", "N(m<lim)",
        sc.n_ours, sc.n_ref, COUNT_TOL,
        enough=min(sc.n_ours, sc.n_ref) >= MIN_COUNT,
        note=_few(sc.n_ours, sc.n_ref) + (
            f"m_inst < {sc.mag_limit:.2f} (turnover "
            f"{sc.turnover:.2f} - {COUNT_MAG_OFFSET:g}); matched "
            f"{sc.n_matched}, dm {sc.median_dmag:+.3f}")))
    st = star_counts(src, cat)
    rows.append(_row(
        image, name, "stars above compl.", "CLASS=star",
        f"CLASS_STAR>{CLASS_STAR_CUT:g}", st.n_ours, st.n_ref, COUNT_TOL,
        enough=min(st.n_ours, st.n_ref) >= MIN_COUNT,
        note=_few(st.n_ours, st.n_ref) + (
            f"matched, SNR_WIN>{STAR_MIN_SNR:g}, {st.n_sample} "
            f"sources, {st.n_cosmics} CRs removed; both {st.n_both}")))
    return rows


def _few(n_ours: int, n_ref: int) -> str:
    if min(n_ours, n_ref) >= MIN_COUNT:
        return ""
    return f"N {n_ours}/{n_ref} < {MIN_COUNT}; "


def compare_runs(runs: Runs) -> list[Row]:
    """All comparison rows of an image, extension by extension."""
    image = runs.image.name
    rows: list[Row] = []
    for ext, ref in pairs(runs):
        if not ext.ok:
            rows.append(_row(image, ext.name, "extension", "status",
                             "status", math.nan, math.nan, INFO_TOL,
                             enough=False,
                             note=f"our pipeline failed: {ext.error}"))
            continue
        rows.extend(compare_extension(image, ext, ref))
    return rows


def compare(image: Path, *, jobs: int | None = None) -> list[Row]:
    """Run both sides on ``image`` and compare them."""
    return compare_runs(run_both(image, jobs=jobs))


# ------------------------------------------------------------ details


def psf_star_details(ext: ExtensionReport,
                     ref: terapix.ReferenceExtension) -> list[str]:
    """Selection vs measurement: the PSF stars common to both sides."""
    ours, theirs = ext.psf_stars, ref.psf_stars
    if ours is None or len(ours) == 0 or len(theirs) == 0:
        return ["  PSF stars: none on one side"]
    io, ir = match(_column(ours, "X_IMAGE"), _column(ours, "Y_IMAGE"),
                   _column(theirs, "X_IMAGE"), _column(theirs, "Y_IMAGE"))
    rh_o, rh_r = _column(ours, "FLUX_RADIUS"), _column(theirs, "FLUX_RADIUS")
    el_o = _column(ours, "ELONGATION_ISO")
    el_r = _column(theirs, "ELONGATION")
    lines = [
        (f"  PSF stars: ours {len(ours)}, PSFEx {len(theirs)}, common "
         f"{len(io)} (within {MATCH_RADIUS:g} px)"),
        (f"    2 x median r_h, own samples : ours "
         f"{2 * np.median(rh_o):.3f}  ref {2 * np.median(rh_r):.3f}"),
    ]
    if len(io):
        lines.append(
            f"    2 x median r_h, common     : ours "
            f"{2 * np.median(rh_o[io]):.3f}  ref "
            f"{2 * np.median(rh_r[ir]):.3f}  (median per-star ratio "
            f"{np.median(rh_o[io] / rh_r[ir]):.4f})")
        # The same stars in the 1.5-sigma full catalogue (isophote at
        # 1.5 sigma, like ours) instead of the 5-sigma PSFEx feed.
        cat = ref.catalogue
        jc, jr = match(_column(cat, "X_IMAGE"), _column(cat, "Y_IMAGE"),
                       _column(theirs, "X_IMAGE"),
                       _column(theirs, "Y_IMAGE"))
        full_el = dict(zip(jr.tolist(), _column(cat, "ELONGATION")[jc],
                           strict=True))
        full = np.array([full_el.get(int(j), np.nan) for j in ir])
        lines.append(
            f"    median A/B, common         : ours "
            f"{np.median(el_o[io]):.4f}  ref feed (5 sigma isophote) "
            f"{np.median(el_r[ir]):.4f}  ref full cat. (1.5 sigma) "
            f"{np.nanmedian(full):.4f}")
    lines.append(
        f"    median A/B, own samples    : ours {np.median(el_o):.4f}  "
        f"ref {np.median(el_r):.4f}")
    return lines


def count_details(ext: ExtensionReport,
                  ref: terapix.ReferenceExtension) -> list[str]:
    """Scan of the count comparisons over the range definitions."""
    src, cat = ext.sources, ref.catalogue
    lines = ["  source counts vs magnitude limit (turnover - offset):",
             ("    offset  m_lim    ours   ref  diff%  matched  "
              "ours-only ref-only  dm(med)")]
    for off in SCAN_OFFSETS:
        sc = source_counts(src, cat, off)
        diff = (100 * (sc.n_ours / sc.n_ref - 1) if sc.n_ref
                else math.nan)
        lines.append(
            f"    {off:5.1f}  {sc.mag_limit:6.2f}  {sc.n_ours:5d} "
            f"{sc.n_ref:5d} {diff:6.1f}  {sc.n_matched:7d}  "
            f"{sc.n_ours_unmatched:9d} {sc.n_ref_unmatched:8d}  "
            f"{sc.median_dmag:+.3f}")
    lines.append("  star counts vs S/N limit (matched pairs, "
                 "our artefacts removed):")
    lines.append("    SNR_WIN>  sample  ours   ref  diff%  both  "
                 "CRs(ref star)  ref unmatched")
    for snr in SCAN_SNR:
        st = star_counts(src, cat, snr)
        diff = (100 * (st.n_ours / st.n_ref - 1) if st.n_ref
                else math.nan)
        lines.append(
            f"    {snr:7.0f}  {st.n_sample:6d} {st.n_ours:5d} "
            f"{st.n_ref:5d} {diff:6.1f} {st.n_both:5d}  "
            f"{st.n_cosmics:4d} ({st.n_cosmics_ref_star:3d})  "
            f"{st.n_ref_unmatched:13d}")
    return lines


# ------------------------------------------------------------- output


def _fmt(value: float) -> str:
    if not _finite(value):
        return "nan"
    if value == int(value) and abs(value) < 1e7:
        return f"{int(value)}"
    if abs(value) >= 100:
        return f"{value:.2f}"
    return f"{value:.4f}"


def _fmt_diff(row: Row) -> str:
    if math.isinf(row.diff):
        return "inf"
    if not _finite(row.diff):
        return "-"
    if row.tolerance.kind == "abs":
        return f"{row.diff:+.4f}"
    return f"{100 * row.diff:+.2f} %"


def format_rows(rows: Sequence[Row]) -> str:
    """Side-by-side table, one block per extension."""
    head = (f"{'quantity':<22} {'ours':>12} {'ours key':<12} "
            f"{'reference':>12} {'reference key':<26} {'diff':>10} "
            f"{'tol':>14} {'#':>4}  {'status':<6} note")
    lines: list[str] = []
    current = None
    for row in rows:
        if (row.image, row.extension) != current:
            current = (row.image, row.extension)
            lines.extend(["", f"{row.image} [{row.extension}]", head,
                          "-" * len(head)])
        status = row.status
        if status in (PASS, FAIL) and not row.enough:
            status += "*"
        lines.append(
            f"{row.quantity:<22} {_fmt(row.ours):>12} "
            f"{row.ours_name:<12} {_fmt(row.ref):>12} "
            f"{row.ref_name[:26]:<26} {_fmt_diff(row):>10} "
            f"{row.tolerance.text:>14} {row.tolerance.metric:>4}  "
            f"{status:<6} {row.note}")
    return "\n".join(lines)


def format_runs(runs: Runs, rows: Sequence[Row],
                details: bool = True) -> str:
    out = [format_rows(rows)]
    ref = runs.reference
    out.append(
        f"wall time: ours {runs.ours_seconds:.2f} s, reference "
        f"{runs.reference_seconds:.2f} s (programs "
        + ", ".join(f"{k} {v:.2f} s" for k, v in ref.steps.items())
        + f"; {', '.join(f'{k} {v}' for k, v in ref.versions.items())})")
    if details:
        for ext, rext in pairs(runs):
            if not ext.ok:
                continue
            out.append(f"details [{ext.name}]:")
            out.extend(psf_star_details(ext, rext))
            out.extend(count_details(ext, rext))
    return "\n".join(out)


LEGEND = (
    "diff: ours/ref - 1 (or ours - ref for abs tolerances); '*' after "
    f"PASS/FAIL: sample too small to be meaningful (< {MIN_PSF_STARS} "
    f"PSF stars or < {MIN_COUNT} sources on a side); n.a.: a side has no "
    "measurement; info: no tolerance (raw counts). Sizes in pixels."
)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Compare qualityfits with SExtractor + PSFEx "
                    "(TERAPIX QualityFITS) estimator by estimator.")
    parser.add_argument("images", nargs="*", type=Path,
                        help="FITS files (default: the science frames "
                             "of ../shared/data)")
    parser.add_argument("--jobs", type=int, default=None,
                        help="worker processes of our pipeline")
    parser.add_argument("--no-details", action="store_true",
                        help="only the tables, no PSF-star and count "
                             "scans")
    args = parser.parse_args(argv)
    images = args.images or [SHARED_DATA / n for n in DEFAULT_IMAGES]
    if not terapix.tools_available():
        print("source-extractor/psfex not found", file=sys.stderr)
        return 2
    nfail = 0
    for image in images:
        try:
            runs = run_both(image, jobs=args.jobs)
        except (OSError, ValueError, RuntimeError,
                qualityfits.QualityFitsError) as exc:
            print(f"{image}: error: {exc}", file=sys.stderr)
            nfail += 1
            continue
        rows = compare_runs(runs)
        nfail += sum(r.status == FAIL and r.enough for r in rows)
        print(format_runs(runs, rows, details=not args.no_details))
    print()
    print(LEGEND)
    return 1 if nfail else 0


if __name__ == "__main__":
    sys.exit(main())
