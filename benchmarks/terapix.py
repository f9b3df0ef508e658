"""Run the TERAPIX reference chain (SExtractor + PSFEx) on a FITS file.

Our pipeline is compared, estimator by estimator, with the programs
TERAPIX QualityFITS ran (see ``../shared/docs/qualityfits.md`` sections 2,
4 and 7), and timed against them.  This module runs that chain on one
FITS file, a single image or a multi-extension file (``.fits``,
``.fits.gz``, tile-compressed ``.fits.fz``), and returns the parsed
reference values per image extension, in file order:

1. ``source-extractor`` with ``terapix_config/psfex.sex``: the PSFEx feed
   (FITS_LDAC, 10 sigma, 35x35 vignets, 20-pixel-diameter aperture flux);
2. ``psfex`` with ``terapix_config/qualityfits.psfex`` (PSFVAR_DEGREES 0,
   or 2 on request): PSF model, XML diagnostics, catalogue of the stars;
3. ``source-extractor`` with ``terapix_config/qualityfits.sex``: the full
   catalogue at 1.5 sigma with CLASS_STAR, whose ``SEEING_FWHM`` is the
   PSFEx Moffat FWHM of step 2 (CLASS_STAR needs it within 5-20 %).

It imports only the standard library, numpy and astropy, never
``qualityfits``: it is the yardstick, not the thing measured.  Import it
with ``benchmarks/`` on ``sys.path`` (``import terapix``) or run
``python benchmarks/terapix.py IMAGE`` to print the values per extension.

Units and definitions (compare like with like, qualityfits.md section 4):

* All sizes returned are in **pixels**: SExtractor ``*_IMAGE`` columns
  and the PSFEx XML ``FWHM_*`` fields are measured on the pixel grid
  whatever ``PIXEL_SCALE`` is.  Only the PSFEx ``*_WCS_*`` fields are in
  arcsec, and they are meaningless for an image without a celestial WCS
  (PSFEx then takes CDELT = 1 deg, i.e. 3600 arcsec/pixel).
* ``FWHM_FromFluxRadius`` = 2 r_h (SExtractor FLUX_RADIUS, PHOT_FLUXFRAC
  0.5) of the PSF stars.  ``FWHM`` = FWHM of an elliptical Moffat fitted
  to the PSF model, 1/2 (FWHM_max + FWHM_min); ``FWHM_PixelFree`` the same
  on the pixel-deconvolved model.  For a Moffat profile 2 r_h exceeds the
  FWHM (by 26 % for beta = 3); for a Gaussian they agree.
* PSFEx ``Ellipticity`` = (FWHM_max - FWHM_min) / (FWHM_max + FWHM_min) of
  the Moffat fit, about half of SExtractor's ELLIPTICITY = 1 - B/A;
  ``Ellipticity1``, ``Ellipticity2`` = e cos 2 theta, e sin 2 theta (so
  ``Ellipticity2`` changes sign when the image is flipped).  Statistics
  ``_Min``/``_Mean``/``_Max`` run over the PSFVAR_NSNAP^2 snapshots of
  the model (identical for PSFVAR_DEGREES 0).
* ``Background_Mean``/``Background_StDev``: SExtractor's background map
  (BACK_SIZE 64, BACK_FILTERSIZE 3) and its RMS, as written in the XML.
"""

from __future__ import annotations

import argparse
import gzip
import math
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import time
import warnings
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from astropy.io import fits
from astropy.table import Table
from astropy.utils.exceptions import AstropyWarning
from astropy.wcs import WCS

__all__ = [
    "CONFIG_DIR",
    "ReferenceExtension",
    "ReferenceRun",
    "run_reference",
    "tools_available",
]

#: Folder holding the configuration files of the reference run.
CONFIG_DIR = Path(__file__).resolve().parent / "terapix_config"

#: Executable names tried, in order, for each program.
SEXTRACTOR_NAMES = ("source-extractor", "sex", "sextractor")
PSFEX_NAMES = ("psfex",)

# A FITS keyword no image carries: SExtractor reads GAIN_KEY/SATUR_KEY
# from every header and prefers them to GAIN/SATUR_LEVEL, so an override
# must point the key elsewhere.
_NO_KEY = "QFNOKEY_"
_PSF_STAR_COLUMNS = ("NORM_PSF", "FWHM_PSF", "ELLIP_PSF", "SNR_PSF",
                     "CHI2_PSF", "RESI_PSF", "DELTAX_IMAGE", "DELTAY_IMAGE")
_PSFEX_COUNT_PREFIX = ("NStars_",)
# PSFEx 3.21 writes these two wrongly in PSF_Extensions (the whole
# field's value, or 0): left out rather than passed on.
_PSFEX_BROKEN = ("FWHM_PixelFree_WCS_Min", "FWHM_PixelFree_WCS_Max")
_STDERR_TAIL = 2000
_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
_BARE_AMP = re.compile(r"&(?!(?:[A-Za-z]+|#[0-9]+|#x[0-9A-Fa-f]+);)")
_CTRL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f]")
_GZIP_MAGIC = b"\x1f\x8b"
_SNAP_FOR_VARIABLE_PSF = 9
_DEFAULT_SEEING_PX = 3.0


@dataclass(frozen=True)
class ReferenceExtension:
    """Reference values of one image extension.

    Attributes
    ----------
    index : int
        HDU index in the input file (0 for a single-image file).
    name : str
        EXTNAME, or ``"PRIMARY"``/``"HDU<n>"`` when there is none.
    background_mean : float
        SExtractor XML ``Background_Mean`` [ADU].
    background_stdev : float
        SExtractor XML ``Background_StDev`` [ADU].
    ndetect : int
        SExtractor XML ``NDetect`` of the full catalogue: detections at
        1.5 sigma before CLEAN removed spurious ones.
    psfex : dict of str to float
        PSFEx XML ``PSF_Extensions`` row of this extension (the
        per-extension twin of ``PSF_Fields``): ``NStars_Loaded_Mean``,
        ``NStars_Accepted_Mean``, ``FWHM_FromFluxRadius_Mean``,
        ``FWHM_Mean``/``_Min``/``_Max``, ``FWHM_PixelFree_Mean``,
        ``Ellipticity_Mean``, ``Ellipticity1_Mean``,
        ``Ellipticity2_Mean``, ``MoffatBeta_Mean``, ``Residuals_Mean``,
        ``Asymmetry_Mean``, ``Chi2_Mean``, ``Sampling_Mean`` and every
        other numeric field PSFEx writes, except
        ``FWHM_PixelFree_WCS_Min``/``_Max``, which PSFEx 3.21 gets wrong
        per extension (it writes the whole file's value, or 0).  FWHM in
        pixels except the ``*_WCS_*`` fields (arcsec).  When PSFEx
        accepted no star it writes zeros; they are returned as NaN
        (counts stay 0).
    catalogue : astropy.table.Table
        The full SExtractor catalogue (``qualityfits.param`` columns,
        pixel coordinates FITS 1-based).
    psf_stars : astropy.table.Table
        The stars PSFEx used for its model (``FLAGS_PSF == 0`` in its
        output catalogue), with the PSFEx-feed columns (``X_IMAGE``,
        ``Y_IMAGE``, ``FLUX_RADIUS``, ``FWHM_IMAGE``, ``ELONGATION``,
        ``ELLIPTICITY``, ``SNR_WIN``, ``FLUX_APER``, ``FLAGS``...) and the
        PSFEx per-star ones (``FWHM_PSF``, ``ELLIP_PSF``, ``CHI2_PSF``,
        ``RESI_PSF``...).  Empty (same columns) when PSFEx used none.
        PSFEx's output catalogue (``psfex_stars.ldac`` in ``workdir``)
        also lists the rejected candidates, with FLAGS_PSF bits 1 chi2,
        2 SExtractor FLAGS, 4 weight flags, 8 IMAFLAGS, 16 S/N, 32 size
        (outside the locus or SAMPLE_FWHMRANGE), 64 ellipticity,
        128 bad pixels.
    nsextracted : int
        SExtractor XML ``NSextracted`` = ``len(catalogue)``.
    sextractor : dict of str to float
        The whole numeric SExtractor XML ``Extension_Data`` row of the
        full catalogue (``Threshold``, ``Gain``, ``Satur_Level``,
        ``Pixel_Scale``...; ``Pixel_Scale`` is 0 when the WCS was used).
    """

    index: int
    name: str
    background_mean: float
    background_stdev: float
    ndetect: int
    psfex: dict[str, float]
    catalogue: Table
    psf_stars: Table
    nsextracted: int = 0
    sextractor: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class ReferenceRun:
    """Result of :func:`run_reference`.

    Attributes
    ----------
    extensions : tuple of ReferenceExtension
        One per image extension, in file order.
    wall_seconds : float
        Wall-clock time of the whole chain: decompression, the three
        program runs and the parsing of their outputs.
    cpu_seconds : float
        User + system CPU time of the child processes (the programs),
        from ``resource.getrusage(RUSAGE_CHILDREN)`` deltas.
    steps : dict of str to float
        Wall seconds per program run: ``"sextractor_psfex"`` (PSFEx
        feed), ``"psfex"``, ``"sextractor_full"`` (full catalogue).
    versions : dict of str to str
        ``{"source-extractor": ..., "psfex": ...}`` from their XML.
    settings : dict of str to object
        What the run used: ``gain``/``saturation`` (None: per-extension
        header value, see ``ReferenceExtension.sextractor``),
        ``pixel_scale`` passed to the programs (0 = WCS),
        ``pixscale_arcsec``, ``seeing_fwhm_arcsec``, ``psfvar_degrees``,
        ``psfvar_nsnap``, ``nthreads``, executables and ``workdir``.
    """

    extensions: tuple[ReferenceExtension, ...]
    wall_seconds: float
    cpu_seconds: float
    steps: dict[str, float]
    versions: dict[str, str]
    settings: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class _ImageHDU:
    index: int
    name: str
    pixscale: float | None  # arcsec, from the celestial WCS
    pixscal1: float | None  # arcsec, header PIXSCAL1


# --------------------------------------------------------------- tools


def _find(names: tuple[str, ...], word: str) -> str | None:
    """Return the first executable in ``names`` whose ``-v`` has word."""
    for name in names:
        path = shutil.which(name)
        if path is None:
            continue
        try:
            out = subprocess.run(
                [path, "-v"], capture_output=True, text=True,
                timeout=30, check=False,
            )
        except (OSError, subprocess.SubprocessError):
            continue
        if word.lower() in (out.stdout + out.stderr).lower():
            return path
    return None


def find_sextractor() -> str | None:
    """Path of SExtractor (``source-extractor`` on Debian), or None."""
    return _find(SEXTRACTOR_NAMES, "extractor")


def find_psfex() -> str | None:
    """Path of PSFEx, or None."""
    return _find(PSFEX_NAMES, "psfex")


def tools_available() -> bool:
    """Tell whether SExtractor, PSFEx and the star/galaxy network exist.

    Returns
    -------
    bool
        True when :func:`run_reference` can run.
    """
    sex = find_sextractor()
    return (sex is not None and find_psfex() is not None
            and _starnnw(sex) is not None)


def _starnnw(sextractor: str) -> Path | None:
    """The ``default.nnw`` CLASS_STAR network installed with SExtractor."""
    prefix = Path(sextractor).resolve().parent.parent / "share"
    for folder in ("source-extractor", "sextractor", "sex"):
        path = prefix / folder / "default.nnw"
        if path.is_file():
            return path
    return None


def _tail(text: str) -> str:
    text = _ANSI.sub("", text).strip()
    return text[-_STDERR_TAIL:] if text else "(no output)"


def _run(step: str, argv: list[str], cwd: Path,
         steps: dict[str, float], outputs: tuple[Path, ...]) -> None:
    """Run one program, time it, and fail loudly."""
    start = time.perf_counter()
    try:
        proc = subprocess.run(
            argv, cwd=cwd, capture_output=True, text=True, check=False,
        )
    except OSError as exc:
        msg = f"{step}: cannot run {argv[0]}: {exc}"
        raise RuntimeError(msg) from exc
    steps[step] = time.perf_counter() - start
    if proc.returncode != 0:
        msg = (f"{step} failed (exit {proc.returncode}): "
               f"{' '.join(argv)}\n{_tail(proc.stderr + proc.stdout)}")
        raise RuntimeError(msg)
    missing = [str(p) for p in outputs if not p.is_file()]
    if missing:
        msg = (f"{step} wrote no {', '.join(missing)}: {' '.join(argv)}\n"
               f"{_tail(proc.stderr + proc.stdout)}")
        raise RuntimeError(msg)


# --------------------------------------------------------------- input


def _is_gzip(path: Path) -> bool:
    with path.open("rb") as handle:
        return handle.read(2) == _GZIP_MAGIC


def _pixscale_from_wcs(header: fits.Header) -> float | None:
    """Mean pixel scale [arcsec] of a celestial WCS, else None."""
    try:
        wcs = WCS(header)
    except (ValueError, KeyError, MemoryError, TypeError):
        return None
    if not wcs.has_celestial:
        return None
    try:
        scales = wcs.celestial.proj_plane_pixel_scales()
    except (ValueError, TypeError):
        return None
    values = [abs(float(getattr(s, "value", s))) for s in scales]
    scale = 3600.0 * math.sqrt(values[0] * values[1])
    return scale if math.isfinite(scale) and scale > 0 else None


def _float_card(header: fits.Header, key: str) -> float | None:
    value = header.get(key)
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) and value > 0 else None


def _prepare(image: Path, workdir: Path) -> tuple[Path, list[_ImageHDU]]:
    """List the image HDUs; give SExtractor a file it can read.

    SExtractor 2.25 reads neither gzip ("cannot open") nor tile-compressed
    files ("Unknown TFORM"): a gzip file is decompressed byte for byte,
    a tile-compressed one rewritten uncompressed with the same HDU order.
    SExtractor skips table HDUs and an empty primary, so its n-th
    extension is the n-th HDU with a 2-D image.
    """
    source = image
    if _is_gzip(image):
        source = workdir / "input.fits"
        with gzip.open(image, "rb") as fin, source.open("wb") as fout:
            shutil.copyfileobj(fin, fout, 1 << 22)
    hdus: list[_ImageHDU] = []
    compressed = False
    with warnings.catch_warnings():
        # Old headers (MIDAS ESO-LOG cards, dd/mm/yy dates, TPV) are fine.
        warnings.simplefilter("ignore", AstropyWarning)
        with fits.open(source, memmap=True) as hdul:
            for index, hdu in enumerate(hdul):
                is_comp = isinstance(hdu, fits.CompImageHDU)
                if not (is_comp or isinstance(
                        hdu, fits.PrimaryHDU | fits.ImageHDU)):
                    continue
                header = hdu.header
                if int(header.get("NAXIS", 0)) < 2:
                    continue
                compressed |= is_comp
                name = str(header.get("EXTNAME", "")).strip()
                if not name:
                    name = "PRIMARY" if index == 0 else f"HDU{index}"
                hdus.append(_ImageHDU(
                    index=index, name=name,
                    pixscale=_pixscale_from_wcs(header),
                    pixscal1=_float_card(header, "PIXSCAL1"),
                ))
            if compressed:
                plain = workdir / "input_plain.fits"
                out = fits.HDUList()
                for index, hdu in enumerate(hdul):
                    if isinstance(hdu, fits.CompImageHDU):
                        new: Any = fits.ImageHDU(
                            data=hdu.data, header=hdu.header)
                    else:
                        new = hdu.copy()
                    if index == 0 and not isinstance(new, fits.PrimaryHDU):
                        out.append(fits.PrimaryHDU())
                    out.append(new)
                out.writeto(plain, overwrite=True)
                source = plain
    if not hdus:
        msg = f"{image}: no 2-D image HDU"
        raise ValueError(msg)
    return source, hdus


# ----------------------------------------------------------------- XML


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


def _parse_xml(path: Path) -> ET.Element:
    """Parse an AstrOmatic VOTable, repairing bare ``&`` if needed."""
    text = path.read_text(encoding="utf-8", errors="replace")
    try:
        return ET.fromstring(text)  # noqa: S314 - our own programs' output
    except ET.ParseError:
        fixed = _CTRL.sub(" ", _BARE_AMP.sub("&amp;", text))
        try:
            return ET.fromstring(fixed)  # noqa: S314
        except ET.ParseError as exc:
            msg = f"cannot parse {path}: {exc}"
            raise RuntimeError(msg) from exc


def _table_rows(root: ET.Element, table_id: str) -> list[dict[str, str]]:
    """Rows of the VOTable TABLE ``table_id`` as {FIELD name: TD text}."""
    for table in root.iter():
        if _local(table.tag) != "TABLE":
            continue
        if table_id not in (table.get("ID"), table.get("name")):
            continue
        names = [f.get("name", "") for f in table
                 if _local(f.tag) == "FIELD"]
        rows = []
        for tr in table.iter():
            if _local(tr.tag) != "TR":
                continue
            cells = [(td.text or "").strip() for td in tr
                     if _local(td.tag) == "TD"]
            rows.append(dict(zip(names, cells, strict=False)))
        return rows
    return []


def _param(root: ET.Element, name: str) -> str | None:
    for elem in root.iter():
        if _local(elem.tag) == "PARAM" and elem.get("name") == name:
            return elem.get("value")
    return None


def _number(text: str) -> float | None:
    """First number of a TD (arrays are space-separated), else None.

    In dual-image mode SExtractor writes two values (detection,
    measurement) in one TD; the runner uses single-image mode.
    """
    tokens = text.replace(",", " ").split()
    if not tokens:
        return None
    try:
        return float(tokens[0])
    except ValueError:
        return None


def _numeric_row(row: dict[str, str]) -> dict[str, float]:
    out = {}
    for key, text in row.items():
        value = _number(text)
        if value is not None:
            out[key] = value
    return out


def _psfex_rows(root: ET.Element, n_ext: int) -> list[dict[str, float]]:
    """Per-extension PSFEx diagnostics, zeros of a failed fit as NaN."""
    rows = _table_rows(root, "PSF_Extensions")
    if not rows:
        # Older PSFEx: only PSF_Fields, one row per catalogue, with the
        # statistics over extensions; exact per extension only if single.
        fields = _table_rows(root, "PSF_Fields")
        rows = fields if n_ext == 1 else []
    if len(rows) != n_ext:
        msg = (f"PSFEx XML has {len(rows)} extension rows, the catalogue "
               f"{n_ext} extensions")
        raise RuntimeError(msg)
    out = []
    for row in rows:
        values = _numeric_row(row)
        for key in ("Extension", "NExtensions", *_PSFEX_BROKEN):
            values.pop(key, None)
        if not values.get("NStars_Accepted_Total", 0.0) > 0:
            values = {k: (v if k.startswith(_PSFEX_COUNT_PREFIX)
                          else math.nan) for k, v in values.items()}
        out.append(values)
    return out


def _version(root: ET.Element) -> str:
    return _param(root, "Version") or "unknown"


# --------------------------------------------------------- catalogues


def _ldac_tables(path: Path) -> list[Table]:
    """The LDAC_OBJECTS tables of an LDAC file, in memory, in order."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", AstropyWarning)
        with fits.open(path, memmap=False) as hdul:
            return [Table.read(hdu).copy(copy_data=True) for hdu in hdul
                    if hdu.name == "LDAC_OBJECTS"]


def _psf_stars(feed: Table, outcat: Table | None, ext: int) -> Table:
    """Feed rows of the stars PSFEx used, with its per-star columns."""
    base = feed.copy(copy_data=True)
    if "VIGNET" in base.colnames:
        base.remove_column("VIGNET")
    extra = [c for c in _PSF_STAR_COLUMNS
             if outcat is not None and c in outcat.colnames]
    if outcat is None or len(outcat) == 0:
        stars = base[:0]
        for col in _PSF_STAR_COLUMNS:
            stars[col] = np.zeros(0, dtype=np.float32)
        return stars
    keep = (np.asarray(outcat["EXTENSION"]) == ext) & (
        np.asarray(outcat["FLAGS_PSF"]) == 0)
    used = outcat[keep]
    # SOURCE_NUMBER is the SExtractor NUMBER within the extension.
    row_of = {int(n): i for i, n in enumerate(np.asarray(base["NUMBER"]))}
    try:
        rows = [row_of[int(n)] for n in np.asarray(used["SOURCE_NUMBER"])]
    except KeyError as exc:
        msg = (f"PSFEx star {exc} of extension {ext} is not in the "
               "SExtractor feed")
        raise RuntimeError(msg) from exc
    stars = base[np.asarray(rows, dtype=int)]
    for col in extra:
        stars[col] = np.asarray(used[col])
    return stars


# -------------------------------------------------------------- runner


def _gain_args(gain: float | None) -> list[str]:
    if gain is None:
        return ["-GAIN_KEY", "GAIN"]
    return ["-GAIN_KEY", _NO_KEY, "-GAIN", f"{gain:.8g}"]


def _satur_args(saturation: float | None) -> list[str]:
    if saturation is None:
        return ["-SATUR_KEY", "SATURATE"]
    return ["-SATUR_KEY", _NO_KEY, "-SATUR_LEVEL", f"{saturation:.8g}"]


def _pixel_scale(hdus: list[_ImageHDU],
                 pixscale: float | None) -> tuple[float, float]:
    """(PIXEL_SCALE for SExtractor, scale in arcsec for SEEING_FWHM).

    Caller's value; else 0 (= use the WCS) when every extension has a
    celestial WCS; else the header PIXSCAL1; else 1 (sizes in pixels).
    """
    if pixscale is not None:
        if not pixscale > 0:
            msg = f"pixscale must be > 0, got {pixscale}"
            raise ValueError(msg)
        return pixscale, pixscale
    wcs_scales = [h.pixscale for h in hdus]
    if all(s is not None for s in wcs_scales):
        return 0.0, float(np.median(np.asarray(wcs_scales, dtype=float)))
    if hdus[0].pixscal1 is not None:
        return hdus[0].pixscal1, hdus[0].pixscal1
    return 1.0, 1.0


def run_reference(
    image: Path,
    *,
    workdir: Path | None = None,
    gain: float | None = None,
    saturation: float | None = None,
    pixscale: float | None = None,
    psfvar_degrees: int = 0,
    nthreads: int = 0,
    psfvar_nsnap: int | None = None,
    seeing_fwhm: float | None = None,
    flat: Path | None = None,
) -> ReferenceRun:
    """Run SExtractor and PSFEx on a FITS file, TERAPIX-style.

    Parameters
    ----------
    image : Path
        A single-image or multi-extension FITS file (``.fits``,
        ``.fits.gz``, tile-compressed ``.fits.fz``).
    workdir : Path, optional
        Where the programs write (created if needed, files kept); by
        default a temporary folder removed afterwards.
    gain : float, optional
        Gain [e-/ADU] for every extension.  By default SExtractor reads
        the ``GAIN`` card of each extension, and uses 0 (= infinite: no
        photon noise in the errors) where there is none.
    saturation : float, optional
        Saturation level [ADU].  By default the ``SATURATE`` card of each
        extension, or none (1e20) where there is none.
    pixscale : float, optional
        Pixel scale [arcsec].  By default 0 (= the WCS) when every image
        HDU has a celestial WCS, else ``PIXSCAL1``, else 1 (the image is
        measured in pixels).  Only CLASS_STAR and world quantities
        depend on it: every size returned is in pixels.
    psfvar_degrees : int
        PSFEx ``PSFVAR_DEGREES``: 0 (constant PSF, TERAPIX QualityFITS)
        or 2 (quadratic variation over each extension).
    nthreads : int
        ``NTHREADS`` of both programs (0 = all CPUs; the Debian builds
        are single-threaded and warn).
    psfvar_nsnap : int, optional
        PSFEx ``PSFVAR_NSNAP`` (diagnostic grid per axis); default 1 for
        a constant PSF, 9 otherwise.
    seeing_fwhm : float, optional
        ``SEEING_FWHM`` [arcsec] of the full catalogue (CLASS_STAR); by
        default the PSFEx Moffat FWHM times the pixel scale (3 pixels
        when PSFEx found no star).
    flat : Path, optional
        A master flat with the image's extensions: WeightWatcher first
        makes the weight and flag maps from it and the image, as
        QualityFITS's step 2 (flat outside 0.7-1.3 -> flag 1, image
        outside 10 ADU - saturation -> flag 4, both weight 0).

    Returns
    -------
    ReferenceRun
        One :class:`ReferenceExtension` per image HDU, timings, versions.

    Raises
    ------
    FileNotFoundError
        If ``image`` does not exist.
    ValueError
        If it holds no 2-D image or an argument is invalid.
    RuntimeError
        If a program is missing or fails (the message quotes the tail
        of its standard error) or writes unreadable output.
    """
    image = Path(image)
    if not image.is_file():
        msg = f"no such image: {image}"
        raise FileNotFoundError(msg)
    if psfvar_degrees < 0:
        msg = f"psfvar_degrees must be >= 0, got {psfvar_degrees}"
        raise ValueError(msg)
    for label, value in (("gain", gain), ("saturation", saturation),
                         ("seeing_fwhm", seeing_fwhm)):
        if value is not None and not (math.isfinite(value) and value >= 0):
            msg = f"{label} must be a finite number >= 0, got {value}"
            raise ValueError(msg)
    sex = find_sextractor()
    psfex = find_psfex()
    if sex is None or psfex is None:
        msg = (f"reference programs missing: source-extractor {sex}, "
               f"psfex {psfex} (Debian packages source-extractor, psfex)")
        raise RuntimeError(msg)
    nnw = _starnnw(sex)
    if nnw is None:
        msg = f"no default.nnw installed with {sex}"
        raise RuntimeError(msg)
    nsnap = psfvar_nsnap if psfvar_nsnap is not None else (
        1 if psfvar_degrees == 0 else _SNAP_FOR_VARIABLE_PSF)
    options: dict[str, Any] = {
        "sex": sex, "psfex": psfex, "nnw": nnw, "gain": gain,
        "saturation": saturation, "pixscale": pixscale,
        "degrees": psfvar_degrees, "nsnap": nsnap, "nthreads": nthreads,
        "seeing_fwhm": seeing_fwhm, "flat": flat,
        "weightwatcher": shutil.which("weightwatcher") if flat else None,
    }
    if flat is not None and options["weightwatcher"] is None:
        msg = "weightwatcher is missing (Debian package weightwatcher)"
        raise RuntimeError(msg)
    if workdir is None:
        with tempfile.TemporaryDirectory(prefix="terapix-") as tmp:
            return _run_chain(image, Path(tmp), keep=False, **options)
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    return _run_chain(image, workdir.resolve(), keep=True, **options)


def _run_chain(
    image: Path, work: Path, *, sex: str, psfex: str, nnw: Path,
    gain: float | None, saturation: float | None, pixscale: float | None,
    degrees: int, nsnap: int, nthreads: int, seeing_fwhm: float | None,
    keep: bool, flat: Path | None = None, weightwatcher: str | None = None,
) -> ReferenceRun:
    steps: dict[str, float] = {}
    wall0 = time.perf_counter()
    cpu0 = resource.getrusage(resource.RUSAGE_CHILDREN)

    source, hdus = _prepare(image.resolve(), work)
    pixel_scale, scale_arcsec = _pixel_scale(hdus, pixscale)
    common = [
        "-FILTER_NAME", str(CONFIG_DIR / "gauss_3.0_7x7.conv"),
        "-PIXEL_SCALE", f"{pixel_scale:.8g}",
        "-NTHREADS", str(nthreads),
        "-VERBOSE_TYPE", "QUIET",
        *_gain_args(gain), *_satur_args(saturation),
    ]

    # 0. Weight and flag maps (QualityFITS step 2).
    if flat is not None and weightwatcher is not None:
        satur = saturation or 65000.0  # the 16-bit ceiling
        weight, flags = work / "weight.fits", work / "flag.fits"
        _run("weightwatcher", [
            weightwatcher, "-WEIGHT_NAMES", f"{flat.resolve()},{source}",
            "-WEIGHT_MIN", "0.7,10", "-WEIGHT_MAX", f"1.3,{satur:.6g}",
            "-WEIGHT_OUTFLAGS", "1,4", "-FLAG_NAMES", "",
            "-OUTWEIGHT_NAME", str(weight), "-OUTFLAG_NAME", str(flags),
            "-WRITE_XML", "N", "-VERBOSE_TYPE", "QUIET",
            "-NTHREADS", str(max(nthreads, 1)),
        ], work, steps, (weight, flags))

    # 1. PSFEx feed.
    feed_cat, feed_xml = work / "psfex_feed.ldac", work / "psfex_feed.xml"
    _run("sextractor_psfex", [
        sex, str(source), "-c", str(CONFIG_DIR / "psfex.sex"),
        "-PARAMETERS_NAME", str(CONFIG_DIR / "psfex.param"),
        "-CATALOG_NAME", str(feed_cat), "-XML_NAME", str(feed_xml),
        *common,
    ], work, steps, (feed_cat, feed_xml))

    # 2. PSFEx.
    psf_xml, outcat = work / "psfex.xml", work / "psfex_stars.ldac"
    _run("psfex", [
        psfex, str(feed_cat), "-c", str(CONFIG_DIR / "qualityfits.psfex"),
        "-PSF_DIR", str(work), "-XML_NAME", str(psf_xml),
        "-OUTCAT_TYPE", "FITS_LDAC", "-OUTCAT_NAME", str(outcat),
        "-PSFVAR_DEGREES", str(degrees), "-PSFVAR_NSNAP", str(nsnap),
        "-NTHREADS", str(nthreads), "-VERBOSE_TYPE", "QUIET",
    ], work, steps, (psf_xml,))
    psf_root = _parse_xml(psf_xml)
    psf_rows = _psfex_rows(psf_root, len(hdus))

    # 3. Full catalogue, CLASS_STAR told the seeing PSFEx measured.
    if seeing_fwhm is None:
        fwhms = [r["FWHM_Mean"] for r in psf_rows
                 if math.isfinite(r.get("FWHM_Mean", math.nan))]
        fwhm_px = float(np.mean(fwhms)) if fwhms else _DEFAULT_SEEING_PX
        seeing_fwhm = fwhm_px * scale_arcsec
    full_cat, full_xml = work / "qualityfits.ldac", work / "qualityfits.xml"
    _run("sextractor_full", [
        sex, str(source), "-c", str(CONFIG_DIR / "qualityfits.sex"),
        "-PARAMETERS_NAME", str(CONFIG_DIR / "qualityfits.param"),
        "-STARNNW_NAME", str(nnw),
        "-CATALOG_NAME", str(full_cat), "-XML_NAME", str(full_xml),
        "-SEEING_FWHM", f"{seeing_fwhm:.6g}",
        *common,
    ], work, steps, (full_cat, full_xml))

    # Parse.
    full_root = _parse_xml(full_xml)
    sex_rows = _table_rows(full_root, "Extension_Data")
    catalogues = _ldac_tables(full_cat)
    feeds = _ldac_tables(feed_cat)
    stars_cat = _ldac_tables(outcat) if outcat.is_file() else []
    stars_all = stars_cat[0] if stars_cat else None
    for what, count in (("SExtractor XML rows", len(sex_rows)),
                        ("full catalogues", len(catalogues)),
                        ("PSFEx-feed catalogues", len(feeds))):
        if count != len(hdus):
            msg = (f"{image}: {len(hdus)} image HDUs but {count} {what}; "
                   f"see {work if keep else 'workdir='}")
            raise RuntimeError(msg)
    extensions = []
    for k, hdu in enumerate(hdus):
        row = _numeric_row(sex_rows[k])
        extensions.append(ReferenceExtension(
            index=hdu.index,
            name=hdu.name,
            background_mean=row.get("Background_Mean", math.nan),
            background_stdev=row.get("Background_StDev", math.nan),
            ndetect=int(row.get("NDetect", -1)),
            psfex=psf_rows[k],
            catalogue=catalogues[k],
            psf_stars=_psf_stars(feeds[k], stars_all, k + 1),
            nsextracted=int(row.get("NSextracted", len(catalogues[k]))),
            sextractor=row,
        ))

    cpu1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (cpu1.ru_utime - cpu0.ru_utime) + (cpu1.ru_stime - cpu0.ru_stime)
    settings: dict[str, Any] = {
        "gain": gain, "saturation": saturation,
        "pixel_scale": pixel_scale, "pixscale_arcsec": scale_arcsec,
        "seeing_fwhm_arcsec": seeing_fwhm,
        "psfvar_degrees": degrees, "psfvar_nsnap": nsnap,
        "nthreads": nthreads, "source-extractor": sex, "psfex": psfex,
        "workdir": str(work) if keep else None,
    }
    return ReferenceRun(
        extensions=tuple(extensions),
        wall_seconds=time.perf_counter() - wall0,
        cpu_seconds=cpu,
        steps=steps,
        versions={"source-extractor": _version(full_root),
                  "psfex": _version(psf_root)},
        settings=settings,
    )


# ----------------------------------------------------------------- CLI

_COLUMNS = (
    ("Background_Mean", "bkg_mean", "{:10.2f}"),
    ("Background_StDev", "bkg_std", "{:8.3f}"),
    ("NDetect", "ndet", "{:6d}"),
    ("NStars_Accepted_Mean", "nstar", "{:5.0f}"),
    ("FWHM_FromFluxRadius_Mean", "fwhm_rh", "{:7.3f}"),
    ("FWHM_Mean", "fwhm", "{:6.3f}"),
    ("FWHM_PixelFree_Mean", "fwhm_pf", "{:7.3f}"),
    ("Ellipticity_Mean", "ellip", "{:6.4f}"),
    ("MoffatBeta_Mean", "beta", "{:6.3f}"),
    ("Chi2_Mean", "chi2", "{:6.2f}"),
)


def format_run(run: ReferenceRun) -> str:
    """Table of the main values per extension, timings and versions."""
    head = ["hdu", "name".ljust(10)]
    widths = []
    for _, label, fmt in _COLUMNS:
        width = len(fmt.format(0.0 if "f" in fmt else 0))
        widths.append(max(width, len(label)))
        head.append(label.rjust(widths[-1]))
    lines = ["  ".join(head)]
    for ext in run.extensions:
        values: dict[str, float] = {
            "Background_Mean": ext.background_mean,
            "Background_StDev": ext.background_stdev,
            **ext.psfex,
        }
        cells = [f"{ext.index:3d}", ext.name[:10].ljust(10)]
        for (key, _, fmt), width in zip(_COLUMNS, widths, strict=True):
            if key == "NDetect":
                text = fmt.format(ext.ndetect)
            else:
                value = values.get(key, math.nan)
                text = fmt.format(value) if math.isfinite(value) else "nan"
            cells.append(text.rjust(width))
        lines.append("  ".join(cells))
    steps = ", ".join(f"{k} {v:.3f} s" for k, v in run.steps.items())
    lines.append(f"wall {run.wall_seconds:.3f} s, child CPU "
                 f"{run.cpu_seconds:.3f} s ({steps})")
    lines.append(", ".join(f"{k} {v}" for k, v in run.versions.items()))
    lines.append("FWHM in pixels; ellip = PSFEx (FWHMmax-FWHMmin)/"
                 "(FWHMmax+FWHMmin); bkg in ADU")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Command line: print the reference values of an image."""
    parser = argparse.ArgumentParser(
        description="Run SExtractor + PSFEx (TERAPIX QualityFITS style) "
                    "on a FITS file and print the values per extension.")
    parser.add_argument("image", type=Path)
    parser.add_argument("--workdir", type=Path, default=None,
                        help="keep the programs' files here")
    parser.add_argument("--gain", type=float, default=None)
    parser.add_argument("--saturation", type=float, default=None)
    parser.add_argument("--pixscale", type=float, default=None)
    parser.add_argument("--psfvar-degrees", type=int, default=0)
    parser.add_argument("--nthreads", type=int, default=0)
    args = parser.parse_args(argv)
    if not tools_available():
        print("source-extractor/psfex not found", file=sys.stderr)
        return 2
    try:
        run = run_reference(
            args.image, workdir=args.workdir, gain=args.gain,
            saturation=args.saturation, pixscale=args.pixscale,
            psfvar_degrees=args.psfvar_degrees, nthreads=args.nthreads)
    except (OSError, ValueError, RuntimeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(args.image)
    print(format_run(run))
    return 0


if __name__ == "__main__":
    sys.exit(main())
