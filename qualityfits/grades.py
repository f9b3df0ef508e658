"""The grade of an exposure: A (keep) to D (unusable), with its reasons.

TERAPIX's QualityFITS had people grade every image A-D from its "ID
card", with canned comments ("Poor seeing (>1.2)", "Elongated image",
"Some CCDs or half-CCDs missing", "PSF/Object image doubled", ...), and
selected A and B images for stacks.  `grade` does the same from the
measured exposure, by rules a reader can check:

* each rule looks at one aggregate (the median FWHM in arcsec, the
  median ellipticity, the fraction of CCDs that could not be assessed)
  or one exposure QA flag, and caps the grade at a letter;
* the grade is the worst cap, and every cap below A comes with its
  reason, written with the measured value and the threshold it crossed
  (``"FWHM 1.31″ > 1.2″"``);
* what could not be judged (no pixel scale, so no seeing in arcsec) is a
  note, not a downgrade: a grade is never made up from a guess.

The thresholds are `QualityConfig` values (``grade_fwhm_arcsec``,
``grade_ellipticity``, ``grade_missing_frac``: the B, C and D limits of
each) and so settable from ``--set`` and, for the service, from its
``qfits.grade_*`` settings.  The rules and their defaults are listed in
``docs/metrics.md`` ("Grades").

>>> from qualityfits.grades import grade_exposure
>>> g = grade_exposure({"FWHM_ARCSEC": 1.31, "ELLIPTICITY": 0.03},
...                    flags=(), n_ccds=36, n_failed=0)
>>> g.letter, g.reasons
('C', ('FWHM 1.31″ > 1.2″',))
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

from qualityfits.config import QualityConfig

#: The letters, best first.
LETTERS: Final = ("A", "B", "C", "D")

#: What each letter means (the pages' legend and the VOTable's
#: description).
MEANING: Final = {
    "A": "good: keep",
    "B": "usable, with a defect noted",
    "C": "poor: use only if nothing better",
    "D": "unusable",
}

#: Exposure QA flags that cap the grade, with the letter and the
#: sentence shown.  Flags with a numeric twin (POOR_SEEING, ELONGATED,
#: MISSING_CCD) are graded by their thresholds instead.
FLAG_CAPS: Final = {
    "DOUBLE_PSF": ("C", "PSF doubled on some CCDs (DOUBLE_PSF)"),
    "PSF_VARIES": ("B", "PSF varies across the field (PSF_VARIES)"),
    "BKG_ANOMALY": ("B", "unusual background (BKG_ANOMALY)"),
    "CR_HEAVY": ("B", "many star cores hit by cosmic rays (CR_HEAVY)"),
    "FEW_PSF_STARS": ("B", "few PSF stars (FEW_PSF_STARS)"),
    "PSF_WITHHELD": ("B", "PSF withheld on some CCDs (PSF_WITHHELD)"),
}


#: The reason of an exposure flagged ELONGATED without a measured PSF:
#: its bright sources share an elongation (ELLIP_SOURCES) beyond the
#: grades' D limit.
ELONGATED_UNMEASURED: Final = (
    "stars trailed or smeared alike, the PSF not measured (ELONGATED, "
    "ELLIP_SOURCES)")

#: The reason of an exposure whose FWHM was withheld on every CCD.
NO_SEEING: Final = "seeing not measured: no CCD has enough PSF stars"


@dataclass(frozen=True)
class Grade:
    """The grade of one exposure.

    Attributes
    ----------
    letter : str
        ``"A"`` to ``"D"``.
    reasons : tuple of str
        Why the grade is below A, worst first; empty for an A.
    notes : tuple of str
        What could not be judged, and so was not held against it.
    """

    letter: str
    reasons: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        """Return the grade as JSON-friendly data."""
        return {"letter": self.letter, "meaning": MEANING[self.letter],
                "reasons": list(self.reasons), "notes": list(self.notes)}


def _cap(value: float, limits: Sequence[float]) -> str:
    """Return the letter whose limits ``value`` exceeds (A below all)."""
    letter = "A"
    for candidate, limit in zip(LETTERS[1:], limits, strict=True):
        if value > limit:
            letter = candidate
    return letter


def _number(value: float, digits: int) -> str:
    return f"{value:.{digits}f}".rstrip("0").rstrip(".")


def grade_exposure(medians: Mapping[str, float], *,
                   flags: Sequence[str], n_ccds: int, n_failed: int,
                   config: QualityConfig | None = None) -> Grade:
    """Grade an exposure from its median metrics and QA flags.

    Parameters
    ----------
    medians : Mapping
        Metric name -> median over the assessed CCDs (NaN or missing
        when not measured); ``FWHM_ARCSEC``, ``FWHM_PIX`` and
        ``ELLIPTICITY`` are read.
    flags : sequence of str
        The exposure QA flags.
    n_ccds, n_failed : int
        Extensions of the exposure, and those not assessed.
    config : QualityConfig, optional
        The thresholds (default: `QualityConfig`'s).

    Returns
    -------
    Grade
    """
    config = config or QualityConfig()
    caps: list[tuple[str, str]] = []
    notes: list[str] = []

    def limit_rule(value: float, limits: Sequence[float], what: str,
                   unit: str, digits: int, scale: float = 1.0) -> None:
        letter = _cap(value, limits)
        if letter != "A":
            limit = limits[LETTERS.index(letter) - 1]
            shown = _number(scale * value, digits)
            bound = _number(scale * limit, digits)
            caps.append((letter, f"{what} {shown}{unit} > {bound}{unit}"))

    fwhm = float(medians.get("FWHM_ARCSEC", math.nan))
    fwhm_pix = float(medians.get("FWHM_PIX", math.nan))
    if math.isfinite(fwhm):
        limit_rule(fwhm, config.grade_fwhm_arcsec, "FWHM", "″", 2)
    elif math.isfinite(fwhm_pix):
        notes.append(f"seeing not graded: no pixel scale (FWHM "
                     f"{_number(fwhm_pix, 2)} px)")
    else:
        caps.append(("C", NO_SEEING))
    ell = float(medians.get("ELLIPTICITY", math.nan))
    if math.isfinite(ell):
        limit_rule(ell, config.grade_ellipticity, "ellipticity", "", 3)
    elif "ELONGATED" in flags:
        caps.append(("D", ELONGATED_UNMEASURED))
    if n_ccds > 0 and n_failed > 0:
        limit_rule(n_failed / n_ccds, config.grade_missing_frac,
                   f"{n_failed} of {n_ccds} CCDs not assessed:", " %", 1,
                   scale=100.0)
    caps.extend(FLAG_CAPS[flag] for flag in flags if flag in FLAG_CAPS)

    if not caps:
        return Grade("A", (), tuple(notes))
    caps.sort(key=lambda cap: LETTERS.index(cap[0]), reverse=True)
    return Grade(caps[0][0], tuple(reason for _, reason in caps),
                 tuple(notes))
