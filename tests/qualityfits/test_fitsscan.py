"""Walking FITS headers before reading pixels: bombs and lies refused.

Files are built here: plain and gzip-compressed, with honest and lying
headers, and with a compressed tail that inflates far beyond the
limit; the scan must refuse them having inflated at most the limit.
"""

from __future__ import annotations

import gzip
import re
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits

from qualityfits.errors import InvalidImageError
from qualityfits.fitsscan import FitsTooLargeError, scan_fits

MB = 10**6


def _cards(*cards: str) -> bytes:
    text = "".join(c.ljust(80) for c in (*cards, "END"))
    return text.encode().ljust(-(-len(text) // 2880) * 2880, b" ")


def _header(nx: int, ny: int, bitpix: int = 16) -> bytes:
    return _cards("SIMPLE  =                    T",
                  f"BITPIX  = {bitpix:>20}", "NAXIS   =                    2",
                  f"NAXIS1  = {nx:>20}", f"NAXIS2  = {ny:>20}")


def _gzip_stream(path: Path, head: bytes, zeros: int) -> None:
    """Write head + ``zeros`` zero bytes gzipped, without holding them."""
    with gzip.open(path, "wb", compresslevel=9) as out:
        out.write(head)
        block = bytes(MB)
        for _ in range(zeros // MB):
            out.write(block)
        out.write(bytes(zeros % MB))


def test_a_real_mef_is_read_as_astropy_reads_it(tmp_path: Path):
    path = tmp_path / "mef.fits"
    fits.HDUList([
        fits.PrimaryHDU(),
        fits.ImageHDU(np.zeros((30, 40), np.float32), name="CCD1"),
        fits.BinTableHDU.from_columns([fits.Column("A", "E", array=[1, 2])]),
        fits.CompImageHDU(np.zeros((50, 60), np.int16), name="CCD2"),
    ]).writeto(path)
    layout = scan_fits(path, max_bytes=10 * MB, max_pixels=10**6)
    assert layout.hdus == 4
    assert layout.pixels == 30 * 40 + 50 * 60  # the table is no image
    assert layout.size == path.stat().st_size
    packed = tmp_path / "mef.fits.gz"
    packed.write_bytes(gzip.compress(path.read_bytes()))
    again = scan_fits(packed, max_bytes=10 * MB, max_pixels=10**6)
    assert (again.pixels, again.size, again.gzipped) == (
        layout.pixels, layout.size, True)


def test_a_header_announcing_too_much_is_refused_before_its_data(
        tmp_path: Path):
    path = tmp_path / "liar.fits.gz"
    # 40000 x 40000 int16: 3.2 GB announced, 2880 bytes present.
    path.write_bytes(gzip.compress(_header(40000, 40000) + bytes(2880)))
    with pytest.raises(FitsTooLargeError,
                       match=re.escape("headers announce 3.2 GB")):
        scan_fits(path, max_bytes=2 * 10**9, max_pixels=10**10)
    with pytest.raises(FitsTooLargeError, match="1600 million pixels"):
        scan_fits(path, max_bytes=10**10, max_pixels=500 * MB)


def test_a_bomb_is_refused_after_inflating_the_limit_only(tmp_path: Path):
    """A 1000x1000 image, then 400 MB of zeros after its last HDU."""
    path = tmp_path / "bomb.fits.gz"
    _gzip_stream(path, _header(1000, 1000) + bytes(2 * MB + 1600),
                 400 * MB)
    assert path.stat().st_size < 1 * MB
    with pytest.raises(FitsTooLargeError, match=re.escape(
            "decompresses to more than the limit of 10.0 MB")):
        scan_fits(path, max_bytes=10 * MB, max_pixels=10**8)
    # Under the limit, the same file is read whole.
    assert scan_fits(path, max_bytes=500 * MB,
                     max_pixels=10**8).size == 2880 + 2 * MB + 1600 + 400 * MB


def test_a_truncated_or_corrupt_stream_is_bad_input(tmp_path: Path):
    honest = _header(100, 100) + bytes(20000).ljust(20160, b"\0")
    cut = tmp_path / "cut.fits"
    cut.write_bytes(honest[:10000])
    with pytest.raises(InvalidImageError, match="truncated FITS file"):
        scan_fits(cut, max_bytes=MB, max_pixels=MB)
    broken = bytearray(gzip.compress(honest))
    broken[len(broken) // 2] ^= 0xFF
    bad = tmp_path / "bad.fits.gz"
    bad.write_bytes(bytes(broken))
    with pytest.raises(InvalidImageError, match="not a readable gzip"):
        scan_fits(bad, max_bytes=MB, max_pixels=MB)


@pytest.mark.parametrize(("cards", "words"), [
    (("SIMPLE  =                    T", "BITPIX  =                   12",
      "NAXIS   =                    0"), "BITPIX = 12 is not a FITS value"),
    (("SIMPLE  =                    T", "BITPIX  =                   16",
      "NAXIS   =                    2", "NAXIS1  =                  -10",
      "NAXIS2  =                   10"), "a negative NAXISn"),
    (("SIMPLE  =                    T", "BITPIX  =                   16",
      "NAXIS   =                    1"), "header without NAXIS1"),
])
def test_headers_that_lie_are_named(tmp_path: Path, cards, words):
    path = tmp_path / "odd.fits"
    path.write_bytes(_cards(*cards))
    with pytest.raises(InvalidImageError, match=words):
        scan_fits(path, max_bytes=MB, max_pixels=MB)


def test_not_fits_at_all(tmp_path: Path):
    path = tmp_path / "note.txt"
    path.write_bytes(b"hello" * 1000)
    with pytest.raises(InvalidImageError, match="must start with a SIMPLE"):
        scan_fits(path, max_bytes=MB, max_pixels=MB)

