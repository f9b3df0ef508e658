"""Weight and flag maps, with WeightWatcher's semantics.

A flag map holds, for every pixel, the bits of `PixelFlag` that apply to
it; the weight map is the relative inverse variance of each pixel:

* with a weight map given (``--weight``, or the ERR/VAR/WHT plane of
  the image's own file), its inverse variance normalised by its median
  (`inverse_variance` reads SExtractor's MAP_WEIGHT, MAP_VAR and
  MAP_RMS);
* else with a master flat, the flat normalised by the median of its
  positive pixels (WeightWatcher's first input weight map: a flat is a
  gain map);
* without either, ``(median RMS / RMS)**2`` from the background RMS map (a
  noisier part of the CCD weighs less), and the report says so;

and the weight is 0 wherever any flag is set (WeightWatcher gives every
out-of-range pixel weight 0).  Maps cover the whole image HDU: pixels
outside its data section (prescan, overscan) are flagged `EDGE`.

Files are tile-compressed (RICE, lossless): the flag and cosmic-ray maps
as 8-bit integers, the weight as 16-bit integers scaled by ``BSCALE``
(steps of 1/4096 of the largest weight; zeros exact), which
every FITS reader (SExtractor, SWarp, astropy, ds9) reads back as
floating-point weights.  Scaling first is ~3 times faster than letting
the compressor quantise floats, for the same use.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import IntFlag
from pathlib import Path
from typing import Any, Literal, TypeAlias, TypeVar

import numpy as np
from astropy.io import fits
from numpy.typing import NDArray

from qualityfits.errors import EmptyImageError, InvalidImageError

_T = TypeVar("_T", bound=np.generic)
#: SExtractor's WEIGHT_TYPE of an external weight map.
WeightType: TypeAlias = Literal["MAP_WEIGHT", "MAP_VAR", "MAP_RMS"]

#: Steps from 0 to the largest weight in the 16-bit weight files: the
#: rounding noise (1/4096/sqrt(12) of the largest weight) is a hundred
#: times below the 1 % pixel noise of a good flat, and the files a third
#: smaller than with 32000 steps.
_WEIGHT_STEPS = 4096


class PixelFlag(IntFlag):
    """Bits of the flag map (one 8-bit integer per pixel)."""

    BAD_FLAT = 1
    """Master-flat pixel outside [flat_min, flat_max] times its median,
    or not positive, or not finite."""
    COSMIC_RAY = 2
    """Cosmic-ray pixel."""
    SATURATED = 4
    """At or above the saturation level (times saturation_margin)."""
    USER_MASK = 8
    """Bad in the user's mask."""
    NO_DATA = 16
    """Not finite in the image, or exactly 0 where the sky is well above
    0 (a blank or vignetted pixel: noise cannot give 0 there)."""
    EDGE = 32
    """Outside the data section of the HDU (prescan, overscan)."""
    ZERO_WEIGHT = 64
    """Zero weight (infinite or zero variance or RMS) in the weight map
    given (WeightWatcher: a zero-weight pixel is a flagged one)."""


#: Metric name of the pixel count of each flag bit.
FLAG_METRICS: dict[PixelFlag, str] = {
    PixelFlag.BAD_FLAT: "NFLAG_BADFLAT",
    PixelFlag.COSMIC_RAY: "NFLAG_COSMIC",
    PixelFlag.SATURATED: "NFLAG_SATURATED",
    PixelFlag.USER_MASK: "NFLAG_USERMASK",
    PixelFlag.NO_DATA: "NFLAG_NODATA",
    PixelFlag.ZERO_WEIGHT: "NFLAG_ZEROWEIGHT",
}


@dataclass(frozen=True)
class PixelMaps:
    """The weight, flag and cosmic-ray maps of one CCD's data section.

    Attributes
    ----------
    weight : ndarray of float32
    flags : ndarray of uint8
        Bits of `PixelFlag`.
    cosmic : ndarray of bool
    weight_source : str
        ``"input weight"``, ``"flat"`` or ``"rms"``.
    """

    weight: NDArray[np.float32]
    flags: NDArray[np.uint8]
    cosmic: NDArray[np.bool_]
    weight_source: str


def normalise_flat(flat: NDArray[np.float32], low: float, high: float,
                   ) -> tuple[NDArray[np.float32], NDArray[np.bool_],
                              float]:
    """Normalise a flat by the median of its positive pixels.

    Returns
    -------
    norm : ndarray of float32
        The flat divided by the median; 0 where it is not positive or
        not finite.
    bad : ndarray of bool
        Not positive, not finite, or outside [``low``, ``high``].
    median : float
        The normalisation; NaN when no pixel is positive.
    """
    good = np.isfinite(flat)
    good &= flat > 0
    if not good.any():
        return (np.zeros(flat.shape, np.float32), np.ones(flat.shape, bool),
                math.nan)
    # Every third row and column: the median to ~1e-4 of the full one
    # on a CCD, nine times sooner.
    sample = flat[::3, ::3][good[::3, ::3]]
    med = float(np.median(sample if sample.size >= 10_000
                          else flat[good]))
    norm = np.zeros(flat.shape, np.float32)
    np.divide(flat, med, out=norm, where=good)
    bad = ~good
    bad |= norm < low
    bad |= norm > high
    return norm, bad, med


def inverse_variance(values: NDArray[np.float32], weight_type: WeightType,
                     *, name: str, strict: bool = True,
                     ) -> NDArray[np.float32]:
    """Read a weight map as a relative inverse variance (SExtractor's way).

    ``MAP_WEIGHT`` values are inverse variances, ``MAP_VAR`` variances,
    ``MAP_RMS`` standard deviations; a weight of 0 (a variance or RMS of
    0 or +inf, which no real pixel has) marks a bad pixel, whose inverse
    variance is 0.

    Parameters
    ----------
    values : ndarray
        The weight map's pixels.
    weight_type : {"MAP_WEIGHT", "MAP_VAR", "MAP_RMS"}
    name : str
        How messages name the map (``"weight w.fits, extension N2"``).
    strict : bool
        Refuse negative and NaN values (a map the user gave); otherwise
        (a plane found in the image's own file) they weigh 0.

    Raises
    ------
    InvalidImageError
        ``strict`` and a negative or NaN value.
    EmptyImageError
        No pixel has a positive weight.
    """
    nan = np.isnan(values)
    negative = values < 0  # NaN compares False
    if strict and (nan.any() or negative.any()):
        what = (f"{int(np.count_nonzero(nan))} NaN pixels" if nan.any()
                else f"{int(np.count_nonzero(negative))} negative pixels "
                f"(min {float(np.min(values[negative])):g})")
        raise InvalidImageError(
            f"{name}: {what}: not a {weight_type} weight map (a bad "
            "pixel has weight 0" + ("" if weight_type == "MAP_WEIGHT"
                                    else ", or variance/RMS inf") + ")")
    ivar = np.zeros(values.shape, np.float32)
    with np.errstate(divide="ignore", over="ignore", invalid="ignore"):
        if weight_type == "MAP_WEIGHT":
            good = np.isfinite(values) & (values > 0)
            np.copyto(ivar, values, where=good)
        else:
            good = np.isfinite(values) & (values > 0)
            power = 1.0 if weight_type == "MAP_VAR" else 2.0
            np.divide(1.0, values.astype(np.float64) ** power, out=ivar,
                      where=good, casting="unsafe")
            good &= np.isfinite(ivar) & (ivar > 0)
            ivar[~good] = 0.0
    if not good.any():
        raise EmptyImageError(
            f"{name}: no pixel has a positive weight (every one is 0"
            + ("" if weight_type == "MAP_WEIGHT" else ", inf")
            + (", NaN or negative" if not strict else "")
            + f" as {weight_type}): nothing left to measure")
    return ivar


def flag_map(shape: tuple[int, int], **bits: NDArray[np.bool_] | None,
             ) -> NDArray[np.uint8]:
    """Combine boolean maps into a flag map.

    Keywords are `PixelFlag` names in lower case (``bad_flat=...``);
    None is no pixel.
    """
    flags = np.zeros(shape, np.uint8)
    for name, where in bits.items():
        if where is not None:
            np.bitwise_or(flags, np.uint8(PixelFlag[name.upper()]),
                          out=flags, where=where)
    return flags


def weight_map(flags: NDArray[np.uint8],
               flat_norm: NDArray[np.float32] | None,
               rms: NDArray[np.float32] | None,
               ivar: NDArray[np.float32] | None = None,
               ) -> NDArray[np.float32]:
    """Relative weights; 0 where a flag is set.

    The inverse variance ``ivar`` of a weight map given, normalised by
    its median, else the flat, else (median RMS / RMS)**2.  One of
    ``ivar``, ``flat_norm`` and ``rms`` must be given.
    """
    unflagged = flags == 0
    if ivar is not None:
        usable = unflagged & (ivar > 0)
        sample = ivar[::4, ::4][usable[::4, ::4]]
        if sample.size < 100:
            sample = ivar[usable]
        ref = float(np.median(sample)) if sample.size else 1.0
        weight = np.zeros(ivar.shape, np.float32)
        np.divide(ivar, ref, out=weight, where=usable)
        return weight
    if flat_norm is not None:
        weight = np.zeros(flat_norm.shape, np.float32)
        np.copyto(weight, flat_norm, where=unflagged)
        return weight
    assert rms is not None
    ref = float(np.median(rms[::8, ::8]))
    weight = np.zeros(rms.shape, np.float32)
    unflagged &= rms > 0
    np.divide(ref, rms, out=weight, where=unflagged)
    np.square(weight, out=weight)
    return weight


def flag_counts(flags: NDArray[np.uint8]) -> dict[str, int]:
    """Pixels carrying each bit, by metric name (`FLAG_METRICS`)."""
    bits = np.empty_like(flags)
    out = {}
    for bit, name in FLAG_METRICS.items():
        np.bitwise_and(flags, int(bit), out=bits)
        out[name] = int(np.count_nonzero(bits))
    return out


def bin_mean(values: NDArray[np.floating], binning: int,
             usable: NDArray[np.bool_] | None = None,
             ) -> NDArray[np.float32]:
    """Mean of the usable pixels in each ``binning`` x ``binning`` block.

    Rows and columns beyond a whole block are dropped; a block with no
    usable pixel is NaN.
    """
    ny, nx = values.shape[0] // binning, values.shape[1] // binning
    if ny == 0 or nx == 0:
        return np.full((max(ny, 1), max(nx, 1)), np.nan, np.float32)
    cut = values[: ny * binning, : nx * binning]
    if usable is None:
        total = block_sum(cut, binning, np.float64)
        return (total / binning**2).astype(np.float32)
    ok = usable[: ny * binning, : nx * binning]
    total = block_sum(np.where(ok, cut, 0), binning, np.float64)
    count = block_sum(ok, binning, np.int64)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(count > 0, total / count, np.nan).astype(np.float32)


def block_sum(values: NDArray[Any], binning: int,
              dtype: type[np.generic]) -> NDArray[Any]:
    """Sum the ``binning`` x ``binning`` blocks of ``values``, in ``dtype``.

    ``values`` holds whole blocks.  The rows of each block first, then
    its columns, one slice at a time into one accumulator: 10 against
    25 ms for a 2048 x 4612 CCD by one reduction over two axes of the
    4-d view (sums in float64 of float32 values, and of integers, are
    exact in any order).
    """
    ny, nx = values.shape[0] // binning, values.shape[1] // binning
    rows = values.reshape(ny, binning, nx * binning)
    acc = rows[:, 0].astype(dtype)
    for k in range(1, binning):
        acc += rows[:, k]
    cols = acc.reshape(ny, nx, binning)
    out = np.ascontiguousarray(cols[..., 0])
    for k in range(1, binning):
        out += cols[..., k]
    return out


def _padded(data: NDArray[_T], shape: tuple[int, int],
            datasec: tuple[int, int, int, int] | None,
            fill: float) -> NDArray[_T]:
    if datasec is None or data.shape == shape:
        return data
    out = np.full(shape, fill, dtype=data.dtype)
    y0, y1, x0, x1 = datasec
    out[y0:y1, x0:x1] = data
    return out


def _map_header(header: fits.Header, extname: str,
                what: str) -> fits.Header:
    """Copy the image header's WCS and identification cards, for a map."""
    out = fits.Header()
    keep = ("CTYPE", "CRPIX", "CRVAL", "CDELT", "CD1_", "CD2_", "PC1_",
            "PC2_", "CUNIT", "RADESYS", "EQUINOX", "PV1_", "PV2_",
            "LONPOLE", "LATPOLE", "WCSAXES", "DATASEC", "DETSEC", "CCDNAME",
            "IMAGEID")
    for card in header.cards:
        if card.keyword.startswith(keep):
            out.append(card)
    out["EXTNAME"] = (extname, "CCD of the image")
    out["MAPTYPE"] = (what, "QualityFITS product")
    return out


def write_map_pieces(maps: PixelMaps, directory: Path, index: int, *,
                     extname: str, header: fits.Header,
                     shape: tuple[int, int],
                     datasec: tuple[int, int, int, int] | None) -> None:
    """Write one CCD's maps as single-extension compressed FITS files.

    ``directory/<kind>/<index>.fits`` for kind ``weight``, ``flag`` and
    ``cosmic``; `assemble_maps` joins them into one file per kind.
    ``shape`` is the whole HDU's; ``datasec`` the data section's slice
    (y0, y1, x0, x1), outside which pixels are flagged `EDGE`.
    """
    flags = _padded(maps.flags, shape, datasec, PixelFlag.EDGE)
    weight = _padded(maps.weight, shape, datasec, 0.0)
    cosmic = _padded(maps.cosmic.view(np.uint8), shape, datasec, 0)
    top = float(weight.max())
    scale = top / _WEIGHT_STEPS if top > 0 else 1.0
    scaled = np.rint(weight / scale).astype(np.int16)
    pieces: dict[str, tuple[NDArray[np.generic], str]] = {
        "weight": (scaled, "weight"),
        "flag": (flags, "flag"),
        "cosmic": (cosmic, "cosmic-ray mask"),
    }
    for kind, (data, what) in pieces.items():
        head = _map_header(header, extname, what)
        if kind == "weight":
            head["WGTSRC"] = (maps.weight_source,
                              "weights from the flat or the sky RMS")
        # Tiles of 64 rows: a third of the time of row tiles, the size
        # the same.
        hdu = fits.CompImageHDU(
            data, header=head, compression_type="RICE_1",
            tile_shape=(min(64, data.shape[0]), data.shape[1]))
        if kind == "weight":
            hdu.header["BSCALE"] = scale
            hdu.header["BZERO"] = 0.0
        sub = directory / kind
        sub.mkdir(parents=True, exist_ok=True)
        fits.HDUList([fits.PrimaryHDU(), hdu]).writeto(
            sub / f"{index:04d}.fits", overwrite=True)


def assemble_maps(directory: Path, kind: str, out: Path,
                  primary: fits.Header) -> bool:
    """Join the pieces of one kind into a multi-extension file ``out``.

    The compressed extensions are copied byte for byte (nothing is
    decompressed).  Returns False when there is no piece.
    """
    pieces = sorted((directory / kind).glob("*.fits"))
    if not pieces:
        return False
    head = fits.PrimaryHDU().header
    head["EXTEND"] = True
    head.extend(primary, strip=True, unique=True)
    head["NEXTEND"] = (len(pieces), "one per CCD")
    with out.open("wb") as dst:
        dst.write(head.tostring().encode("ascii"))
        for piece in pieces:
            with fits.open(piece) as hdul:
                offset = hdul[1].fileinfo()["hdrLoc"]
            with piece.open("rb") as src:
                src.seek(offset)
                while chunk := src.read(1 << 22):
                    dst.write(chunk)
    return True
