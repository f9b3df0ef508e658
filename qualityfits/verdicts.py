"""Verdicts on frames that are not sky exposures.

A flat field, a bias, a dark, a frame saturated over most of its pixels
or one whose sky sits at the saturation level cannot be assessed: each
is refused with one line (`NotScienceError`) instead of going through
the pipeline to a misleading failure.  The header is believed where it
says what the frame is (`header_verdict`: IMAGETYP, OBSTYPE, EXPTYPE,
DATA-TYP, ESO DPR TYPE... in the conventions of many observatories);
the pixels speak where it says nothing:

* `saturation_verdict`: at least `SATURATED_FRACTION` of the usable
  pixels at the saturation level (most pixels sitting at one high
  value);
* `sky_verdict`: the sky at or above the saturation level (no usable
  sky: nothing could be measured above it);
* `no_star_verdict`, only where the pipeline found no star at all (the
  frame is refused either way, this says why): a bias when EXPTIME is 0
  or the scatter is the read noise alone (RDNOISE / GAIN); a flat
  when the level varies smoothly across the frame by at least
  `FLAT_RANGE_SIGMA` times the noise.  Not when the header declares a
  science frame (IMAGETYP = 'OBJECT'...): then the frame has no star.
"""

from __future__ import annotations

import math
import re
from typing import Final

import numpy as np
from astropy.io import fits
from numpy.typing import NDArray

from qualityfits.errors import NotScienceError, UnsupportedImageError

__all__ = [
    "FLAT_RANGE_SIGMA", "READ_NOISE_FACTOR", "SATURATED_FRACTION",
    "TYPE_KEYS", "colour_verdict", "header_verdict", "no_star_verdict",
    "saturation_verdict", "sky_verdict",
]

#: Keywords that say what kind of frame a file holds, by observatory
#: convention (IRAF/NOAO, CFHT, Subaru, ESO, JWST, LCO, MaxIm DL...),
#: in the order they are believed.
TYPE_KEYS: Final = (
    "IMAGETYP", "OBSTYPE", "EXPTYPE", "IMGTYPE", "FRAMETYP", "DATA-TYP",
    "EXP_TYPE", "ESO DPR TYPE", "ESO OBS TYPE", "OBS-TYPE",
)
#: Words of a type keyword's value (split at non-letters) that name a
#: calibration frame, and what the refusal calls it.
_KINDS: Final = (
    ("a flat field", frozenset({
        "FLAT", "FLATS", "DOMEFLAT", "SKYFLAT", "TWIFLAT", "TWILIGHTFLAT",
        "LAMPFLAT", "FLATFIELD", "FLATIMAGE", "DFLAT", "SFLAT", "TFLAT",
        "SUPERFLAT"})),
    ("a bias frame", frozenset({"BIAS", "ZERO", "BIASES"})),
    ("a dark frame", frozenset({"DARK", "DARKS"})),
)
#: Words that declare a sky exposure.
_SCIENCE: Final = frozenset({
    "OBJECT", "OBJ", "SCIENCE", "SCI", "LIGHT", "EXPOSE", "IMAGE",
    "STD", "STANDARD", "FOCUS", "FIELD", "TARGET"})
#: OBJECT read only when no type keyword is there, and only a value
#: that starts with one of these (OBJECT is usually a target's name).
_OBJECT: Final = re.compile(
    r"^\s*(?:(dome|sky|twilight|twi|lamp|screen)\s*)?(flat|bias)"
    r"(?:[\s_\-,:#0-9]|field|frame|s\b|$)", re.IGNORECASE)

#: Fraction of the usable pixels at the saturation level above which a
#: frame is refused ("most pixels sit at one high value").
SATURATED_FRACTION: Final = 0.5
#: A frame without star whose scatter is at most this many times the
#: read noise (RDNOISE / GAIN, in ADU) is a bias or a dark.
READ_NOISE_FACTOR: Final = 1.5
#: A frame without star whose background map spans this many times its
#: noise is a flat field (vignetting, illumination).
FLAT_RANGE_SIGMA: Final = 10.0


def _words(value: str) -> set[str]:
    return {w for w in re.split(r"[^A-Z]+", value.upper()) if w}


def _declared(header: fits.Header) -> tuple[str, str, str | None] | None:
    """Return the first type keyword, its value and the kind it names.

    The kind is ``"science"``, a calibration's name (``"a flat
    field"``...), or None when the value says neither.
    """
    for key in TYPE_KEYS:
        value = header.get(key)
        if not isinstance(value, str) or not value.strip():
            continue
        words = _words(value)
        for kind, names in _KINDS:
            if words & names:
                return key, value.strip(), kind
        if words & _SCIENCE:
            return key, value.strip(), "science"
        return key, value.strip(), None
    return None


def header_verdict(header: fits.Header, name: str) -> None:
    """Refuse a frame whose header says it is a calibration frame.

    Parameters
    ----------
    header : astropy.io.fits.Header
        The extension's header (with the primary header's keywords).
    name : str
        The extension's name, for the message.

    Raises
    ------
    NotScienceError
        When the first type keyword present (`TYPE_KEYS`) names a flat,
        a bias or a dark, or, without any, OBJECT starts with FLAT
        or BIAS (DOMEFLAT, 'Sky flat 3'...).
    """
    declared = _declared(header)
    if declared is not None:
        key, value, kind = declared
        if kind is not None and kind != "science":
            raise NotScienceError(
                f"{name}: {kind}, not a sky exposure ({key} = {value!r})")
        return
    value = header.get("OBJECT")
    if isinstance(value, str):
        match = _OBJECT.match(value)
        if match is not None:
            kind = ("a flat field" if match.group(2).lower() == "flat"
                    else "a bias frame")
            raise NotScienceError(
                f"{name}: {kind}, not a sky exposure (OBJECT = "
                f"{value.strip()!r}, and no IMAGETYP/OBSTYPE)")


#: The four orders of a Bayer colour filter array.
BAYER_PATTERNS: Final = frozenset({"RGGB", "BGGR", "GRBG", "GBRG"})
#: A frame whose header says a Bayer pattern is refused when the medians
#: of its four 2 x 2 pixel positions spread by more than this many times
#: the noise of one of them (two Seestar S50 frames: 1.5 and 2.2, a
#: PANOPTES DSLR frame 4.2; the monochrome frames of ../shared/data at
#: most 0.06).
CHECKERBOARD_SIGMA: Final = 0.5


def colour_verdict(header: fits.Header, pix: NDArray[np.float32],
                   name: str) -> None:
    """Refuse a colour sensor's raw mosaic (a Bayer pattern).

    Its neighbouring pixels see red, green and blue light: the sky is a
    2 x 2 checkerboard (a Seestar S50 frame reads 697-813 ADU by
    colour) and each star a patchwork, on which no FWHM or star count
    is honest.  Said by ``BAYERPAT`` (SharpCap, ASIAIR, N.I.N.A., the
    Seestar), or a ``FILTER`` that is a pattern (PANOPTES writes
    'RGGB'), and seen in the pixels: the medians of the four 2 x 2
    positions spread by more than `CHECKERBOARD_SIGMA` times the
    image's noise.  A header that says a pattern over even pixels (a
    plane already extracted or debayered, the keyword left behind) is
    not refused.

    Raises
    ------
    UnsupportedImageError
        Naming the keyword and the spread, and what to give instead.
    """
    said = None
    for key in ("BAYERPAT", "FILTER"):
        value = header.get(key)
        if isinstance(value, str) and value.strip().upper() in BAYER_PATTERNS:
            said = f"{key} = {value.strip()!r}"
            break
    if said is None or min(pix.shape) < 2:
        return
    ny, nx = (pix.shape[0] // 2) * 2, (pix.shape[1] // 2) * 2
    phases = [pix[i:ny:2, j:nx:2] for i in (0, 1) for j in (0, 1)]
    with np.errstate(invalid="ignore"):
        levels = [float(np.nanmedian(p)) for p in phases]
        # The noise within one colour: the checkerboard does not count.
        noise = 1.4826 * float(np.nanmedian(np.abs(
            phases[0][::3, ::3] - levels[0])))
    spread = max(levels) - min(levels)
    if not (math.isfinite(spread) and noise > 0
            and spread > CHECKERBOARD_SIGMA * noise):
        return
    raise UnsupportedImageError(
        f"{name}: a colour sensor's raw frame ({said}, and the four 2 x 2 "
        f"pixel positions read {min(levels):.4g} to {max(levels):.4g}): "
        "its pixels alternate red, green and blue, which this service "
        "does not debayer; give a monochrome frame, or one colour plane "
        "(e.g. the green pixels, or 2 x 2 super-pixels)")


def saturation_verdict(pix: NDArray[np.float32], bad: NDArray[np.bool_],
                       saturation: float, *, margin: float, source: str,
                       name: str) -> None:
    """Refuse a frame most of whose usable pixels are saturated.

    Parameters
    ----------
    pix : ndarray
        The image (its non-finite pixels zeroed, and in ``bad``).
    bad : ndarray of bool
        The pixels that do not count.
    saturation : float
        The saturation level [ADU]; a pixel at or above ``margin``
        times it is saturated.
    margin : float
        `QualityConfig.saturation_margin`.
    source : str
        Where the level comes from (``"SATURATE"``, ``"read off the
        pixels"``), for the message.
    name : str
        The extension's name.

    Raises
    ------
    NotScienceError
        When at least `SATURATED_FRACTION` of the usable pixels are
        saturated.
    """
    threshold = np.float32(margin * saturation)
    hit = int(np.count_nonzero(pix >= threshold))
    nbad = int(np.count_nonzero(bad))
    usable = pix.size - nbad
    if usable <= 0 or hit < SATURATED_FRACTION * usable:
        return  # a science frame ends here (the bad ones only lower hit)
    if nbad:
        hit -= int(np.count_nonzero(pix[bad] >= threshold))
        if hit < SATURATED_FRACTION * usable:
            return
    share = f"{100.0 * hit / usable:.0f} % of the pixels"
    top = float(np.max(pix, where=~bad, initial=-np.inf))
    if top > saturation / margin:
        # Not a plateau: the pixels rise well above the level given.
        raise NotScienceError(
            f"{name}: {share} are above the saturation level "
            f"{saturation:g} ({source}; they reach {top:g}): not a "
            "science exposure, or a wrong saturation level")
    raise NotScienceError(
        f"{name}: {share} are at the saturation level {saturation:g} "
        f"({source}): not a science exposure")


def sky_verdict(sky: float, saturation: float | None, *, source: str,
                name: str) -> None:
    """Refuse a frame whose sky is at or above the saturation level.

    Raises
    ------
    NotScienceError
        When ``sky`` >= ``saturation`` (nothing above the sky could be
        measured: no usable sky).
    """
    if saturation is None or not math.isfinite(sky) or sky < saturation:
        return
    raise NotScienceError(
        f"{name}: the sky level {sky:.6g} is at or above the saturation "
        f"level {saturation:g} ({source}): no usable sky, not a science "
        "exposure")


def no_star_verdict(header: fits.Header, *, name: str, n_sources: int,
                    sky_rms: float, mesh_back: NDArray[np.floating],
                    gain: float | None,
                    read_noise: float | None) -> None:
    """Say why a frame without any star is not a sky exposure.

    Called where the pipeline found no star usable for the PSF (it
    refuses the frame either way); says nothing when the header
    declares a science frame, or when the pixels look like neither a
    bias nor a flat (the frame then has no star, which is its own
    error).

    Parameters
    ----------
    header : astropy.io.fits.Header
        The extension's header (EXPTIME, the type keywords).
    name : str
        The extension's name.
    n_sources : int
        The sources detected.
    sky_rms : float
        SKY_RMS [ADU].
    mesh_back : ndarray
        The background map at the mesh centres [ADU].
    gain, read_noise : float or None
        GAIN [e-/ADU] and RDNOISE [e-] from the header.

    Raises
    ------
    NotScienceError
        A bias (EXPTIME = 0, or a scatter of at most `READ_NOISE_FACTOR`
        times RDNOISE / GAIN) or a flat (a background map spanning at
        least `FLAT_RANGE_SIGMA` times SKY_RMS).
    """
    declared = _declared(header)
    if declared is not None and declared[2] == "science":
        return
    none = (f"no star among {n_sources} source"
            + ("" if n_sources == 1 else "s"))
    exptime = header.get("EXPTIME", header.get("EXPOSURE"))
    if (isinstance(exptime, int | float) and not isinstance(exptime, bool)
            and exptime == 0):
        raise NotScienceError(
            f"{name}: a bias frame, not a sky exposure: EXPTIME = 0 and "
            f"{none}")
    if gain and read_noise and math.isfinite(sky_rms):
        noise = read_noise / gain
        if sky_rms <= READ_NOISE_FACTOR * noise:
            raise NotScienceError(
                f"{name}: a bias or dark frame, not a sky exposure: "
                f"{none}, and a scatter of {sky_rms:.3g} ADU, the read "
                f"noise alone (RDNOISE / GAIN = {noise:.3g} ADU)")
    back = np.asarray(mesh_back, dtype=np.float64)
    back = back[np.isfinite(back)]
    if back.size < 4 or not sky_rms > 0:
        return
    lo, hi = float(back.min()), float(back.max())
    span = (hi - lo) / sky_rms
    if span >= FLAT_RANGE_SIGMA:
        level = float(np.median(back))
        rel = (f"by {100.0 * (hi - lo) / level:.0f} % "
               if level > 0 else "")
        raise NotScienceError(
            f"{name}: a flat field, not a sky exposure: {none}, and a "
            f"smooth illumination varying {rel}({span:.0f} times the "
            "noise) across the frame")
