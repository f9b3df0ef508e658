"""Reading images, flats and masks: the only place that touches FITS files.

Algorithms never see a FITS file or a big-endian array: this module opens
``.fits``, ``.fits.gz`` and tile-compressed ``.fits.fz`` files, lists
their image HDUs (each one a CCD; table HDUs are skipped; an empty
primary HDU is fine), and reads one extension at a time as a native
``float32`` array cropped to its data section, with the matching flat and
mask.

In the image itself every HDU gets a role (`HduRole`, `hdu_roles`): a
sky image to assess, or an auxiliary plane -- a mask (EXTNAME DQ, MASK,
FLAGS, BPM..., or an integer image with a few distinct values), a weight
(ERR, SIGMA, VAR, IVAR, WHT, WEIGHT, MUSE's STAT..., or as ESO's
HDUCLAS2/HDUCLAS3 cards say), another plane, a table, a
header -- and each mask or weight plane is paired with the sky image it
serves (same EXTVER, else the nearest sky image before it, else after).
Only sky images are CCDs.

A gzip file is decompressed once to a temporary file so that worker
processes can memory-map any extension without decompressing the ones
before it.
"""

from __future__ import annotations

import gzip
import re
import shutil
import tempfile
import warnings
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, replace
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
#: What an HDU of the image file is (`HduRole.role`).
Role: TypeAlias = Literal["sky image", "mask", "weight", "auxiliary",
                          "table", "header only"]
#: SExtractor's WEIGHT_TYPE of a weight plane.
PlaneWeightType: TypeAlias = Literal["MAP_WEIGHT", "MAP_VAR", "MAP_RMS"]

#: EXTNAMEs of data-quality and mask planes (HST, JWST, NOIRLab CP,
#: Rubin, SDSS...).
MASK_EXTNAMES: frozenset[str] = frozenset({
    "DQ", "MASK", "FLAGS", "FLAG", "BPM", "BADPIX", "DQMASK", "QUAL",
    "QUALITY", "OOD", "DATA_QUALITY"})
#: EXTNAMEs of weight planes, and their WEIGHT_TYPE.
WEIGHT_EXTNAMES: dict[str, PlaneWeightType] = {
    "ERR": "MAP_RMS", "ERROR": "MAP_RMS", "SIGMA": "MAP_RMS",
    "RMS": "MAP_RMS", "NOISE": "MAP_RMS", "STDEV": "MAP_RMS",
    "UNCERT": "MAP_RMS", "ERRS": "MAP_RMS",
    "VAR": "MAP_VAR", "VARIANCE": "MAP_VAR", "STAT": "MAP_VAR",
    "IVAR": "MAP_WEIGHT", "INVVAR": "MAP_WEIGHT", "WHT": "MAP_WEIGHT",
    "WEIGHT": "MAP_WEIGHT", "WGT": "MAP_WEIGHT", "OOW": "MAP_WEIGHT",
}
#: ESO's data format standard (HDUCLASS = 'ESO'; Phase 3 and the VLT
#: pipelines): HDUCLAS2 says what a plane is whatever its EXTNAME, and
#: for an error plane HDUCLAS3 says which kind.
ESO_ERROR_TYPES: dict[str, PlaneWeightType] = {
    "RMSE": "MAP_RMS", "MSE": "MAP_VAR", "INVMSE": "MAP_WEIGHT",
    "INVRMSE": "MAP_WEIGHT"}
#: EXTNAMEs (or their prefixes, ending in ``_``) of other planes that are
#: not sky images: JWST's variance parts and context, drizzle context,
#: exposure and area maps, HST's SAMP/TIME.
OTHER_EXTNAMES: tuple[str, ...] = (
    "VAR_", "CON", "CTX", "CONTEXT", "EXP", "EXPMAP", "AREA", "SAMP",
    "TIME", "NSAMP", "COVERAGE", "WMAP", "PSF", "BACKGROUND", "BKG")
#: An integer image is a mask when a sample of it holds at most this many
#: distinct values, the commonest on at least half of its pixels.
MASK_MAX_VALUES = 16

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


@dataclass(frozen=True)
class HduRole:
    """What one HDU of the image file is, and why.

    Attributes
    ----------
    index : int
        HDU index (0 = primary).
    name : str
        EXTNAME (with ``,EXTVER`` when it has one), ``PRIMARY`` or
        ``HDU<n>``.
    role : str
        ``"sky image"`` (assessed), ``"mask"``, ``"weight"``,
        ``"auxiliary"``, ``"table"`` or ``"header only"``.
    reason : str
        Why, for a person (``"EXTNAME DQ"``, ``"integer, 2 distinct
        values"``...).
    weight_type : str or None
        A weight plane's WEIGHT_TYPE.
    serves : int or None
        HDU index of the sky image whose mask or weight it is (None: not
        paired, or not used).
    used : bool
        Whether the pipeline uses it as that sky image's mask or weight
        (not when the user gave one).
    """

    index: int
    name: str
    role: Role
    reason: str
    weight_type: PlaneWeightType | None = None
    serves: int | None = None
    used: bool = False

    @property
    def distinct(self) -> int | None:
        """Distinct integer values of a mask found by its pixels."""
        match = re.match(r"integer, (\d+) distinct value", self.reason)
        return int(match.group(1)) if match else None

    def to_dict(self) -> dict[str, Any]:
        """Return the role as JSON-friendly data."""
        return {"index": self.index, "name": self.name, "role": self.role,
                "reason": self.reason, "weight_type": self.weight_type,
                "serves": self.serves, "used": self.used}


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


def _extname(hdu: Any) -> str:
    return str(hdu.header.get("EXTNAME", "")).strip()


def _hdu_name(hdu: Any, index: int) -> str:
    name = _extname(hdu) or ("PRIMARY" if index == 0 else f"HDU{index}")
    extver = hdu.header.get("EXTVER")
    if _extname(hdu) and isinstance(extver, int) and not isinstance(
            extver, bool):
        return f"{name},{extver}"
    return name


def _integer_sample(hdu: Any, shape: tuple[int, int]) -> (
        tuple[int, float] | None):
    """Distinct values of an integer image and its commonest's share.

    Counted on three bands of 32 rows (a quarter, half and three
    quarters of the way up), read alone; None for a floating-point or
    scaled (BSCALE != 1) image.
    """
    header = hdu.header
    bitpix = header.get("BITPIX")
    if not isinstance(bitpix, int) or bitpix <= 0:
        return None
    if header.get("BSCALE", 1) != 1:
        return None
    ny = shape[0]
    starts = sorted({max(0, min(ny - 32, ny * k // 4)) for k in (1, 2, 3)})
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            bands = [np.asarray(hdu.section[y:y + 32]) for y in starts]
    except (*_READ_ERRORS, AttributeError):
        return None
    sample = np.concatenate([b.reshape(-1) for b in bands])
    if sample.size == 0:
        return None
    _, counts = np.unique(sample, return_counts=True)
    return int(counts.size), float(counts.max() / sample.size)


def _role_of(hdu: Any, index: int, name: str) -> HduRole:
    """Decide what one HDU is (not yet paired with a sky image)."""
    if isinstance(hdu, fits.BinTableHDU | fits.TableHDU):
        return HduRole(index, name, "table", "a table")
    shape = _image_shape(hdu)
    if shape is None:
        naxis = int(hdu.header.get("NAXIS", 0) or 0)
        if naxis == 0 or hdu.header.get("NAXIS1", 0) == 0:
            return HduRole(index, name, "header only", "no pixels")
        return HduRole(index, name, "auxiliary",
                       f"{naxis}-dimensional, not a 2-D image")
    named = (_role_by_class(hdu.header, index, name)
             or _role_by_name(_extname(hdu).upper(), index, name))
    if named is not None:
        return named
    found = _integer_sample(hdu, shape)
    if found is not None:
        n, share = found
        if n <= MASK_MAX_VALUES and share >= 0.5:
            return HduRole(index, name, "mask",
                           f"integer, {n} distinct value"
                           + ("s" if n != 1 else ""))
    return HduRole(index, name, "sky image",
                   "a 2-D image named and valued as no auxiliary plane")


def _role_by_class(header: fits.Header, index: int,
                   name: str) -> HduRole | None:
    """Return the role ESO's HDUCLAS2/HDUCLAS3 cards say (None: none).

    INVRMSE, not in the standard's list, is taken as a weight (its
    square is an inverse variance only up to the scale: MAP_WEIGHT).
    """
    what = str(header.get("HDUCLAS2", "")).strip().upper()
    if what == "QUALITY":
        return HduRole(index, name, "mask", "HDUCLAS2 QUALITY")
    if what != "ERROR":
        return None
    kind_card = str(header.get("HDUCLAS3", "")).strip().upper()
    kind = ESO_ERROR_TYPES.get(kind_card)
    if kind is None:
        return HduRole(index, name, "auxiliary",
                       f"HDUCLAS2 ERROR of an unknown kind (HDUCLAS3 "
                       f"{kind_card or 'absent'}): not a sky image")
    return HduRole(index, name, "weight",
                   f"HDUCLAS2 ERROR, HDUCLAS3 {kind_card}, {kind}",
                   weight_type=kind)


def _role_by_name(ext: str, index: int, name: str) -> HduRole | None:
    """Return the role an EXTNAME says (None: it says nothing)."""
    if ext in MASK_EXTNAMES:
        return HduRole(index, name, "mask", f"EXTNAME {ext}")
    if ext in WEIGHT_EXTNAMES:
        kind = WEIGHT_EXTNAMES[ext]
        return HduRole(index, name, "weight", f"EXTNAME {ext}, {kind}",
                       weight_type=kind)
    if ext and any(ext == o or (o.endswith("_") and ext.startswith(o))
                   for o in OTHER_EXTNAMES):
        return HduRole(index, name, "auxiliary",
                       f"EXTNAME {ext}: not a sky image")
    return None


def _pair_planes(roles: list[HduRole], hdul: fits.HDUList,
                 ) -> list[HduRole]:
    """Pair each mask and weight plane with the sky image it serves.

    The sky image of the same EXTVER, else the nearest one before it in
    the file, else after it; of the same shape; one mask and one weight
    per sky image (the first).
    """
    sky = [r for r in roles if r.role == "sky image"]

    def extver(index: int) -> Any:
        value = hdul[index].header.get("EXTVER")
        return value if isinstance(value, int) else None

    taken: set[tuple[int, str]] = set()
    out = []
    for role in roles:
        if role.role not in ("mask", "weight") or not sky:
            out.append(role)
            continue
        same = [r for r in sky if extver(role.index) is not None
                and extver(r.index) == extver(role.index)]
        before = [r for r in sky if r.index < role.index]
        target = (same[0] if same else before[-1] if before else sky[0])
        reason = role.reason
        if _image_shape(hdul[role.index]) != _image_shape(
                hdul[target.index]):
            reason += f"; not used: its shape differs from {target.name}'s"
            out.append(replace(role, reason=reason))
            continue
        if (target.index, role.role) in taken:
            reason += (f"; not used: {target.name} already has a "
                       f"{role.role} plane")
            out.append(replace(role, reason=reason))
            continue
        taken.add((target.index, role.role))
        out.append(replace(role, serves=target.index, used=True))
    return out


def hdu_roles(hdul: fits.HDUList) -> tuple[HduRole, ...]:
    """Decide the role of every HDU of an image file.

    A sky image is a 2-D image that is none of the others: a mask
    (EXTNAME in `MASK_EXTNAMES`, or an integer image with at most
    `MASK_MAX_VALUES` distinct values, the commonest on half of it), a
    weight (EXTNAME in `WEIGHT_EXTNAMES`), another plane
    (`OTHER_EXTNAMES`), a table or a header.  Masks and weights are
    paired with the sky image they serve (`HduRole.serves`).
    """
    names = [_extname(hdu) or ("PRIMARY" if i == 0 else f"HDU{i}")
             for i, hdu in enumerate(hdul)]
    if len(set(names)) != len(names):
        # As the CCDs are named (`ImageSource`): SCI,1 SCI,2 (HST).
        versioned = [_hdu_name(hdu, i) for i, hdu in enumerate(hdul)]
        if len(set(versioned)) == len(versioned):
            names = versioned
    return tuple(_pair_planes(
        [_role_of(hdu, i, names[i]) for i, hdu in enumerate(hdul)], hdul))


def no_sky_message(roles: Sequence[HduRole]) -> str:
    """Say why a file holds no sky image, naming what each HDU is."""
    images = [r for r in roles if r.role not in ("table", "header only")]
    if len(images) == 1:
        only = images[0]
        if only.distinct is not None:
            n = only.distinct
            return (f"extension {only.name} holds {n} distinct integer "
                    f"value{'s' if n != 1 else ''}: a mask, not an image")
        return (f"extension {only.name} is a {only.role} plane "
                f"({only.reason}), not an image")
    if not images:
        return "no image HDU"
    groups: list[list[HduRole]] = []
    for role in images:
        if groups and groups[-1][-1].role == role.role and (
                (role.distinct is None) == (groups[-1][-1].distinct
                                            is None)):
            groups[-1].append(role)
        else:
            groups.append([role])
    parts = []
    for group in groups:
        first, last = group[0], group[-1]
        what = f"{first.role}s" if len(group) > 1 else f"a {first.role}"
        if first.distinct is not None:
            counts = sorted({r.distinct for r in group
                             if r.distinct is not None})
            span = (str(counts[0]) if len(counts) == 1
                    else f"{counts[0]}-{counts[-1]}")
            why = f"integer, {span} distinct values"
        else:
            why = ", ".join(sorted({r.reason.split(";")[0]
                                    for r in group}))
        names = (first.name if len(group) == 1
                 else f"{first.name}..{last.name}")
        verb = "is" if len(group) == 1 else "are"
        parts.append(f"{names} {verb} {what} ({why})")
    return "no extension holds a sky image: " + "; ".join(parts)


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
    roles : bool or sequence of HduRole
        Decide each HDU's role (`hdu_roles`): `extensions` are then the
        sky images only, `hdus` says what every HDU is, and a file with
        no sky image is refused (`NoImageDataError`).  For the image
        assessed; a flat, mask or weight file is taken as it is.  The
        roles themselves (the `hdus` of an earlier `ImageSource` of the
        same file) are used as they are, not decided again.

    Attributes
    ----------
    extensions : tuple of ImageExtension
        The CCDs: every 2-D image HDU, or with ``roles`` the sky images.
    images : tuple of ImageExtension
        Every 2-D image HDU (auxiliary planes included).
    hdus : tuple of HduRole
        With ``roles``, every HDU's role; else empty.
    """

    def __init__(self, image: ImageInput, *, label: str = "image",
                 tmpdir: Path | None = None,
                 roles: bool | Sequence[HduRole] = False) -> None:
        self.label = label
        self._roles = bool(roles)
        self._known_roles = (None if isinstance(roles, bool)
                             else tuple(roles))
        self.hdus: tuple[HduRole, ...] = ()
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
            self.images = self._scan()
            self.extensions = self._sky_images()
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
            # SCI,1 SCI,2 (HST) when EXTVER tells them apart, else SCI#1.
            versioned = [_hdu_name(self._hdul[e.index], e.index)
                         for e in found]
            unique = len(set(versioned)) == len(versioned)
            found = [
                ImageExtension(index=e.index,
                               name=v if unique else f"{e.name}#{e.index}",
                               shape=e.shape, datasec=e.datasec,
                               header=e.header)
                for e, v in zip(found, versioned, strict=True)
            ]
        return tuple(found)

    def _sky_images(self) -> tuple[ImageExtension, ...]:
        """Return the CCDs: with roles, the sky images (none: refuse)."""
        if not self._roles:
            return self.images
        assert self._hdul is not None
        self.hdus = (hdu_roles(self._hdul) if self._known_roles is None
                     else self._given_roles(self._known_roles))
        sky = {r.index for r in self.hdus if r.role == "sky image"}
        if not sky:
            self._count_values()
            raise NoImageDataError(
                f"{self.display}: {no_sky_message(self.hdus)}")
        return tuple(e for e in self.images if e.index in sky)

    def _given_roles(self, roles: tuple[HduRole, ...]
                     ) -> tuple[HduRole, ...]:
        """Check that roles handed in are one per HDU of this file."""
        assert self._hdul is not None
        if [r.index for r in roles] != list(range(len(self._hdul))):
            raise InvalidParameterError(
                f"{self.display}: the roles given are not those of its "
                f"{len(self._hdul)} HDUs (they are for HDUs "
                f"{[r.index for r in roles]})")
        return roles

    def _count_values(self) -> None:
        """Count a lone integer mask's values on all its pixels."""
        assert self._hdul is not None
        masks = [r for r in self.hdus if r.distinct is not None]
        if len(self.images) != 1 or len(masks) != 1:
            return
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                raw = self._hdul[masks[0].index].data
            n = int(np.unique(raw).size)
        except (*_READ_ERRORS, AttributeError):
            return
        self.hdus = tuple(
            replace(r, reason=f"integer, {n} distinct value"
                    + ("s" if n != 1 else "")) if r is masks[0] else r
            for r in self.hdus)

    def plane(self, index: int) -> ImageExtension:
        """Return the image HDU ``index`` (an auxiliary plane)."""
        return next(e for e in self.images if e.index == index)

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
    serves a single-image input only.  When the image's auxiliary planes
    leave it fewer CCDs than image HDUs, ``other`` may also have one
    extension per image HDU (the CCDs' own are used).

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
    ccds = image.extensions
    if len(other.extensions) != len(ccds):
        if len(other.extensions) != len(image.images):
            raise ShapeMismatchError(
                f"{other.display} has {len(other.extensions)} image "
                f"extension(s), {image.display} has {len(ccds)}"
                + ("" if len(image.images) == len(ccds) else
                   f" sky image(s) among {len(image.images)} image HDUs")
            )
        wanted = {e.index for e in ccds}
        kept = [o for i, o in zip(image.images, other.extensions,
                                  strict=True) if i.index in wanted]
    else:
        kept = list(other.extensions)
    pairs = {}
    for img, oth in zip(ccds, kept, strict=True):
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
