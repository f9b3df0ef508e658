"""Pictures of a quality report: previews, mosaics and the QA plots.

The PNG products of the original QualityFITS, named as it named them
(``<stem>_bkg_histo.png``, ``_bkg_m``, ``_fwhm_histo``, ``_psf_m``,
``_ell``, ``_rhmag``, ``_rhmag_star``, ``_rhmag_gal``, ``_star_histo``,
``_gal_histo``, ``_m``, ``_wmm``), the PSF model with its radial profile
and Moffat fit (``_psf``), a binned preview of every CCD's image and
weight (``<stem>_<EXTNAME>.png``, ``<stem>_<EXTNAME>_weight.png``) and
small thumbnails of the exposure pictures for a web page
(``tn/<stem>_<suffix>_tn.png``).  `write_plots` writes the exposure
pictures (and, if asked, the CCD previews); a worker process can write
a CCD's previews as soon as the CCD is done with `write_ccd_previews`
(or `write_ccd_preview` at `ccd_preview_path`).
``docs/products-plots.md`` says how to read each picture.

Mosaics are laid out from the report's layout table (celestial WCS,
else DETSEC, else the single CCD's own pixels): each CCD's binned array
is rotated by the nearest multiple of 90 degrees and flipped as its
corners say, and pasted into one numpy raster; nothing is resampled
pixel by pixel.  With a WCS the sky is shown north up, east left.

Pixel previews are written with ``matplotlib.image.imsave`` (no
figure), the plots with a `matplotlib.figure.Figure` drawn on the Agg
canvas (never pyplot; the backend is set to Agg when pyplot is not
loaded yet).  matplotlib is imported only when a picture is made, so
``import qualityfits`` does not pay for it.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable, MutableMapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Final

import numpy as np
from numpy.typing import ArrayLike, NDArray

from qualityfits.moffat import fwhm_factor
from qualityfits.presentation import instrumental
from qualityfits.report import ExtensionReport, Preview, QualityReport

if TYPE_CHECKING:
    from astropy.table import Table
    from matplotlib.axes import Axes
    from matplotlib.colors import Normalize
    from matplotlib.figure import Figure

__all__ = [
    "PLOT_IDS",
    "CcdPlace",
    "ImageStretch",
    "Mosaic",
    "Plot",
    "assemble_mosaic",
    "ccd_places",
    "ccd_preview_path",
    "image_stretch",
    "orient",
    "weight_levels",
    "write_ccd_preview",
    "write_ccd_previews",
    "write_plots",
]

FloatArray = NDArray[np.float64]

#: Longest side of a mosaic raster, in raster pixels; the CCD previews
#: are block-averaged further when the mosaic would be larger.
MOSAIC_MAX_PIXELS: Final = 1200
#: Width of the thumbnails, in pixels (about).
THUMBNAIL_WIDTH: Final = 200
#: Resolution of the plots; their sizes are given in inches.
DPI: Final = 100
#: Colour of preview blocks without a usable pixel (RGB, 0-255).
NO_DATA_RGB: Final = (200, 50, 50)
#: PNG compression level (zlib 1-9): on a CCD preview and a mosaic
#: figure, 1 is 3 times faster than Pillow's default 6 for files 3-8 %
#: smaller (noise does not compress).
_PNG_OPTIONS: Final = {"compress_level": 1}
_STRETCH_SAMPLE: Final = 200_000
_STAR_COLOUR: Final = "tab:blue"
_GALAXY_COLOUR: Final = "0.45"
_ARTEFACT_COLOUR: Final = "tab:orange"
_PSF_STAR_COLOUR: Final = "red"
#: The PSF FWHM map's colour scale is in per cent of the map's median
#: and spans at least this much either side of it, so that the few per
#: cent of variation usual over a mosaic stay pale ...
PSF_MAP_MIN_SPAN: Final = 10.0
#: ... and, when the map varies more, its largest deviation rounded up
#: to a multiple of this many per cent.
PSF_MAP_SPAN_STEP: Final = 5.0
#: Diverging colours about the median: blue sharper, red broader.
_PSF_MAP_CMAP: Final = "RdBu_r"
#: CCD names in the mosaics: font size limits, points (8 pt is 11
#: pixels at `DPI`) ...
CCD_LABEL_MIN_PT: Final = 7.0
CCD_LABEL_MAX_PT: Final = 11.0
#: ... and the fraction of a CCD's width the name may take.
_CCD_LABEL_WIDTH: Final = 0.85
#: Width of a character of the label font (DejaVu Sans, upper case and
#: digits included), in ems.
_CHAR_EM: Final = 0.7


@dataclass(frozen=True)
class Plot:
    """One picture written: what the products manifest needs.

    Attributes
    ----------
    id : str
        Stable product id (``"bkg_histo"``, ``"mosaic"``,
        ``"preview_ccd01"``...).
    path : Path
        The PNG file.
    description : str
        One line, for the manifest and the HTML report.
    thumbnail : Path or None
        A small copy (about 200 pixels wide) for a web page, in
        ``tn/``; None for the CCD previews (small already).
    """

    id: str
    path: Path
    description: str
    thumbnail: Path | None = None


# --------------------------------------------------------------------------
# matplotlib, lazily


def _use_agg() -> None:
    """Select the Agg backend unless pyplot already chose one."""
    import matplotlib as mpl  # noqa: PLC0415

    if "matplotlib.pyplot" not in sys.modules:
        mpl.use("Agg")


def _imsave(path: Path, rgb: NDArray[np.uint8], description: str) -> None:
    """Write an RGB(A) uint8 array, row 0 at the top, as a PNG."""
    from matplotlib.image import imsave  # noqa: PLC0415

    path.parent.mkdir(parents=True, exist_ok=True)
    imsave(path, rgb, format="png",
           metadata={"Software": "QualityFITS", "Description": description},
           pil_kwargs=dict(_PNG_OPTIONS))


def _new_figure() -> Figure:
    """Make a figure on an Agg canvas (no pyplot, no global state)."""
    _use_agg()
    from matplotlib.backends.backend_agg import (  # noqa: PLC0415
        FigureCanvasAgg,
    )
    from matplotlib.figure import Figure  # noqa: PLC0415

    fig = Figure(dpi=DPI, facecolor="white")
    FigureCanvasAgg(fig)
    return fig


def _figure_rgb(fig: Figure) -> NDArray[np.uint8]:
    """Draw a figure and return its pixels (RGB, row 0 at the top)."""
    canvas = fig.canvas
    canvas.draw()
    rgba = np.asarray(canvas.buffer_rgba())  # type: ignore[attr-defined]
    return np.ascontiguousarray(rgba[..., :3])


def _shrink(rgb: NDArray[np.uint8], width: int) -> NDArray[np.uint8]:
    """Block-average an RGB picture down to about ``width`` pixels."""
    factor = max(1, round(rgb.shape[1] / width))
    ny = rgb.shape[0] // factor * factor
    nx = rgb.shape[1] // factor * factor
    blocks = rgb[:ny, :nx].reshape(ny // factor, factor, nx // factor,
                                   factor, rgb.shape[2])
    return np.round(blocks.mean(axis=(1, 3))).astype(np.uint8)


# --------------------------------------------------------------------------
# Stretches


@dataclass(frozen=True)
class ImageStretch:
    """An asinh stretch anchored on the sky: linear in the noise.

    ``t = asinh((x - low) / soft) / asinh((high - low) / soft)``,
    clipped to [0, 1]: black two noise sigmas below the sky, linear
    over the noise (``soft`` is 1.5 sigma), logarithmic for the
    sources, white at ``high``: the sky is a dark grey in which the
    noise shows, faint galaxies stand out, bright stars keep a core.

    Attributes
    ----------
    sky, noise : float
        Median and robust standard deviation of the pixels [ADU].
    low, high, soft : float
        Black level, white level and linear range [ADU].
    """

    sky: float
    noise: float
    low: float
    high: float
    soft: float

    def __call__(self, values: NDArray[np.floating]) -> FloatArray:
        """Map values to [0, 1] (NaN stays NaN)."""
        scale = math.asinh((self.high - self.low) / self.soft)
        with np.errstate(invalid="ignore"):
            out = np.arcsinh((np.asarray(values, np.float64) - self.low)
                             / self.soft) / scale
        return np.clip(out, 0.0, 1.0)

    def inverse(self, t: NDArray[np.floating]) -> FloatArray:
        """Map [0, 1] back to values."""
        scale = math.asinh((self.high - self.low) / self.soft)
        return self.low + self.soft * np.sinh(np.asarray(t, float) * scale)


def _sample(values: NDArray[np.floating]) -> FloatArray:
    """Finite values of an array, at most ~200 000 of them, evenly."""
    flat = np.asarray(values).ravel()
    step = max(1, flat.size // _STRETCH_SAMPLE)
    sample = flat[::step].astype(np.float64)
    return sample[np.isfinite(sample)]


def image_stretch(values: NDArray[np.floating]) -> ImageStretch:
    """Choose the display stretch of a (binned) sky image.

    Parameters
    ----------
    values : ndarray
        Pixel values; NaN are ignored.

    Returns
    -------
    ImageStretch
        Black at sky − 2σ, asinh softening 1.5σ, white at the 99.9th
        percentile (at least sky + 40σ), σ the robust scatter of the
        pixels (1.4826 × MAD).
    """
    sample = _sample(values)
    if sample.size == 0:
        return ImageStretch(0.0, 1.0, -2.0, 40.0, 3.0)
    sky = float(np.median(sample))
    noise = 1.4826 * float(np.median(np.abs(sample - sky)))
    if not noise > 0:
        spread = float(np.std(sample))
        noise = spread if spread > 0 else max(abs(sky) * 1e-3, 1.0)
    high = max(float(np.percentile(sample, 99.9)), sky + 40.0 * noise)
    return ImageStretch(sky=sky, noise=noise, low=sky - 2.0 * noise,
                        high=high, soft=1.5 * noise)


def weight_levels(values: NDArray[np.floating]) -> tuple[float, float]:
    """Black and white levels of a weight map (linear from zero).

    Black is zero weight (flagged pixels), white a little above the
    99.5th percentile of the positive weights, so that grey levels are
    proportions of the full weight: a 10 % vignetting is a slightly
    darker grey, a flagged column black, and the noise of a weight
    derived from the sky RMS is not magnified.

    Parameters
    ----------
    values : ndarray
        Weights; NaN are ignored.

    Returns
    -------
    tuple of float
        (low, high): 0 and the white level.
    """
    sample = _sample(values)
    positive = sample[sample > 0]
    if positive.size == 0:
        return 0.0, 1.0
    return 0.0, 1.05 * float(np.percentile(positive, 99.5))


def _grey_rgb(t: FloatArray, *, inside: NDArray[np.bool_] | None = None
              ) -> NDArray[np.uint8]:
    """[0, 1] values to RGB(A) grey; NaN in red, outside transparent."""
    level = np.round(np.nan_to_num(t, nan=0.0) * 255.0).astype(np.uint8)
    channels = 3 if inside is None else 4
    rgb = np.empty((*t.shape, channels), np.uint8)
    rgb[..., 0] = rgb[..., 1] = rgb[..., 2] = level
    rgb[np.isnan(t), :3] = NO_DATA_RGB
    if inside is not None:
        rgb[..., 3] = np.where(inside, 255, 0)
    return rgb


def _preview_rgb(preview: Preview, kind: str) -> NDArray[np.uint8]:
    """RGB picture of a CCD preview, FITS order (row 0 at the bottom)."""
    if kind == "image":
        values = np.asarray(preview.image, np.float64)
        return _grey_rgb(image_stretch(values)(values))
    if kind == "weight":
        values = np.asarray(preview.weight, np.float64)
        low, high = weight_levels(values)
        with np.errstate(invalid="ignore"):
            t = np.clip((values - low) / (high - low), 0.0, 1.0)
        return _grey_rgb(t)
    raise ValueError(f"kind must be 'image' or 'weight', got {kind!r}")


# --------------------------------------------------------------------------
# Per-CCD previews (callable from a worker process)


def _slug(name: str) -> str:
    """Make an extension name safe in file names and product ids."""
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in name)


def ccd_preview_path(outdir: Path, stem: str, extname: str, *,
                     kind: str = "image") -> Path:
    """File name of a CCD's preview, as `write_plots` names it.

    Parameters
    ----------
    outdir : Path
        Output directory.
    stem : str
        Image stem (the input file name without its FITS suffixes).
    extname : str
        The CCD's EXTNAME.
    kind : {"image", "weight"}
        Which preview.

    Returns
    -------
    Path
        ``outdir/<stem>_<EXTNAME>.png`` or
        ``outdir/<stem>_<EXTNAME>_weight.png``.
    """
    suffix = "" if kind == "image" else "_weight"
    return Path(outdir) / f"{stem}_{_slug(extname)}{suffix}.png"


def write_ccd_preview(preview: Preview, path: Path, *,
                      kind: str = "image") -> None:
    """Write one CCD's binned preview as a PNG, one pixel per block.

    Cheap (a few milliseconds for a 2048 x 4612 CCD binned 8 x 8): a
    worker process can call it as soon as its CCD is done.  The image
    gets `image_stretch` (asinh on the sky and its noise), the weight
    `weight_levels` (linear); blocks without a usable pixel are red.
    North is wherever the CCD's +y axis points: the CCD is shown as
    stored, row 1 at the bottom.

    Parameters
    ----------
    preview : Preview
        The CCD's binned image and weight.
    path : Path
        Output PNG (its directory is created).
    kind : {"image", "weight"}
        Which of the two to write.

    Raises
    ------
    ValueError
        If ``kind`` is neither.
    """
    rgb = _preview_rgb(preview, kind)
    what = "weight" if kind == "weight" else "image"
    _imsave(Path(path), rgb[::-1],
            f"CCD {what}, binned {preview.binning}x{preview.binning}")


# --------------------------------------------------------------------------
# Mosaic geometry


@dataclass(frozen=True)
class CcdPlace:
    """Where one CCD lies in the displayed mosaic frame.

    The display frame is the mosaic frame of the layout table with its
    x axis reversed when ``flip_x`` was asked (the sky, east left):
    display x grows to the right, display y upwards.

    Attributes
    ----------
    name : str
        EXTNAME.
    nx, ny : int
        Size of the data section [CCD pixels].
    origin : ndarray, shape (2,)
        Display position of the outer corner of the first pixel.
    ex, ey : ndarray, shape (2,)
        Display vectors of one CCD pixel along the CCD's +x and +y.
    transpose : bool
        The CCD's x axis runs along the display's y axis.
    flip_rows, flip_cols : bool
        After the transpose, reverse the rows / the columns.
    """

    name: str
    nx: int
    ny: int
    origin: FloatArray
    ex: FloatArray
    ey: FloatArray
    transpose: bool
    flip_rows: bool
    flip_cols: bool

    @property
    def pixel_size(self) -> float:
        """Display units per CCD pixel (geometric mean of both axes)."""
        return math.sqrt(float(np.hypot(*self.ex) * np.hypot(*self.ey)))

    def box(self, width: float | None = None,
            height: float | None = None) -> tuple[float, float, float,
                                                  float]:
        """Display bounding box of a rectangle from the first corner.

        Parameters
        ----------
        width, height : float, optional
            Its size along the CCD's x and y [CCD pixels]; the data
            section by default.

        Returns
        -------
        tuple of float
            (xmin, xmax, ymin, ymax) in display units.
        """
        w = self.nx if width is None else width
        h = self.ny if height is None else height
        corners = np.array([self.origin, self.origin + w * self.ex,
                            self.origin + h * self.ey,
                            self.origin + w * self.ex + h * self.ey])
        return (float(corners[:, 0].min()), float(corners[:, 0].max()),
                float(corners[:, 1].min()), float(corners[:, 1].max()))

    def centre(self) -> tuple[float, float]:
        """Display position of the CCD centre."""
        c = self.origin + 0.5 * self.nx * self.ex + 0.5 * self.ny * self.ey
        return float(c[0]), float(c[1])


def ccd_places(layout: Table, *, flip_x: bool = False) -> list[CcdPlace]:
    """Place every CCD of a layout table in the display frame.

    Each CCD's axes are snapped to the nearest display axis (a rotation
    by a multiple of 90 degrees, and flips); its position and scale are
    the layout's.

    Parameters
    ----------
    layout : astropy.table.Table
        `qualityfits.report.ExposureReport.layout`: EXTNAME, NAXIS1,
        NAXIS2 and the mosaic coordinates of the corners X00, Y00 (first
        pixel), X10, Y10 (end of the first row), X01, Y01 (start of the
        last row).
    flip_x : bool
        Reverse the mosaic x axis (for tangent-plane offsets, X east:
        the sky is shown east left).

    Returns
    -------
    list of CcdPlace
        One per row, in order.
    """
    sx = -1.0 if flip_x else 1.0
    places = []
    for row in layout:
        nx, ny = int(row["NAXIS1"]), int(row["NAXIS2"])
        p00 = np.array([sx * float(row["X00"]), float(row["Y00"])])
        p10 = np.array([sx * float(row["X10"]), float(row["Y10"])])
        p01 = np.array([sx * float(row["X01"]), float(row["Y01"])])
        ex = (p10 - p00) / max(nx, 1)
        ey = (p01 - p00) / max(ny, 1)
        transpose = abs(ex[1]) > abs(ex[0])
        if transpose:
            flip_rows, flip_cols = bool(ex[1] < 0), bool(ey[0] < 0)
        else:
            flip_rows, flip_cols = bool(ey[1] < 0), bool(ex[0] < 0)
        places.append(CcdPlace(
            name=str(row["EXTNAME"]), nx=nx, ny=ny, origin=p00, ex=ex, ey=ey,
            transpose=bool(transpose), flip_rows=flip_rows,
            flip_cols=flip_cols))
    return places


def orient(array: NDArray[np.floating], place: CcdPlace
           ) -> NDArray[np.floating]:
    """Turn a CCD-ordered array into display order.

    Parameters
    ----------
    array : ndarray, shape (rows, columns)
        Row 0 along the CCD's first row (FITS order), column 0 along its
        first column.
    place : CcdPlace
        The CCD's place.

    Returns
    -------
    ndarray
        A view with row 0 at the bottom of the display and column 0 on
        its left.
    """
    out = array.T if place.transpose else array
    if place.flip_rows:
        out = out[::-1]
    if place.flip_cols:
        out = out[:, ::-1]
    return out


def _block_mean(array: NDArray[np.floating], block: int) -> FloatArray:
    """Mean of the finite values in each ``block`` x ``block`` block."""
    values = np.asarray(array, np.float64)
    if block == 1:
        return values
    ny, nx = values.shape
    py, px = -ny % block, -nx % block
    padded = np.pad(values, ((0, py), (0, px)), constant_values=np.nan)
    blocks = padded.reshape(padded.shape[0] // block, block,
                            padded.shape[1] // block, block)
    finite = np.isfinite(blocks)
    total = np.where(finite, blocks, 0.0).sum(axis=(1, 3))
    count = finite.sum(axis=(1, 3))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(count > 0, total / count, np.nan)


@dataclass(frozen=True)
class Mosaic:
    """CCD arrays pasted into one raster of the display frame.

    Attributes
    ----------
    data : ndarray
        Row 0 at the bottom, column 0 on the left of the display; NaN
        where no CCD pixel is usable, and between CCDs.
    inside : ndarray of bool
        True on the CCDs (usable or not), False in the gaps.
    extent : tuple of float
        (xmin, xmax, ymin, ymax) of the raster in display units.
    scale : float
        Display units per raster pixel.
    block : int
        Array pixels averaged into one raster pixel (along each axis).
    """

    data: FloatArray
    inside: NDArray[np.bool_]
    extent: tuple[float, float, float, float]
    scale: float
    block: int


def _mosaic_bounds(places: Sequence[CcdPlace]) -> tuple[float, float,
                                                        float, float]:
    boxes = np.array([p.box() for p in places])
    return (float(boxes[:, 0].min()), float(boxes[:, 1].max()),
            float(boxes[:, 2].min()), float(boxes[:, 3].max()))


def assemble_mosaic(arrays: Sequence[NDArray[np.floating] | None],
                    places: Sequence[CcdPlace], *, binning: float,
                    max_pixels: int = MOSAIC_MAX_PIXELS) -> Mosaic:
    """Paste binned CCD arrays into one raster, by their layout.

    Parameters
    ----------
    arrays : sequence of ndarray or None
        One per CCD (None: nothing to paste, e.g. a failed CCD), in CCD
        order (row 0 = the first CCD row), each pixel ``binning`` CCD
        pixels on a side, pixel (0, 0) at the CCD's first corner.
    places : sequence of CcdPlace
        Where the CCDs go (`ccd_places`), same order.
    binning : float
        CCD pixels per array pixel.
    max_pixels : int
        Largest side of the raster: arrays are block-averaged by the
        smallest integer factor that keeps the raster within it.

    Returns
    -------
    Mosaic
        The raster.  All CCDs (failed ones too) are inside its extent;
        ``inside`` marks the CCDs that were pasted.

    Raises
    ------
    ValueError
        If ``arrays`` and ``places`` differ in length, or there is no
        CCD.
    """
    if len(arrays) != len(places):
        raise ValueError("one array (or None) per CCD place is needed")
    if not places:
        raise ValueError("no CCD to place")
    xmin, xmax, ymin, ymax = _mosaic_bounds(places)
    pixel = float(np.median([p.pixel_size for p in places])) * binning
    if not pixel > 0:
        raise ValueError("the layout has CCDs of zero size")
    longest = max(xmax - xmin, ymax - ymin) / pixel
    block = max(1, math.ceil(longest / max_pixels))
    scale = pixel * block
    nx = max(1, math.ceil((xmax - xmin) / scale - 1e-6))
    ny = max(1, math.ceil((ymax - ymin) / scale - 1e-6))
    data = np.full((ny, nx), np.nan)
    inside = np.zeros((ny, nx), bool)
    for array, place in zip(arrays, places, strict=True):
        if array is None:
            continue
        binned = _block_mean(array, block)
        rows, cols = array.shape
        x0, _, y0, _ = place.box(cols * binning, rows * binning)
        shown = orient(binned, place)
        c0 = round((x0 - xmin) / scale)
        r0 = round((y0 - ymin) / scale)
        r1 = min(ny, r0 + shown.shape[0])
        c1 = min(nx, c0 + shown.shape[1])
        sr, sc = max(0, -r0), max(0, -c0)
        r0, c0 = max(0, r0), max(0, c0)
        if r1 <= r0 or c1 <= c0:
            continue
        data[r0:r1, c0:c1] = shown[sr:sr + r1 - r0, sc:sc + c1 - c0]
        inside[r0:r1, c0:c1] = True
    return Mosaic(data=data, inside=inside,
                  extent=(xmin, xmin + nx * scale, ymin, ymin + ny * scale),
                  scale=scale, block=block)


# --------------------------------------------------------------------------
# What the plots share


@dataclass(frozen=True)
class _Frame:
    """The mosaic frame of a report and how to label it."""

    kind: str
    sign: float  # data x = sign * display x
    xlabel: str
    ylabel: str
    unit: str


def _frame(kind: str) -> _Frame:
    if kind == "wcs":
        return _Frame(kind, -1.0, "East offset [arcmin]  (east left)",
                      "North offset [arcmin]", "arcmin")
    if kind == "detsec":
        return _Frame(kind, 1.0, "Mosaic x (DETSEC) [pix]",
                      "Mosaic y (DETSEC) [pix]", "pix")
    return _Frame(kind, 1.0, "x [pix]", "y [pix]", "pix")


@dataclass(frozen=True)
class _Report:
    """A report with what every plot needs worked out once."""

    report: QualityReport
    stem: str
    frame: _Frame
    ccds: tuple[tuple[ExtensionReport | None, CcdPlace], ...]
    pixscale: float | None
    zp_note: str

    @property
    def ok(self) -> list[ExtensionReport]:
        return [e for e in self.report.extensions if e.ok]

    def data_box(self, place: CcdPlace, width: float | None = None,
                 height: float | None = None) -> tuple[float, float, float,
                                                       float]:
        """(left, right, bottom, top) of a box in data coordinates."""
        x0, x1, y0, y1 = place.box(width, height)
        s = self.frame.sign
        return s * x0, s * x1, y0, y1


def _match_layout(report: QualityReport
                  ) -> tuple[tuple[ExtensionReport | None, CcdPlace], ...]:
    layout = report.exposure.layout
    if layout is None or len(layout) == 0:
        return ()
    places = ccd_places(layout, flip_x=report.exposure.placement == "wcs")
    exts = list(report.extensions)
    if [e.name for e in exts] == [p.name for p in places]:
        return tuple(zip(exts, places, strict=True))
    by_name = {e.name: e for e in exts}
    return tuple((by_name.get(p.name), p) for p in places)


def _pixscale(exts: Sequence[ExtensionReport]) -> float | None:
    """Return the pixel scale [arcsec], or None if a CCD lacks one."""
    scales = [e.metrics.get("PIXSCALE", math.nan) for e in exts]
    if not scales or not all(math.isfinite(s) and s > 0 for s in scales):
        return None
    return float(np.median(scales))


def _zp_note(exts: Sequence[ExtensionReport]) -> str:
    """How the magnitudes of the plots are calibrated, in a few words."""
    inst = [e for e in exts if instrumental(e.metrics)]
    if inst and len(inst) == len(exts):
        return "instrumental: no zero point, ZP = 0"
    zps = [e.metrics["ZEROPOINT"] for e in exts if e not in inst]
    text = f"ZP = {np.median(zps):.2f}" if zps else "instrumental"
    if inst:
        text += f"; instrumental on {len(inst)} of {len(exts)} CCDs"
    return text


def _prepare(report: QualityReport, stem: str) -> _Report:
    ok = [e for e in report.extensions if e.ok]
    return _Report(report=report, stem=stem,
                   frame=_frame(report.exposure.placement),
                   ccds=_match_layout(report), pixscale=_pixscale(ok),
                   zp_note=_zp_note(ok))


def _exposure_metric(rep: _Report, name: str) -> float:
    stats = rep.report.exposure.metrics.get(name)
    value = math.nan if stats is None else stats.get("median", math.nan)
    return float(value) if value is not None else math.nan


def _no_data(ax: Axes, text: str) -> None:
    ax.text(0.5, 0.5, text, transform=ax.transAxes, ha="center",
            va="center", fontsize=13, color="0.3")


def _title(ax: Axes, rep: _Report, what: str) -> None:
    ax.set_title(f"{rep.stem}: {what}", fontsize=12)


@dataclass(frozen=True)
class _MosaicAxes:
    ax: Axes
    cax: Axes | None
    limits: tuple[float, float, float, float]  # display units


def _mosaic_axes(fig: Figure, rep: _Report, what: str, *,
                 colorbar: bool, strip: float = 0.0) -> _MosaicAxes:
    # A title of two lines (``what`` holds a newline) gets the room.
    """Size the figure to the mosaic's shape; axes, colour bar, limits.

    ``strip`` adds that fraction of the mosaic's height below it (room
    for a key).  The axes box has exactly the aspect ratio of the
    limits, so that an equal-scale map fills it.
    """
    if rep.ccds:
        xmin, xmax, ymin, ymax = _mosaic_bounds([p for _, p in rep.ccds])
    else:
        xmin, xmax, ymin, ymax = 0.0, 1.0, 0.0, 1.0
    pad = 0.02 * max(xmax - xmin, ymax - ymin)
    limits = (xmin - pad, xmax + pad,
              ymin - pad - strip * (ymax - ymin), ymax + pad)
    aspect = (limits[3] - limits[2]) / max(limits[1] - limits[0], 1e-30)
    left, bottom, top = 0.95, 0.7, 0.45 + 0.22 * what.count("\n")
    right = 1.55 if colorbar else 0.35
    width = 8.0 - left - right
    height = width * aspect
    if height > 8.0:
        height = 8.0
        width = height / aspect
    height = max(height, 1.5)
    fig_w, fig_h = max(left + width + right, 5.0), bottom + height + top
    fig.set_size_inches(fig_w, fig_h)
    x0 = (fig_w - width - right - left) / 2 + left
    ax = fig.add_axes((x0 / fig_w, bottom / fig_h, width / fig_w,
                       height / fig_h))
    cax = fig.add_axes(((x0 + width + 0.15) / fig_w, bottom / fig_h,
                        0.22 / fig_w, height / fig_h)) if colorbar else None
    s = rep.frame.sign
    ax.set_xlim(s * limits[0], s * limits[1])
    ax.set_ylim(limits[2], limits[3])
    ax.set_aspect("equal", adjustable="box", anchor="C")
    ax.set_xlabel(rep.frame.xlabel, fontsize=11)
    ax.set_ylabel(rep.frame.ylabel, fontsize=11)
    _title(ax, rep, what)
    return _MosaicAxes(ax, cax, limits)


def ccd_label_size(width_pt: float, height_pt: float, text: str) -> float:
    """Font size of a CCD's name in a mosaic drawn ``width_pt`` wide.

    The name takes at most `_CCD_LABEL_WIDTH` of the CCD's width and a
    quarter of its height, within `CCD_LABEL_MIN_PT` ..
    `CCD_LABEL_MAX_PT` (on a mosaic so dense that the minimum does not
    fit, the names may touch: they stay readable).
    """
    fit = min(_CCD_LABEL_WIDTH * width_pt / (_CHAR_EM * max(len(text), 1)),
              0.25 * height_pt)
    return float(np.clip(fit, CCD_LABEL_MIN_PT, CCD_LABEL_MAX_PT))


def _points_per_unit(ax: Axes) -> float:
    """Typographic points per data unit of an equal-aspect axes."""
    box = ax.get_window_extent()  # display pixels
    to_pt = 72.0 / ax.figure.dpi
    width_pt = box.width * to_pt
    height_pt = box.height * to_pt
    x0, x1 = ax.get_xlim()
    y0, y1 = ax.get_ylim()
    # With aspect "equal" and an adjustable box the tighter axis rules.
    return min(width_pt / max(abs(x1 - x0), 1e-30),
               height_pt / max(abs(y1 - y0), 1e-30))


def _outline_ccds(ax: Axes, rep: _Report, *, names: bool) -> None:
    """Draw every CCD's outline, its name, and mark failed CCDs."""
    from matplotlib.patches import Rectangle  # noqa: PLC0415

    s = rep.frame.sign
    per_unit = _points_per_unit(ax)
    for ext, place in rep.ccds:
        left, right, bottom, top = rep.data_box(place)
        failed = ext is None or not ext.ok
        ax.add_patch(Rectangle(
            (min(left, right), bottom), abs(right - left), top - bottom,
            fill=False, lw=1.2 if failed else 0.6,
            ec="tab:red" if failed else "0.35",
            ls="--" if failed else "-", zorder=3))
        cx, cy = place.centre()
        size = ccd_label_size(abs(right - left) * per_unit,
                              (top - bottom) * per_unit, place.name)
        if failed:
            ax.text(s * cx, cy, f"{place.name}\nfailed", ha="center",
                    va="center", fontsize=size, color="tab:red", zorder=4,
                    gid=f"ccd-label-{place.name}")
        elif names:
            ax.text(s * cx, bottom + 0.02 * (top - bottom), place.name,
                    ha="center", va="bottom", fontsize=size, color="0.1",
                    zorder=4, gid=f"ccd-label-{place.name}",
                    bbox={"fc": "white", "ec": "none", "alpha": 0.75,
                          "pad": 0.6})


def _map_ccds(fig: Figure, axes: _MosaicAxes, rep: _Report,
              grids: Sequence[tuple[CcdPlace, FloatArray, float, float]],
              norm: Normalize, cmap: str, label: str) -> None:
    """Per-CCD maps (each cell ``bx`` x ``by`` CCD pixels), clipped."""
    ax = axes.ax
    from matplotlib.cm import ScalarMappable  # noqa: PLC0415
    from matplotlib.patches import Rectangle  # noqa: PLC0415

    for place, grid, bx, by in grids:
        rows, cols = grid.shape
        shown = orient(grid, place)
        left, right, bottom, top = rep.data_box(place, cols * bx, rows * by)
        image = ax.imshow(shown, origin="lower", extent=(left, right,
                                                         bottom, top),
                          norm=norm, cmap=cmap, interpolation="nearest",
                          zorder=1)
        cl, cr, cb, ct = rep.data_box(place)
        clip = Rectangle((min(cl, cr), cb), abs(cr - cl), ct - cb,
                         transform=ax.transData)
        image.set_clip_path(clip)
    bar = fig.colorbar(ScalarMappable(norm=norm, cmap=cmap), cax=axes.cax)
    bar.set_label(label, fontsize=11)


def _show_grids(fig: Figure, axes: _MosaicAxes, rep: _Report,
                grids: Sequence[tuple[CcdPlace, FloatArray, float, float]],
                *, empty: str, percentiles: tuple[float, float], cmap: str,
                label: str) -> None:
    """Per-CCD maps on one colour scale (their percentiles), or ``empty``."""
    from matplotlib.colors import Normalize  # noqa: PLC0415

    if not grids:
        _no_data(axes.ax, empty)
    else:
        lo, hi = _robust_range(np.concatenate(
            [g.ravel() for _, g, _, _ in grids]), *percentiles)
        _map_ccds(fig, axes, rep, grids, Normalize(lo, hi), cmap, label)
    _outline_ccds(axes.ax, rep, names=True)


def _robust_range(values: FloatArray, lo: float = 1.0, hi: float = 99.0
                  ) -> tuple[float, float]:
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        return 0.0, 1.0
    a, b = (float(v) for v in np.percentile(finite, [lo, hi]))
    if b <= a:
        pad = max(abs(a) * 1e-3, 1e-6)
        return a - pad, b + pad
    return a, b


# --------------------------------------------------------------------------
# The plots


def _sky_histogram(exts: Sequence[ExtensionReport]
                   ) -> tuple[FloatArray, FloatArray, int]:
    """Sum the CCDs' sky-pixel histograms on one grid, as a density.

    Each CCD's histogram is spread evenly within its own bins (its
    cumulative counts interpolated at the common edges) onto bins a
    quarter of the median sky noise wide (whole ADU when that is 2 ADU
    or more): this also smooths the comb that integer pixel values
    leave in bins narrower than a few ADU.
    """
    hists = []
    for ext in exts:
        bkg = ext.background
        if bkg is None:
            continue
        edges = np.asarray(bkg.hist_edges, float)
        counts = np.asarray(bkg.hist_counts, float)
        if (edges.size != counts.size + 1 or not counts.sum() > 0
                or not np.all(np.isfinite(edges))):
            continue
        hists.append((edges, counts))
    if not hists:
        return np.empty(0), np.empty(0), 0
    lo = min(float(e[0]) for e, _ in hists)
    hi = max(float(e[-1]) for e, _ in hists)
    noise = float(np.median([(e[-1] - e[0]) / 10.0 for e, _ in hists]))
    width = noise / 4.0 if noise > 0 else (hi - lo) / 50.0
    if width >= 2.0:
        width = float(round(width))
    nbins = int(np.clip(math.ceil((hi - lo) / width), 10, 400))
    grid = np.linspace(lo, lo + nbins * width, nbins + 1)
    total = np.zeros(nbins)
    for edges, counts in hists:
        cumulative = np.concatenate([[0.0], np.cumsum(counts)])
        total += np.diff(np.interp(grid, edges, cumulative))
    return grid, total / (total.sum() * width), len(hists)


def _plot_bkg_histo(fig: Figure, rep: _Report) -> None:
    exts = [e for e in rep.ok if e.background is not None]
    several = len(exts) > 1
    fig.set_size_inches(10.0 if several else 7.0, 4.8)
    if several:
        ax_pix, ax_ccd = fig.subplots(1, 2, gridspec_kw={"wspace": 0.28})
    else:
        ax_pix, ax_ccd = fig.subplots(1, 1), None
    fig.subplots_adjust(left=0.09 if several else 0.13, right=0.97,
                        bottom=0.13, top=0.86)
    fig.suptitle(f"{rep.stem}: sky background", fontsize=12)
    if not exts:
        _no_data(ax_pix, "no background measured")
        return
    edges, density, used = _sky_histogram(exts)
    sky = _exposure_metric(rep, "SKY_MEAN")
    rms = _exposure_metric(rep, "SKY_RMS")
    if used:
        ax_pix.stairs(density, edges, color="tab:blue", alpha=0.3,
                      fill=True)
        ax_pix.stairs(density, edges, color="tab:blue", lw=1.2,
                      label="sky pixels")
        if math.isfinite(sky) and math.isfinite(rms) and rms > 0:
            x = np.linspace(edges[0], edges[-1], 300)
            ax_pix.plot(x, np.exp(-0.5 * ((x - sky) / rms) ** 2)
                        / (rms * math.sqrt(2 * math.pi)), color="tab:red",
                        lw=1, label="Gaussian of SKY_MEAN, SKY_RMS")
        ax_pix.set_xlim(edges[0], edges[-1])
        ax_pix.set_ylim(0, 1.25 * float(density.max()))
    else:
        _no_data(ax_pix, "no sky histogram")
    if math.isfinite(sky):
        ax_pix.axvline(sky, color="k", ls="--", lw=1,
                       label=f"SKY_MEAN {sky:.1f} ADU")
    if math.isfinite(rms) and math.isfinite(sky):
        ax_pix.axvspan(sky - rms, sky + rms, color="0.9", zorder=0,
                       label=f"± SKY_RMS {rms:.1f} ADU")
    ax_pix.set_xlabel("Sky pixel value [ADU]", fontsize=11)
    ax_pix.set_ylabel("Fraction of sky pixels per ADU", fontsize=11)
    ax_pix.set_title(f"Pixels off the sources, {used} CCD"
                     f"{'s' if used != 1 else ''}", fontsize=11)
    ax_pix.legend(fontsize=8.5, loc="upper left")
    if ax_ccd is None:
        return
    levels = np.array([e.metrics.get("SKY_MEAN", math.nan) for e in exts])
    levels = levels[np.isfinite(levels)]
    if levels.size == 0:
        _no_data(ax_ccd, "no sky level")
        return
    lo, hi = float(levels.min()), float(levels.max())
    pad = max(0.5 * (hi - lo) / max(levels.size, 1), 1e-3 * abs(lo), 0.5)
    bins = np.histogram_bin_edges(levels, bins=min(20, max(5, levels.size
                                                           // 2)),
                                  range=(lo - pad, hi + pad))
    ax_ccd.hist(levels, bins=bins, color="tab:blue", alpha=0.75,
                edgecolor="k", lw=0.6)
    med = float(np.median(levels))
    ax_ccd.axvline(med, color="k", ls="--", lw=1,
                   label=f"median {med:.1f} ADU")
    ax_ccd.set_xlabel("CCD sky level SKY_MEAN [ADU]", fontsize=11)
    ax_ccd.set_ylabel("Number of CCDs", fontsize=11)
    ax_ccd.set_title(f"Sky level of the {levels.size} CCDs "
                     f"(spread {100 * (hi - lo) / med:.1f} %)"
                     if med else "Sky level of the CCDs", fontsize=11)
    ax_ccd.yaxis.get_major_locator().set_params(integer=True)
    ax_ccd.legend(fontsize=9, loc="upper right")


def _plot_bkg_m(fig: Figure, rep: _Report) -> None:

    axes = _mosaic_axes(fig, rep, "sky background map", colorbar=True)
    grids = []
    for ext, place in rep.ccds:
        if ext is None or not ext.ok or ext.background is None:
            continue
        bkg = ext.background
        mesh = np.asarray(bkg.mesh_back, float)
        step_x = (float(bkg.mesh_x[1] - bkg.mesh_x[0])
                  if len(bkg.mesh_x) > 1 else float(place.nx))
        step_y = (float(bkg.mesh_y[1] - bkg.mesh_y[0])
                  if len(bkg.mesh_y) > 1 else float(place.ny))
        grids.append((place, mesh, step_x, step_y))
    _show_grids(fig, axes, rep, grids, empty="no background map",
                percentiles=(0.5, 99.5), cmap="viridis",
                label="Sky background [ADU]")


def _fwhm_unit(rep: _Report) -> tuple[str, float]:
    """Return the unit of the FWHM plots and the factor from pixels."""
    if rep.pixscale is not None:
        return "arcsec", rep.pixscale
    return "pix", 1.0


def _plot_fwhm_histo(fig: Figure, rep: _Report) -> None:
    fig.set_size_inches(8.0, 5.5)
    ax = fig.subplots()
    fig.subplots_adjust(left=0.1, right=0.96, bottom=0.12, top=0.83)
    fig.suptitle(f"{rep.stem}: FWHM of the PSF stars", fontsize=12, y=0.97)
    unit, factor = _fwhm_unit(rep)
    values = []
    for ext in rep.ok:
        if ext.psf_stars is None or "FWHM" not in ext.psf_stars.colnames:
            continue
        scale = ext.metrics.get("PIXSCALE", math.nan) if unit == "arcsec" \
            else 1.0
        values.append(np.asarray(ext.psf_stars["FWHM"], float) * scale)
    fwhm = np.concatenate(values) if values else np.empty(0)
    fwhm = fwhm[np.isfinite(fwhm) & (fwhm > 0)]
    ax.set_xlabel(f"Pixel-free PSF FWHM [{unit}]", fontsize=11)
    ax.set_ylabel("Number of PSF stars", fontsize=11)
    if fwhm.size == 0:
        _no_data(ax, "no PSF star")
        return
    lo, hi = (float(v) for v in np.percentile(fwhm, [0.5, 99.5]))
    span = max(hi - lo, 0.02 * hi)
    bins = np.histogram_bin_edges(
        fwhm, bins=int(np.clip(np.sqrt(fwhm.size) * 1.5, 10, 60)),
        range=(lo - 0.1 * span, hi + 0.1 * span))
    ax.hist(fwhm, bins=bins.tolist(), color="tab:blue", alpha=0.75,
            edgecolor="k", lw=0.5)
    med = float(np.median(fwhm))
    text = f"median {med:.3f} {unit}"
    if unit == "arcsec":
        text += f" ({med / factor:.2f} pix)"
    ax.axvline(med, color="tab:red", lw=1.5, label=text)
    metric = _exposure_metric(rep, "FWHM_ARCSEC" if unit == "arcsec"
                              else "FWHM_PIX")
    if math.isfinite(metric):
        ax.axvline(metric, color="k", ls="--", lw=1,
                   label=f"{'FWHM_ARCSEC' if unit == 'arcsec' else 'FWHM_PIX'}"
                         f" (median of CCDs) {metric:.3f} {unit}")
    ax.legend(fontsize=9, loc="upper right",
              title=f"{fwhm.size} stars, {len(values)} CCD"
                    f"{'s' if len(values) != 1 else ''}",
              title_fontsize=9)
    if unit == "arcsec":
        def to_pix(arcsec: ArrayLike) -> ArrayLike:
            return np.asarray(arcsec, float) / factor

        def to_arcsec(pix: ArrayLike) -> ArrayLike:
            return np.asarray(pix, float) * factor

        top = ax.secondary_xaxis("top", functions=(to_pix, to_arcsec))
        top.set_xlabel("FWHM [pix]", fontsize=9)
        top.tick_params(labelsize=8)


def psf_map_scale(values: ArrayLike) -> tuple[float, float]:
    """Return the PSF FWHM map's colour scale: its median and span in %.

    Parameters
    ----------
    values : array_like
        The FWHM of every cell of the map (NaN ignored).

    Returns
    -------
    median : float
        The median of the finite values (NaN when there is none).
    span : float
        The scale runs from ``-span`` to ``+span`` per cent of the
        median: `PSF_MAP_MIN_SPAN`, or the largest deviation rounded up
        to a multiple of `PSF_MAP_SPAN_STEP` when that is larger.
    """
    v = np.asarray(values, dtype=np.float64).ravel()
    v = v[np.isfinite(v)]
    if v.size == 0:
        return math.nan, PSF_MAP_MIN_SPAN
    med = float(np.median(v))
    if not med > 0:
        return med, PSF_MAP_MIN_SPAN
    worst = float(np.max(np.abs(v / med - 1.0))) * 100.0
    steps = math.ceil(round(worst / PSF_MAP_SPAN_STEP, 9))
    return med, max(PSF_MAP_MIN_SPAN, steps * PSF_MAP_SPAN_STEP)


def _plot_psf_m(fig: Figure, rep: _Report) -> None:
    from matplotlib.colors import Normalize  # noqa: PLC0415

    unit, _ = _fwhm_unit(rep)
    grids = []
    for ext, place in rep.ccds:
        if ext is None or not ext.ok or ext.psf_grid is None:
            continue
        g = ext.psf_grid
        scale = ext.metrics.get("PIXSCALE", math.nan) if unit == "arcsec" \
            else 1.0
        fwhm = np.asarray(g.fwhm, float) * scale
        if fwhm.size == 0:
            continue
        grids.append((place, fwhm, place.nx / fwhm.shape[1],
                      place.ny / fwhm.shape[0]))
    values = np.concatenate([g.ravel() for _, g, _, _ in grids]) \
        if grids else np.empty(0)
    med, span = psf_map_scale(values)
    what = "PSF FWHM map (pixel-free)"
    shown = ""
    if math.isfinite(med) and med > 0:
        finite = values[np.isfinite(values)]
        low, high = ((float(f(finite)) / med - 1.0) * 100.0
                     for f in (np.min, np.max))
        shown = f"{med:.3f}" if unit == "arcsec" else f"{med:.2f}"
        what += (f"\nmedian {shown} {unit}, from {low:+.1f} % to "
                 f"{high:+.1f} % of it")
    axes = _mosaic_axes(fig, rep, what, colorbar=True)
    if not grids or not (math.isfinite(med) and med > 0):
        _no_data(axes.ax, "no PSF map")
    else:
        relative = [(place, (g / med - 1.0) * 100.0, bx, by)
                    for place, g, bx, by in grids]
        _map_ccds(fig, axes, rep, relative, Normalize(-span, span),
                  _PSF_MAP_CMAP,
                  f"FWHM / median {shown} {unit} - 1 [%]")
    _outline_ccds(axes.ax, rep, names=True)


def _whisker_scale(x: FloatArray, y: FloatArray, e: FloatArray,
                   extent: float) -> tuple[float, float]:
    """Whisker length per unit ellipticity, and the key's ellipticity."""
    if x.size > 1:
        d = np.hypot(x[:, None] - x[None, :], y[:, None] - y[None, :])
        d[d == 0] = np.inf
        spacing = float(np.median(d.min(axis=1)))
        if not math.isfinite(spacing):
            spacing = 0.2 * extent
    else:
        spacing = 0.2 * extent
    finite = e[np.isfinite(e)]
    typical = float(np.median(finite)) if finite.size else 0.05
    choices = np.array([0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5])
    key = float(choices[np.argmin(np.abs(np.log(
        choices / max(typical, 1e-3))))])
    return 0.8 * spacing / max(typical, key / 2), key


def _plot_ell(fig: Figure, rep: _Report) -> None:
    from matplotlib.collections import LineCollection  # noqa: PLC0415

    strip = 0.12
    axes = _mosaic_axes(fig, rep, "PSF ellipticity (A − B)/(A + B), "
                        "pixel-free", colorbar=False, strip=strip)
    ax = axes.ax
    _outline_ccds(ax, rep, names=False)
    table = rep.report.exposure.mosaic_psf
    ok = np.zeros(0, bool)
    if table is not None and len(table):
        x = np.asarray(table["X"], float)
        y = np.asarray(table["Y"], float)
        e = np.asarray(table["ELLIPTICITY"], float)
        theta = np.radians(np.asarray(table["THETA"], float))
        ok = np.isfinite(x) & np.isfinite(y) & np.isfinite(e) \
            & np.isfinite(theta)
    if not ok.any():
        _no_data(ax, "no PSF map")
        return
    x, y, e, theta = x[ok], y[ok], e[ok], theta[ok]
    xmin, xmax, ymin, ymax = axes.limits
    per_e, key = _whisker_scale(x, y, e, max(xmax - xmin, ymax - ymin))
    half = 0.5 * per_e * e
    dx, dy = half * np.cos(theta), half * np.sin(theta)
    segments = list(np.stack([np.column_stack([x - dx, y - dy]),
                              np.column_stack([x + dx, y + dy])], axis=1))
    ax.add_collection(LineCollection(segments, colors="k", linewidths=1.6,
                                     capstyle="round", zorder=5))
    # The key, a horizontal whisker, and a summary, in the strip below.
    s = rep.frame.sign
    height = ymax - ymin
    ky = ymin + 0.68 * strip / (1 + strip) * height
    kx = xmin + 0.03 * (xmax - xmin)
    length = per_e * key
    ax.plot([s * kx, s * (kx + length)], [ky, ky], color="tab:red",
            lw=2.5, solid_capstyle="round", zorder=6)
    ax.text(s * (kx + length), ky, f"  e = {key:g}", color="tab:red",
            va="center", ha="left", fontsize=10, zorder=6)
    med = float(np.median(e))
    e1 = _exposure_metric(rep, "E1")
    e2 = _exposure_metric(rep, "E2")
    note = f"{e.size} cells, median e {med:.3f}"
    if math.isfinite(e1) and math.isfinite(e2):
        note += f"; CCD medians E1 {e1:+.3f}, E2 {e2:+.3f} (distortion)"
    ax.text(0.03, 0.3 * strip / (1 + strip), note, transform=ax.transAxes,
            ha="left", va="center", fontsize=9, color="0.2")


@dataclass(frozen=True)
class _Sources:
    mag: FloatArray
    rh: FloatArray
    cls: NDArray[np.str_]
    psf: NDArray[np.bool_]
    unit: str


def _gather_sources(rep: _Report) -> _Sources:
    unit = "arcsec" if rep.pixscale is not None else "pix"
    mags, rhs, classes, psf = [], [], [], []
    for ext in rep.ok:
        src = ext.sources
        if src is None or len(src) == 0:
            continue
        scale = ext.metrics.get("PIXSCALE", math.nan) if unit == "arcsec" \
            else 1.0
        mags.append(np.asarray(src["MAG_AUTO"], float))
        rhs.append(np.asarray(src["FLUX_RADIUS"], float) * scale)
        classes.append(np.asarray(src["CLASS"], str))
        psf.append(np.asarray(src["PSF_STAR"], bool) if "PSF_STAR"
                   in src.colnames else np.zeros(len(src), bool))
    if not mags:
        return _Sources(np.empty(0), np.empty(0), np.empty(0, str),
                        np.empty(0, bool), unit)
    mag = np.concatenate(mags)
    rh = np.concatenate(rhs)
    good = np.isfinite(mag) & np.isfinite(rh) & (rh > 0)
    return _Sources(mag[good], rh[good], np.concatenate(classes)[good],
                    np.concatenate(psf)[good], unit)


def _rhmag_limits(src: _Sources) -> tuple[tuple[float, float],
                                          tuple[float, float]]:
    if src.mag.size == 0:
        return (10.0, 25.0), (0.1, 10.0)
    m_lo, m_hi = float(src.mag.min()), float(np.percentile(src.mag, 99.9))
    r_lo, r_hi = (float(v) for v in np.percentile(src.rh, [0.5, 99.0]))
    stars = src.rh[src.psf]
    if stars.size:
        r_lo = min(r_lo, float(stars.min()))
    return ((m_lo - 0.3, m_hi + 0.3),
            (max(r_lo / 1.3, 1e-3), max(r_hi * 1.5, r_lo * 3)))


def _log_y(ax: Axes) -> None:
    """Log y axis labelled 0.2, 0.3, 0.5, 1... rather than 2 × 10⁻¹."""
    from matplotlib.ticker import (  # noqa: PLC0415
        FuncFormatter,
        LogLocator,
        NullFormatter,
    )

    ax.set_yscale("log")
    axis = ax.yaxis
    axis.set_major_locator(LogLocator(base=10.0, subs=(1.0, 2.0, 3.0, 5.0)))
    axis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    axis.set_minor_formatter(NullFormatter())


def _rhmag(fig: Figure, rep: _Report, src: _Sources, which: str) -> None:
    fig.set_size_inches(8.0, 6.0)
    ax = fig.subplots()
    fig.subplots_adjust(left=0.11, right=0.96, bottom=0.11, top=0.9)
    what = {"all": "all sources", "star": "stars",
            "galaxy": "galaxies"}[which]
    _title(ax, rep, f"half-light radius vs magnitude, {what}")
    ax.set_xlabel(f"MAG_AUTO [mag] ({rep.zp_note})", fontsize=11)
    ax.set_ylabel(f"Half-light radius FLUX_RADIUS [{src.unit}]",
                  fontsize=11)
    _log_y(ax)
    (m_lo, m_hi), (r_lo, r_hi) = _rhmag_limits(src)
    ax.set_xlim(m_lo, m_hi)
    ax.set_ylim(r_lo, r_hi)
    size = float(np.clip(12.0 / math.sqrt(max(src.mag.size, 1) / 500.0),
                         1.3, 4.0))
    layers = {
        "all": (("galaxy", _GALAXY_COLOUR, "galaxies"),
                ("artefact", _ARTEFACT_COLOUR, "artefacts"),
                ("star", _STAR_COLOUR, "stars")),
        "star": (("star", _STAR_COLOUR, "stars"),),
        "galaxy": (("galaxy", _GALAXY_COLOUR, "galaxies"),),
    }[which]
    shown = 0
    for cls, colour, label in layers:
        sel = src.cls == cls
        if which != "galaxy":
            sel &= ~src.psf
        n = int(np.count_nonzero(src.cls == cls))
        shown += n
        ax.plot(src.mag[sel], src.rh[sel], ".", ms=size, color=colour,
                alpha=0.6, mec="none", label=f"{label} ({n})",
                rasterized=True)
    if which != "galaxy":
        sel = src.psf if which == "all" else src.psf & (src.cls == "star")
        ax.plot(src.mag[sel], src.rh[sel], ".", ms=max(size * 1.6, 3.0),
                color=_PSF_STAR_COLOUR, mec="none",
                label=f"PSF stars, stellar locus ({int(sel.sum())})")
    if shown == 0:
        _no_data(ax, f"no {what}")
    ax.grid(visible=True, which="both", color="0.9", lw=0.5)
    ax.set_axisbelow(True)
    ax.legend(fontsize=9, loc="upper left", markerscale=3.0 / size + 1.0)


def _merged_counts(rep: _Report, attr: str
                   ) -> tuple[FloatArray, FloatArray, float]:
    """Sum a count over the CCDs on a common magnitude grid.

    Returns the bin edges, the numbers, and the area of the CCDs that
    were counted [deg²] (NaN when one has no pixel scale).
    """
    step = rep.report.config.count_mag_bin
    pieces = []
    area = 0.0
    for ext in rep.ok:
        c = ext.counts
        if c is None or len(c.mag_edges) < 2:
            continue
        start = round(float(c.mag_edges[0]) / step)
        pieces.append((start, np.asarray(getattr(c, attr), float)))
        scale = ext.metrics.get("PIXSCALE", math.nan)
        area += ext.shape[0] * ext.shape[1] * (scale / 3600.0) ** 2
    if not pieces:
        return np.empty(0), np.empty(0), math.nan
    first = min(s for s, _ in pieces)
    last = max(s + len(n) for s, n in pieces)
    total = np.zeros(last - first)
    for s, n in pieces:
        total[s - first:s - first + len(n)] += n
    edges = (first + np.arange(last - first + 1)).astype(np.float64) * step
    return edges, total, area if area > 0 else math.nan


def _counts(fig: Figure, rep: _Report, attr: str, what: str,
            colour: str) -> None:
    fig.set_size_inches(8.0, 5.5)
    ax = fig.subplots()
    fig.subplots_adjust(left=0.12, right=0.96, bottom=0.12, top=0.9)
    _title(ax, rep, f"{'star' if attr == 'nstar' else 'galaxy'} counts")
    edges, numbers, area = _merged_counts(rep, attr)
    per_deg2 = math.isfinite(area)
    step = rep.report.config.count_mag_bin
    ax.set_xlabel(f"MAG_AUTO [mag] ({rep.zp_note})", fontsize=11)
    ax.set_ylabel(f"{what.capitalize()} per {step:g} mag"
                  + (" per deg²" if per_deg2 else " (no pixel scale)"),
                  fontsize=11)
    if numbers.size == 0 or not np.any(numbers > 0):
        _no_data(ax, f"no {what}")
        return
    nz = np.flatnonzero(numbers > 0)
    lo, hi = nz[0], nz[-1] + 1
    edges, numbers = edges[lo:hi + 1], numbers[lo:hi]
    factor = 1.0 / area if per_deg2 else 1.0
    values = numbers * factor
    ax.stairs(values, edges, color=colour, lw=1.8)
    ax.stairs(values, edges, color=colour, alpha=0.25, fill=True)
    centres = 0.5 * (edges[1:] + edges[:-1])
    show = numbers > 0
    ax.errorbar(centres[show], values[show],
                yerr=np.sqrt(numbers[show]) * factor, fmt="none",
                ecolor="k", elinewidth=0.8, capsize=2,
                label="Poisson error")
    ax.set_yscale("log")
    ax.set_xlim(edges[0] - step, edges[-1] + step)
    limit = _exposure_metric(rep, "MAGLIM_5SIG")
    if math.isfinite(limit):
        ax.axvline(limit, color="k", ls="--", lw=1,
                   label=f"MAGLIM_5SIG (point source) {limit:.2f}"
                   + (" instrumental" if any(instrumental(e.metrics)
                                             for e in rep.ok) else ""))
    if attr == "ngal":
        turn = _exposure_metric(rep, "MAG_TURNOVER")
        if math.isfinite(turn):
            ax.axvline(turn, color="tab:red", ls=":", lw=1.5,
                       label=f"MAG_TURNOVER {turn:.2f}")
    ax.grid(visible=True, which="major", color="0.9", lw=0.5)
    ax.set_axisbelow(True)
    n_ccds = len(rep.ok)
    area_text = f", {area:.3f} deg²" if per_deg2 else ""
    ax.legend(fontsize=9, loc="upper left",
              title=f"{int(numbers.sum())} {what}, {n_ccds} CCD"
                    f"{'s' if n_ccds != 1 else ''}{area_text}",
              title_fontsize=9)


def _representative(rep: _Report) -> ExtensionReport | None:
    """Return the CCD whose PSF model FWHM is nearest the median."""
    exts = [e for e in rep.ok if e.psf_model is not None
            and math.isfinite(e.psf_model.fwhm)]
    if not exts:
        return None
    fwhm = np.array([e.metrics.get("FWHM_MOFFAT", math.nan) for e in exts])
    if not np.isfinite(fwhm).any():
        return exts[0]
    return exts[int(np.nanargmin(np.abs(fwhm - np.nanmedian(fwhm))))]


def _plot_psf_model(fig: Figure, rep: _Report) -> None:
    from matplotlib.colors import LogNorm  # noqa: PLC0415

    fig.set_size_inches(11.0, 5.0)
    ax_img, ax_prof = fig.subplots(1, 2, gridspec_kw={
        "width_ratios": [1.0, 1.2], "wspace": 0.45})
    fig.subplots_adjust(left=0.07, right=0.97, bottom=0.12, top=0.84)
    ext = _representative(rep)
    if ext is None or ext.psf_model is None:
        fig.suptitle(f"{rep.stem}: PSF model", fontsize=12)
        _no_data(ax_img, "no PSF model")
        ax_prof.set_axis_off()
        return
    model = ext.psf_model
    image = np.asarray(model.image, float)
    osamp = model.oversampling
    half = (image.shape[0] - 1) // 2
    peak = float(np.nanmax(image))
    rel = image / peak if peak > 0 else image
    # Below ~1e-3 of the peak the stacked residuals are mostly noise.
    floor = 1e-3
    reach = (half + 0.5) / osamp
    shown = ax_img.imshow(np.where(rel > 0, rel, floor), origin="lower",
                          extent=(-reach, reach, -reach, reach),
                          norm=LogNorm(floor, 1.0), cmap="magma",
                          interpolation="nearest")
    bar = fig.colorbar(shown, ax=ax_img, fraction=0.046, pad=0.03)
    bar.set_label("PSF / peak (log)", fontsize=10)
    ax_img.set_xlabel("x offset [pix]", fontsize=11)
    ax_img.set_ylabel("y offset [pix]", fontsize=11)
    ax_img.set_title(f"Model of {ext.name}, {osamp}x oversampled",
                     fontsize=11)
    nodes = (np.arange(image.shape[0]) - half) / osamp
    gx, gy = np.meshgrid(nodes, nodes)
    r = np.hypot(gx, gy).ravel()
    values = image.ravel()
    beta = model.beta
    unit, _ = _fwhm_unit(rep)
    scale = ext.metrics.get("PIXSCALE", math.nan) if unit == "arcsec" \
        else 1.0
    ax_prof.plot(r, values / peak if peak > 0 else values, ".", ms=2.5,
                 color="0.35", mec="none",
                 label=f"model samples ({model.nstars} stars)")
    if math.isfinite(model.fwhm) and math.isfinite(beta) and model.fwhm > 0:
        alpha = model.fwhm / float(fwhm_factor(beta))
        shape = (1.0 + (r / alpha) ** 2) ** (-beta)
        near = r <= 2.0 * model.fwhm
        amp = float(np.sum(values[near] * shape[near])
                    / max(np.sum(shape[near] ** 2), 1e-300))
        grid = np.linspace(0.0, float(r.max()), 300)
        curve = amp * (1.0 + (grid / alpha) ** 2) ** (-beta)
        fwhm_text = f"FWHM {model.fwhm:.2f} pix"
        if unit == "arcsec":
            fwhm_text += f" = {model.fwhm * scale:.3f}″"
        ax_prof.plot(grid, curve / peak if peak > 0 else curve,
                     color="tab:red", lw=1.6,
                     label=f"Moffat fit: {fwhm_text}, β = {beta:.2f}")
        ax_prof.axvline(model.fwhm / 2.0, color="tab:red", ls=":", lw=1,
                        label="FWHM / 2")
    # Azimuthal mean in rings one image pixel / oversampling wide.
    ring = np.floor(r * osamp + 0.5).astype(np.intp)
    sums = np.bincount(ring, values)
    numbers = np.bincount(ring)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = sums / numbers
    radii = np.arange(mean.size) / osamp
    keep = (numbers > 0) & (mean > 0)
    ax_prof.plot(radii[keep], mean[keep] / peak if peak > 0 else mean[keep],
                 color="k", lw=1.2, label="azimuthal mean")
    ax_prof.axhline(0.5, color="0.6", ls="--", lw=0.8, label="half maximum")
    ax_prof.set_yscale("log")
    ax_prof.set_ylim(floor / 3.0, 1.5)
    ax_prof.set_xlim(0.0, reach * math.sqrt(2.0))
    ax_prof.set_xlabel("Radius [pix]", fontsize=11)
    ax_prof.set_ylabel("PSF / peak", fontsize=11)
    title = "Radial profile (pixel-convolved model)"
    fwhm_pix = ext.metrics.get("FWHM_PIX", math.nan)
    corr = ext.metrics.get("FWHM_CORR", math.nan)
    if math.isfinite(fwhm_pix):
        # The published FWHM is pixel-free, so not this curve's.
        how = f"Moffat × {corr:.3f}" if math.isfinite(corr) else "Moffat"
        title += f"\nFWHM_PIX {fwhm_pix:.2f} pix, pixel-free: {how}"
    ax_prof.set_title(title, fontsize=11)
    ax_prof.grid(visible=True, which="both", color="0.9", lw=0.5)
    ax_prof.legend(fontsize=9, loc="upper right")
    fig.suptitle(f"{rep.stem}: PSF model ({ext.name}, the CCD of median "
                 f"FWHM_MOFFAT; ellipticity {model.ellipticity:.3f})",
                 fontsize=12)


def _preview_mosaic(rep: _Report, kind: str) -> tuple[Mosaic | None, int]:
    """Assemble the CCD previews into a mosaic; also their binning."""
    arrays: list[NDArray[np.floating] | None] = []
    binnings = []
    for ext, _ in rep.ccds:
        preview = ext.preview if ext is not None and ext.ok else None
        if preview is None:
            arrays.append(None)
            continue
        arrays.append(preview.image if kind == "image" else preview.weight)
        binnings.append(preview.binning)
    if not binnings:
        return None, 0
    binning = int(np.median(binnings))
    return assemble_mosaic(arrays, [p for _, p in rep.ccds],
                           binning=binning), binning


def _nice(value: float) -> float:
    """Round to two significant digits."""
    return float(f"{value:.2g}") if value else 0.0


def _plot_mosaic(fig: Figure, rep: _Report, kind: str) -> None:
    from matplotlib.cm import ScalarMappable  # noqa: PLC0415
    from matplotlib.colors import FuncNorm, Normalize  # noqa: PLC0415

    what = "image" if kind == "image" else "weight map"
    mosaic, binning = _preview_mosaic(rep, kind)
    if mosaic is not None:
        total = binning * mosaic.block
        what += f", binned {total}x{total}"
    axes = _mosaic_axes(fig, rep, what, colorbar=mosaic is not None)
    if mosaic is None:
        _no_data(axes.ax, "no preview")
        _outline_ccds(axes.ax, rep, names=False)
        return
    norm: Normalize
    ticks = None
    if kind == "image":
        stretch = image_stretch(mosaic.data)
        t = stretch(mosaic.data)
        norm = FuncNorm((stretch, stretch.inverse), vmin=stretch.low,
                        vmax=stretch.high)
        ticks = sorted({_nice(v) for v in stretch.inverse(
            np.linspace(0.0, 1.0, 7))} | {_nice(stretch.sky)})
        label = "Pixel value [ADU], asinh stretch"
    else:
        low, high = weight_levels(mosaic.data)
        with np.errstate(invalid="ignore"):
            t = np.clip((mosaic.data - low) / (high - low), 0.0, 1.0)
        norm = Normalize(low, high)
        sources = {e.preview.weight_source for e, _ in rep.ccds
                   if e is not None and e.preview is not None}
        label = "Relative weight" + (
            " (from the flat)" if sources == {"flat"} else
            " (from the sky RMS)" if sources == {"rms"} else "")
    x0, x1, y0, y1 = mosaic.extent
    s = rep.frame.sign
    axes.ax.imshow(_grey_rgb(t, inside=mosaic.inside), origin="lower",
                   extent=(s * x0, s * x1, y0, y1),
                   interpolation="antialiased", zorder=1)
    bar = fig.colorbar(ScalarMappable(norm=norm, cmap="gray"),
                       cax=axes.cax, ticks=ticks)
    bar.set_label(label, fontsize=11)
    _outline_ccds(axes.ax, rep, names=True)


# --------------------------------------------------------------------------
# The set


@dataclass(frozen=True)
class _Spec:
    id: str
    suffix: str
    description: str
    draw: Callable[[Figure, _Report], None]


def _specs() -> tuple[_Spec, ...]:
    def rhmag(which: str) -> Callable[[Figure, _Report], None]:
        def draw(fig: Figure, rep: _Report) -> None:
            _rhmag(fig, rep, _gather_sources(rep), which)
        return draw

    return (
        _Spec("mosaic", "m", "Binned image of the mosaic, asinh stretch "
              "on the sky", lambda f, r: _plot_mosaic(f, r, "image")),
        _Spec("weight_mosaic", "wmm", "Binned weight map of the mosaic",
              lambda f, r: _plot_mosaic(f, r, "weight")),
        _Spec("bkg_histo", "bkg_histo", "Sky-pixel histograms and the "
              "histogram of the CCD sky levels", _plot_bkg_histo),
        _Spec("bkg_m", "bkg_m", "Sky background map across the mosaic "
              "(mesh values, ADU)", _plot_bkg_m),
        _Spec("fwhm_histo", "fwhm_histo", "Histogram of the PSF stars' "
              "pixel-free FWHM, median marked", _plot_fwhm_histo),
        _Spec("psf_m", "psf_m", "PSF FWHM map across the mosaic",
              _plot_psf_m),
        _Spec("ell", "ell", "PSF ellipticity whiskers across the mosaic",
              _plot_ell),
        _Spec("rhmag", "rhmag", "Half-light radius vs magnitude of all "
              "sources, PSF stars in red", rhmag("all")),
        _Spec("rhmag_star", "rhmag_star", "Half-light radius vs magnitude "
              "of the stars", rhmag("star")),
        _Spec("rhmag_gal", "rhmag_gal", "Half-light radius vs magnitude "
              "of the galaxies", rhmag("galaxy")),
        _Spec("star_histo", "star_histo", "Star counts per magnitude bin",
              lambda f, r: _counts(f, r, "nstar", "stars",
                                   _STAR_COLOUR)),
        _Spec("gal_histo", "gal_histo", "Galaxy counts per magnitude bin",
              lambda f, r: _counts(f, r, "ngal", "galaxies",
                                   "tab:green")),
        _Spec("psf_model", "psf", "PSF model (log stretch) and its radial "
              "profile with the Moffat fit", _plot_psf_model),
    )


#: Ids of the exposure-level pictures, in the order they are written.
PLOT_IDS: Final = tuple(s.id for s in _specs())


def write_ccd_previews(preview: Preview, outdir: Path, stem: str,
                       extname: str, *, weight: bool = True) -> list[Plot]:
    """Write a CCD's image (and weight) previews; say what was written.

    The worker-side companion of `write_plots`: `write_ccd_preview` at
    `ccd_preview_path`, with the product ids and descriptions.

    Parameters
    ----------
    preview : Preview
        The CCD's binned image and weight.
    outdir : Path
        Output directory.
    stem : str
        Image stem.
    extname : str
        The CCD's EXTNAME.
    weight : bool
        Also write the weight preview.

    Returns
    -------
    list of Plot
        ``preview_<EXTNAME>`` and ``preview_<EXTNAME>_weight`` (EXTNAME
        with characters other than letters, digits, ``-`` and ``_``
        replaced by ``_``).
    """
    kinds = ("image", "weight") if weight else ("image",)
    out = []
    b = preview.binning
    for kind in kinds:
        path = ccd_preview_path(outdir, stem, extname, kind=kind)
        write_ccd_preview(preview, path, kind=kind)
        suffix, what = ("", "image") if kind == "image" else (
            "_weight", f"weight map (from the {preview.weight_source})")
        out.append(Plot(f"preview_{_slug(extname)}{suffix}", path,
                        f"Preview of {extname}: {what}, binned {b}x{b}"))
    return out


def write_plots(report: QualityReport, outdir: Path, stem: str, *,
                thumbnails: bool = True, ccd_previews: bool = False,
                timings: MutableMapping[str, float] | None = None
                ) -> list[Plot]:
    """Write the pictures of a report: QA plots, PSF model, mosaics.

    Parameters
    ----------
    report : QualityReport
        The assessment.
    outdir : Path
        Output directory (created); thumbnails go to ``outdir/tn``.
    stem : str
        Prefix of the file names (the image name without its FITS
        suffixes) and of the titles.
    thumbnails : bool
        Also write ``tn/<stem>_<suffix>_tn.png`` (about 200 pixels wide)
        for every picture (`Plot.thumbnail`).
    ccd_previews : bool
        Also write every assessed CCD's image and weight previews
        (`write_ccd_previews`); by default they are left to the workers
        or the caller.
    timings : mutable mapping, optional
        If given, receives the seconds spent on each product id
        (``"ccd_previews"`` for all CCD previews together).

    Returns
    -------
    list of Plot
        The pictures in `PLOT_IDS` order, then the CCD previews if
        asked.  Every picture is written, with a "no data" note where
        the report has nothing to show (a failed CCD's map, no
        previews); failed CCDs are dashed red outlines marked "failed"
        in the mosaics.
    """
    outdir = Path(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    rep = _prepare(report, stem)
    fig = _new_figure()
    plots: list[Plot] = []
    for spec in _specs():
        start = time.perf_counter()
        fig.clear()
        spec.draw(fig, rep)
        rgb = _figure_rgb(fig)
        path = outdir / f"{stem}_{spec.suffix}.png"
        _imsave(path, rgb, spec.description)
        thumbnail = None
        if thumbnails:
            thumbnail = outdir / "tn" / f"{stem}_{spec.suffix}_tn.png"
            _imsave(thumbnail, _shrink(rgb, THUMBNAIL_WIDTH),
                    spec.description)
        plots.append(Plot(spec.id, path, spec.description, thumbnail))
        if timings is not None:
            timings[spec.id] = time.perf_counter() - start
    fig.clear()
    if ccd_previews:
        start = time.perf_counter()
        for ext in report.extensions:
            if ext.ok and ext.preview is not None:
                plots += write_ccd_previews(ext.preview, outdir, stem,
                                            ext.name)
        if timings is not None:
            timings["ccd_previews"] = time.perf_counter() - start
    return plots
