"""Walk a FITS file's headers, bounded, before anything reads its pixels.

A small compressed file can announce (or inflate to) gigabytes: a
decompression bomb.  `scan_fits` reads a plain or gzip-compressed FITS
file as a stream, header by header: each header says how many bytes of
data follow (``BITPIX``, ``NAXISn``, ``PCOUNT``, ``GCOUNT``) and, for a
tile-compressed image, how many pixels it holds (``ZNAXISn``, counted
at ``ZBITPIX`` bytes: its tiles of zeros compress to almost nothing);
the limits are checked on what the headers announce *before* the data
is read, and on the bytes actually inflated while the data is skipped.  It
never holds more than one block in memory and never calls astropy.

Used by the service's upload check and by the worker before the
pipeline opens an input.
"""

from __future__ import annotations

import gzip
import math
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from qualityfits.errors import InvalidImageError
from qualityfits.html import human_size

BLOCK = 2880
CARD = 80
#: Most HDUs a file may hold.  A mosaic camera writes one per CCD or
#: amplifier (MegaCam 41, DECam 71, Euclid VIS 433); thousands of tiny
#: ones cost astropy (and the pipeline) minutes for a few megabytes.
MAX_HDUS = 1000
_SKIP = 1 << 20
_GZIP_MAGIC = b"\x1f\x8b"


class FitsTooLargeError(InvalidImageError):
    """The file announces or inflates to more than a limit allows."""


@dataclass(frozen=True)
class FitsLayout:
    """What the headers of a FITS file say, and its true length."""

    #: HDUs read.
    hdus: int
    #: Pixels of the image HDUs (tile-compressed ones by ZNAXISn).
    pixels: int
    #: Bytes of the (decompressed) file.
    size: int
    #: Whether the file was gzip-compressed.
    gzipped: bool
    #: Bytes with its tile-compressed images decompressed too: what a
    #: reader holds (``size`` counts their compressed tables).
    expanded: int


def scan_fits(path: Path, *, max_bytes: int, max_pixels: int,
              label: str = "image") -> FitsLayout:
    """Read the headers of ``path`` and check it against the limits.

    Parameters
    ----------
    path : Path
        A FITS file, plain or gzip-compressed (``.fits.gz``).
    max_bytes : int
        Most bytes the file may hold once decompressed.
    max_pixels : int
        Most pixels its images may hold together.
    label : str
        Which input, for messages.

    Raises
    ------
    FitsTooLargeError
        The headers announce, or the stream inflates to, more.
    InvalidImageError
        Not a FITS file, a header that cannot be read, a corrupt or
        truncated stream.
    """
    with path.open("rb") as raw:
        gzipped = raw.read(2) == _GZIP_MAGIC
    try:
        if gzipped:
            with gzip.open(path, "rb") as stream:
                return _walk(stream, max_bytes=max_bytes,
                             max_pixels=max_pixels, label=label,
                             gzipped=True)
        with path.open("rb") as stream:
            return _walk(stream, max_bytes=max_bytes, max_pixels=max_pixels,
                         label=label, gzipped=False)
    except (OSError, EOFError, zlib.error) as exc:
        raise InvalidImageError(
            f"{label}: not a readable {'gzip ' if gzipped else ''}FITS file "
            f"({exc})") from None


def _walk(stream: Any, *, max_bytes: int, max_pixels: int,
          label: str, gzipped: bool) -> FitsLayout:
    size = pixels = hdus = expanded = 0
    while True:
        header, length = _read_header(stream, label, first=hdus == 0)
        size += length
        expanded += length
        if header is None:
            break
        hdus += 1
        if hdus > MAX_HDUS:
            raise FitsTooLargeError(
                f"{label}: more than {MAX_HDUS} HDUs (headers and "
                "extensions), more than any camera writes")
        data = _data_bytes(header, label)
        image = _pixels(header, label)
        pixels += image
        padded = math.ceil(data / BLOCK) * BLOCK
        expanded += max(padded, _tiled_bytes(header, image, label))
        if expanded > max_bytes:
            raise FitsTooLargeError(
                f"{label}: its headers announce {human_size(expanded)}, more "
                f"than the limit of {human_size(max_bytes)}")
        if pixels > max_pixels:
            raise FitsTooLargeError(
                f"{label}: its images hold {pixels / 1e6:.0f} million "
                f"pixels, more than the limit of {max_pixels / 1e6:.0f} "
                "million")
        skipped = _skip(stream, padded, inflate=gzipped)
        size += skipped
        if skipped < data:
            raise InvalidImageError(
                f"{label}: truncated FITS file (HDU {hdus} announces "
                f"{data} bytes of data, {skipped} follow)")
        if skipped < padded:
            break  # the end of the file (its last padding may be missing)
    if hdus == 0:
        raise InvalidImageError(f"{label}: not a FITS file (empty)")
    # Whatever follows the last HDU counts too (a bomb hides there).
    tail = _skip(stream, max_bytes - size + 1, inflate=gzipped)
    size += tail
    if size > max_bytes:
        raise FitsTooLargeError(
            f"{label}: decompresses to more than the limit of "
            f"{human_size(max_bytes)}")
    return FitsLayout(hdus=hdus, pixels=pixels, size=size, gzipped=gzipped,
                      expanded=expanded + tail)


def _read_header(stream: Any, label: str, *,
                 first: bool) -> tuple[dict[str, str] | None, int]:
    """Return the keywords of the next header and its length in bytes."""
    cards: dict[str, str] = {}
    length = 0
    while True:
        block = stream.read(BLOCK)
        if not block and length == 0 and not first:
            return None, 0  # the end of the file
        start = block[:8].decode("ascii", "replace").strip()
        if first and length == 0 and block and start != "SIMPLE":
            # Said first, short or not: an HTML page instead of an image.
            raise InvalidImageError(
                f"{label}: not a FITS file (it must start with a "
                f"SIMPLE card, found {start[:8]!r})")
        if len(block) < BLOCK:
            if length == 0 and not first:
                return None, len(block)  # a short tail after the last HDU
            raise InvalidImageError(
                f"{label}: truncated FITS header (HDU ends after "
                f"{length + len(block)} bytes)")
        if length == 0 and not first and start != "XTENSION":
            return None, BLOCK  # something after the last HDU
        length += BLOCK
        for at in range(0, BLOCK, CARD):
            card = block[at:at + CARD].decode("ascii", "replace")
            key = card[:8].strip()
            if key == "END":
                return cards, length
            if card[8:10] == "= ":
                cards[key] = card[10:].split("/", 1)[0].strip()
        if length > 1000 * BLOCK:
            raise InvalidImageError(f"{label}: a header of more than "
                                    "1000 blocks (no END card)")


def _integer(header: dict[str, str], key: str, label: str,
             default: int | None = None) -> int:
    text = header.get(key)
    if text is None:
        if default is not None:
            return default
        raise InvalidImageError(f"{label}: header without {key}")
    try:
        return int(text)
    except ValueError:
        raise InvalidImageError(f"{label}: {key} = {text[:20]!r} is not "
                                "an integer") from None


def _bitpix(header: dict[str, str], key: str, label: str) -> int:
    """Return ``BITPIX`` (or ``ZBITPIX``), one of the FITS values."""
    bitpix = _integer(header, key, label)
    if bitpix not in (8, 16, 32, 64, -32, -64):
        raise InvalidImageError(f"{label}: {key} = {bitpix} is not a FITS "
                                "value (8, 16, 32, 64, -32, -64)")
    return bitpix


def _data_bytes(header: dict[str, str], label: str) -> int:
    bitpix = _bitpix(header, "BITPIX", label)
    naxis = _integer(header, "NAXIS", label)
    if not 0 <= naxis <= 999:
        raise InvalidImageError(f"{label}: NAXIS = {naxis} is not 0..999")
    if naxis == 0:
        return 0
    axes = [_integer(header, f"NAXIS{i}", label) for i in range(1, naxis + 1)]
    if any(n < 0 for n in axes):
        raise InvalidImageError(f"{label}: a negative NAXISn ({axes})")
    pcount = _integer(header, "PCOUNT", label, 0)
    gcount = _integer(header, "GCOUNT", label, 1)
    if pcount < 0 or gcount < 0:
        raise InvalidImageError(f"{label}: a negative PCOUNT or GCOUNT")
    return abs(bitpix) // 8 * gcount * (pcount + math.prod(axes))


def _pixels(header: dict[str, str], label: str) -> int:
    """Pixels of an image HDU (a tile-compressed one: ZNAXISn).

    ``ZNAXIS`` is bounded as ``NAXIS`` is: two billion axes would hold
    the loop below for minutes.
    """
    kind = header.get("XTENSION", "'IMAGE'").strip("' ").upper()
    if "ZNAXIS" in header:
        prefix = "ZNAXIS"  # a tile-compressed image in a BINTABLE
    elif kind == "IMAGE":
        prefix = "NAXIS"
    else:
        return 0  # a table
    try:
        naxis = int(header.get(prefix, "0"))
        if naxis > 999:
            raise InvalidImageError(f"{label}: {prefix} = {naxis} is not "
                                    "0..999")
        if naxis <= 0:
            return 0
        return math.prod(max(0, int(header.get(f"{prefix}{i}", "0")))
                         for i in range(1, naxis + 1))
    except ValueError:
        return 0


def _tiled_bytes(header: dict[str, str], pixels: int, label: str) -> int:
    """Bytes of a tile-compressed image once decompressed (else 0).

    Its tiles of zeros compress to almost nothing: a file of a few
    megabytes can hold gigabytes of image.
    """
    if "ZNAXIS" not in header:
        return 0
    return pixels * abs(_bitpix(header, "ZBITPIX", label)) // 8


def _skip(stream: Any, count: int, *, inflate: bool) -> int:
    """Pass up to ``count`` bytes; return how many there were.

    A plain file is seeked through; a compressed stream is inflated
    (and dropped) block by block: what it really holds is counted.
    """
    if not inflate:
        here = stream.tell()
        end = stream.seek(0, 2)
        stream.seek(min(end, here + count))
        return min(end, here + count) - here
    done = 0
    while done < count:
        chunk = stream.read(min(_SKIP, count - done))
        if not chunk:
            break
        done += len(chunk)
    return done
