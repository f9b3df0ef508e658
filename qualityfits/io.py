"""Reading images, flats and masks: the only place that touches FITS files.

Algorithms never see a FITS file or a big-endian array: this module opens
``.fits``, ``.fits.gz`` and tile-compressed ``.fits.fz`` files, lists
their image HDUs (each one a CCD; table HDUs are skipped; an empty
primary HDU is fine), and reads one extension at a time as a native
``float32`` array cropped to its data section, with the matching flat and
mask.  A gzip file is decompressed once to a temporary file so that
worker processes can memory-map any extension without decompressing the
ones before it.
"""

from __future__ import annotations

import gzip
import re
import shutil
import tempfile
import warnings
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, TypeAlias

import numpy as np
from astropy.io import fits
from numpy.typing import NDArray

from qualityfits.errors import (
    EmptyImageError,
    InvalidImageError,
    InvalidParameterError,
    NoImageDataError,
    ShapeMismatchError,
)

if TYPE_CHECKING:
    from types import TracebackType

ImageInput: TypeAlias = str | Path | fits.HDUList
MaskConvention: TypeAlias = Literal["auto", "zero", "nonzero"]

_GZIP_MAGIC = b"\x1f\x8b"
_FITS_MAGIC = b"SIMPLE  ="
_SECTION = re.compile(
    r"^\[\s*(\d+)\s*:\s*(\d+)\s*,\s*(\d+)\s*:\s*(\d+)\s*\]$"
)
_READ_ERRORS = (OSError, ValueError, EOFError, TypeError, zlib.error,
                KeyError, IndexError)
try:  # cfitsio's error on a tile that does not decompress
    from astropy.io.fits.hdu.compressed._compression import (
        CfitsioException as _TileError,
    )
except ImportError:  # pragma: no cover - another astropy layout
    _TileError = OSError


def parse_section(value: Any) -> tuple[int, int, int, int] | None:
    """Parse an IRAF section ``[x1:x2,y1:y2]`` (1-based, inclusive).

    Returns ``(x1, x2, y1, y2)`` as written (reversed ranges mean a flip),
    or None when the value is absent, malformed or "not applicable"
    (zeros, as CFHT writes in masks).
    """
    if not isinstance(value, str):
        return None
    match = _SECTION.match(value.strip())
    if match is None:
        return None
    x1, x2, y1, y2 = (int(g) for g in match.groups())
    if min(x1, x2, y1, y2) < 1:
        return None
    return x1, x2, y1, y2


def header_number(header: fits.Header, *keys: str) -> float | None:
    """First positive finite numeric value among ``keys``, else None.

    CFHT writes 0 for "not applicable" (GAIN, SATURATE in masks), so
    zero and negative values count as absent.
    """
    for key in keys:
        value = header.get(key)
        if isinstance(value, bool) or not isinstance(value, int | float):
            continue
        if np.isfinite(value) and value > 0:
            return float(value)
    return None


@dataclass(frozen=True)
class ImageExtension:
    """One image HDU of an input file: a CCD.

    Attributes
    ----------
    index : int
        HDU index in the file (0 = primary).
    name : str
        EXTNAME, or ``"PRIMARY"`` / ``"HDU<n>"``.
    shape : tuple of int
        (ny, nx) of the full HDU.
    datasec : tuple of int or None
        0-based (y0, y1, x0, x1) slice bounds of the data section, or
        None when the whole HDU is data.
    header : astropy.io.fits.Header
        The HDU header; for the primary-less extension of a MEF it is
        merged with the primary header (extension keywords win).
    """

    index: int
    name: str
    shape: tuple[int, int]
    datasec: tuple[int, int, int, int] | None
    header: fits.Header

    @property
    def data_shape(self) -> tuple[int, int]:
        """Shape (ny, nx) of the data section."""
        if self.datasec is None:
            return self.shape
        y0, y1, x0, x1 = self.datasec
        return (y1 - y0, x1 - x0)


def _datasec(header: fits.Header, shape: tuple[int, int]) -> (
        tuple[int, int, int, int] | None):
    """0-based slice bounds of DATASEC if it is a proper sub-area."""
    sec = parse_section(header.get("DATASEC"))
    if sec is None:
        return None
    x1, x2, y1, y2 = sec
    x0, x1_ = min(x1, x2) - 1, max(x1, x2)
    y0, y1_ = min(y1, y2) - 1, max(y1, y2)
    ny, nx = shape
    if x1_ > nx or y1_ > ny or (x0, y0, x1_, y1_) == (0, 0, nx, ny):
        return None
    return (y0, y1_, x0, x1_)


def _image_shape(hdu: Any) -> tuple[int, int] | None:
    """(ny, nx) of an image HDU, None for tables and empty HDUs."""
    if not isinstance(hdu, fits.PrimaryHDU | fits.ImageHDU
                      | fits.CompImageHDU):
        return None
    header = hdu.header  # a CompImageHDU shows its image header here
    naxis = int(header.get("NAXIS", 0) or 0)
    if naxis < 2:
        return None
    dims = [int(header.get(f"NAXIS{i}", 0)) for i in range(1, naxis + 1)]
    if any(d == 0 for d in dims[:2]) or any(d != 1 for d in dims[2:]):
        return None
    return (dims[1], dims[0])


class ImageSource:
    """An opened input image: a file path or an in-memory HDUList.

    Use as a context manager; it removes its temporary files on exit.

    Parameters
    ----------
    image : str, Path or astropy.io.fits.HDUList
        The input.
    label : str
        How messages name the input (``"image"``, ``"flat"``, ...).
    tmpdir : Path, optional
        Where to decompress gzip files (default: the system temp dir).
    """

    def __init__(self, image: ImageInput, *, label: str = "image",
                 tmpdir: Path | None = None) -> None:
        self.label = label
        self._tmp: Path | None = None
        self._hdul: fits.HDUList | None = None
        self._owns_hdul = False
        if isinstance(image, fits.HDUList):
            self.path: Path | None = None
            self.display = f"{label} (in-memory HDUList)"
            self._hdul = image
        else:
            self.path = Path(image)
            self.display = f"{label} {self.path.name}"
            self.path = self._prepare_file(self.path, tmpdir)
            self._hdul = self._open_file(self.path)
            self._owns_hdul = True
        try:
            self.extensions = self._scan()
        except Exception:
            self.close()
            raise

    # -- opening -------------------------------------------------------
    def _prepare_file(self, path: Path, tmpdir: Path | None) -> Path:
        if not path.exists():
            raise InvalidImageError(f"{self.display}: no such file")
        if path.is_dir():
            raise InvalidImageError(f"{self.display}: is a directory")
        with path.open("rb") as fh:
            head = fh.read(9)
        if head[:2] == _GZIP_MAGIC:
            self._tmp = Path(tempfile.mkdtemp(prefix="qf-", dir=tmpdir))
            out = self._tmp / (path.name.removesuffix(".gz") or "image")
            try:
                with gzip.open(path, "rb") as src, out.open("wb") as dst:
                    shutil.copyfileobj(src, dst, length=4 << 20)
            except (EOFError, OSError, zlib.error) as exc:
                self.close()
                raise InvalidImageError(
                    f"{self.display}: corrupt or truncated gzip file "
                    f"({exc})"
                ) from None
            with out.open("rb") as fh:
                head = fh.read(9)
            path = out
        if head != _FITS_MAGIC:
            self.close()
            raise InvalidImageError(
                f"{self.display}: not a FITS file (it does not start "
                "with SIMPLE =)"
            )
        return path

    def _open_file(self, path: Path) -> fits.HDUList:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                # Raw values; BSCALE/BZERO/BLANK are applied by `read`
                # directly into float32 (astropy would scale to float64).
                # Not memory-mapped: the pages of every extension read
                # would stay in the process's resident set until the file
                # is closed (a 36-CCD file is read by one process).
                hdul = fits.open(path, memmap=False, lazy_load_hdus=False,
                                 do_not_scale_image_data=True)
        except _READ_ERRORS as exc:
            self.close()
            raise InvalidImageError(
                f"{self.display}: unreadable FITS file ({exc})"
            ) from None
        size = path.stat().st_size
        end = 0
        for i, hdu in enumerate(hdul):
            info = hdu.fileinfo()
            if not info:
                continue
            end = info["datLoc"] + info["datSpan"]
            if end > size:
                hdul.close()
                self.close()
                raise InvalidImageError(
                    f"{self.display}: truncated FITS file (HDU {i} needs "
                    f"{end} bytes, the file has {size})"
                )
        # astropy silently drops an HDU whose header was cut short: bytes
        # after the last HDU that start an extension are one.
        if end < size:
            with path.open("rb") as fh:
                fh.seek(end)
                rest = fh.read(8)
            if rest.startswith(b"XTENSION"):
                hdul.close()
                self.close()
                raise InvalidImageError(
                    f"{self.display}: truncated FITS file (the header of "
                    f"HDU {len(hdul)} is cut short at byte {size})"
                )
        return hdul

    def _scan(self) -> tuple[ImageExtension, ...]:
        assert self._hdul is not None
        primary = self._hdul[0].header
        found = []
        for i, hdu in enumerate(self._hdul):
            shape = _image_shape(hdu)
            if shape is None:
                continue
            header = hdu.header.copy()
            if i > 0:
                # Inherit exposure-level keywords (EXPTIME, FILTER,
                # GAIN...) written once in the primary header of a MEF.
                for card in primary.cards:
                    if (card.keyword and card.keyword not in header
                            and card.keyword not in ("SIMPLE", "EXTEND",
                                                     "COMMENT", "HISTORY",
                                                     "")
                            and not card.keyword.startswith("NAXIS")):
                        header.append(card, end=True)
            name = str(hdu.header.get("EXTNAME", "")).strip() or (
                "PRIMARY" if i == 0 else f"HDU{i}")
            found.append(ImageExtension(
                index=i, name=name, shape=shape,
                datasec=_datasec(hdu.header, shape), header=header,
            ))
        if not found:
            raise NoImageDataError(
                f"{self.display}: no two-dimensional image HDU "
                f"(HDUs: {', '.join(type(h).__name__ for h in self._hdul)})"
            )
        names = [e.name for e in found]
        if len(set(names)) != len(names):
            found = [
                ImageExtension(index=e.index, name=f"{e.name}#{e.index}",
                               shape=e.shape, datasec=e.datasec,
                               header=e.header)
                for e in found
            ]
        return tuple(found)

    # -- reading -------------------------------------------------------
    def read(self, ext: ImageExtension, *, crop: bool = True) -> (
            NDArray[np.float32]):
        """Read one extension as a native-order float32 array.

        Parameters
        ----------
        ext : ImageExtension
            One of `extensions`.
        crop : bool
            Crop to the data section (DATASEC) when there is one.

        Raises
        ------
        InvalidImageError
            If the pixels cannot be read (corrupt or truncated data).
        """
        assert self._hdul is not None
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                raw = self._hdul[ext.index].data
            if raw is None:
                raise ValueError("no data")
            raw = raw.reshape(ext.shape)
            if crop and ext.datasec is not None:
                y0, y1, x0, x1 = ext.datasec
                raw = raw[y0:y1, x0:x1]
            hdu = self._hdul[ext.index]
            if self._owns_hdul:
                data = _scaled(raw, hdu.header)
                # astropy keeps the raw pixels with the HDU: let them go.
                del raw
                del hdu.data
            elif getattr(hdu, "_do_not_scale_image_data", False):
                data = _scaled(raw, hdu.header)
            else:
                # A caller's HDUList: astropy has already scaled the
                # values (it leaves BZERO in the header of unsigned data).
                data = np.array(raw, dtype=np.float32, order="C",
                                copy=True)
        except _TileError as exc:
            raise InvalidImageError(
                f"{self.display}, extension {ext.name}: corrupt "
                f"compressed tile data ({exc})"
            ) from None
        except _READ_ERRORS as exc:
            raise InvalidImageError(
                f"{self.display}, extension {ext.name}: unreadable pixels "
                f"({exc})"
            ) from None
        return data

    def close(self) -> None:
        """Close the file and remove any temporary copy."""
        if self._hdul is not None and self._owns_hdul:
            self._hdul.close()
        self._hdul = None
        if self._tmp is not None:
            shutil.rmtree(self._tmp, ignore_errors=True)
            self._tmp = None

    def __enter__(self) -> ImageSource:  # noqa: PYI034 - final class in use
        """Enter the context."""
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Close and clean up."""
        self.close()


def _scaled(raw: NDArray[Any], header: fits.Header) -> NDArray[np.float32]:
    """Physical values raw * BSCALE + BZERO (BLANK -> NaN) as float32.

    ``raw`` are the stored values (this module reads files with
    ``do_not_scale_image_data``).  With BSCALE = 1 and an integer BZERO
    the offset is applied exactly, in int64, a block of rows at a time,
    so that 32-bit unsigned data stored with BZERO = 2**31 keep their
    precision.
    """
    bscale = header.get("BSCALE", 1.0)
    bzero = header.get("BZERO", 0.0)
    if not isinstance(bscale, int | float) or isinstance(bscale, bool):
        bscale = 1.0
    if not isinstance(bzero, int | float) or isinstance(bzero, bool):
        bzero = 0.0
    if (raw.dtype.kind in "iu" and raw.dtype.itemsize <= 2
            and bscale == 1 and abs(bzero) < 2**23
            and float(bzero).is_integer()):
        # 16-bit values plus such an offset are integers below 2**24:
        # exact in float32 arithmetic.
        data = raw.astype(np.float32)
        if bzero:
            data += np.float32(bzero)
    elif (raw.dtype.kind in "iu" and bscale == 1 and bzero
            and float(bzero).is_integer()):
        data = np.empty(raw.shape, dtype=np.float32)
        for start in range(0, raw.shape[0], 256):
            rows = slice(start, start + 256)
            data[rows] = raw[rows].astype(np.int64) + int(bzero)
    else:
        data = np.array(raw, dtype=np.float32, order="C", copy=True)
        if bscale != 1:
            data *= np.float32(bscale)
        if bzero != 0:
            data += np.float32(bzero)
    if raw.dtype.kind in "iu":
        blank = header.get("BLANK")
        if isinstance(blank, int) and not isinstance(blank, bool):
            data[raw == blank] = np.nan
    return data


def match_extensions(
    image: ImageSource, other: ImageSource
) -> dict[int, ImageExtension]:
    """Pair the image extensions of a flat or mask with the image's.

    Extensions are paired in file order; a single-image flat or mask
    serves a single-image input only.

    Returns
    -------
    dict
        Image HDU index -> matching extension of ``other``.

    Raises
    ------
    ShapeMismatchError
        Different extension counts, or a shape that matches neither the
        image extension nor its data section.
    """
    if len(other.extensions) != len(image.extensions):
        raise ShapeMismatchError(
            f"{other.display} has {len(other.extensions)} image "
            f"extension(s), {image.display} has {len(image.extensions)}"
        )
    pairs = {}
    for img, oth in zip(image.extensions, other.extensions, strict=True):
        if oth.shape not in (img.shape, img.data_shape) and (
                oth.data_shape != img.data_shape):
            raise ShapeMismatchError(
                f"{other.display} extension {oth.name} has shape "
                f"{oth.shape[0]}x{oth.shape[1]} (rows x columns), "
                f"{image.display} extension {img.name} has "
                f"{img.data_shape[0]}x{img.data_shape[1]}"
            )
        pairs[img.index] = oth
    return pairs


def read_matched(other: ImageSource, oth: ImageExtension,
                 img: ImageExtension) -> NDArray[np.float32]:
    """Read a flat/mask extension cut to the image's data section."""
    if oth.shape == img.shape and img.datasec is not None:
        # Same raw geometry as the image: cut with the image's DATASEC.
        full = other.read(oth, crop=False)
        y0, y1, x0, x1 = img.datasec
        return np.ascontiguousarray(full[y0:y1, x0:x1])
    if oth.shape == img.data_shape:
        return other.read(oth, crop=False)
    return other.read(oth, crop=True)


def mask_to_bad(
    values: NDArray[np.float32],
    convention: MaskConvention,
    *,
    name: str = "mask",
) -> NDArray[np.bool_]:
    """Turn a user mask into a boolean "bad pixel" array.

    Parameters
    ----------
    values : ndarray
        The mask pixels.
    convention : {"zero", "nonzero"}
        ``"zero"``: 0 marks a bad pixel (CFHT Elixir masks: 1 good,
        0 bad).  ``"nonzero"``: any non-zero value marks a bad pixel
        (flag maps).  ``"auto"`` is decided for a whole file by
        `resolve_mask_convention`, never per extension.
    name : str
        Used in error messages.
    """
    finite = np.isfinite(values)
    zero = finite & (values == 0)
    if convention == "zero":
        return zero | ~finite
    if convention == "nonzero":
        return ~zero
    raise InvalidParameterError(
        f"{name}: mask convention must be zero or nonzero (auto is "
        f"resolved per file), got {convention!r}"
    )


def resolve_mask_convention(mask: ImageSource) -> MaskConvention:
    """Decide the "auto" convention once for a whole mask file.

    The minority value marks bad pixels, counted over every extension:
    a CCD half dead (CFHT Elixir masks have two) must not flip its own
    convention.
    """
    zeros = total = 0
    for ext in mask.extensions:
        values = mask.read(ext, crop=False)
        zeros += int(np.count_nonzero(values == 0))
        total += values.size
    return "nonzero" if zeros * 2 >= total else "zero"


def check_pixels(data: NDArray[np.float32], bad: NDArray[np.bool_],
                 *, name: str) -> None:
    """Raise `EmptyImageError` if no pixel is usable or all are equal.

    ``bad`` must include the non-finite pixels of ``data``.
    """
    nbad = int(np.count_nonzero(bad))
    if nbad == bad.size:
        raise EmptyImageError(f"{name}: every pixel is masked")
    if nbad == 0:
        sample = data[::7, ::7]  # a varying image shows it at once
        if sample.min() != sample.max():
            return
        lo, hi = float(data.min()), float(data.max())
    else:
        usable = ~bad
        lo = float(np.min(data, where=usable, initial=np.inf))
        hi = float(np.max(data, where=usable, initial=-np.inf))
    if lo == hi:
        raise EmptyImageError(
            f"{name}: constant image (every usable pixel is {lo:g})"
        )


#: FITS (and compression) suffixes `image_stem` removes, longest first.
_SUFFIXES = (".fits.gz", ".fits.fz", ".fit.gz", ".fts.gz", ".fits", ".fit",
             ".fts", ".fz", ".gz")


def image_stem(path: str | Path) -> str:
    """Return a file name without its FITS (and compression) suffixes.

    The prefix of the product files: ``exposure.fits.fz`` gives
    ``exposure``.
    """
    name = Path(path).name
    for suffix in _SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)] or name
    return name


def primary_header(image: str | Path) -> fits.Header | None:
    """Return the primary header of a FITS file (None if unreadable).

    The product writer copies the image's identification keywords from
    it into the map files.
    """
    try:
        return fits.getheader(image, 0)
    except (OSError, ValueError):
        return None
