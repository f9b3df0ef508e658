"""The QualityFITS product set of one assessed image.

`write_products` turns a `QualityReport` (and the maps its workers wrote)
into the files a person and a VO tool use directly, in ``OUTDIR``:

* the statistics: ``<stem>_summary.vot`` (VOTable, first product),
  ``<stem>_summary.fits``, the source catalogue ``<stem>_catalogue.vot``
  and ``.fits``, and ``<stem>.summary.json`` (everything, for scripts);
* the maps, one extension per CCD: ``<stem>_weight.fits.fz``,
  ``<stem>_flag.fits.fz``, ``<stem>_crmask.fits.fz``;
* the pictures: previews and QA plots (`qualityfits.plots`);
* ``index.html``, a static report page that opens from the file system;
* ``manifest.json`` (`qualityfits.manifest.Manifest`): every product
  with its id, file, MIME type, size and description (the UWS service
  publishes these as results);
* ``<stem>_qf.tar.gz``: every product in one archive (the manifest in
  it lists all but the archive itself).
"""

from __future__ import annotations

import contextlib
import json
import queue
import shutil
import tarfile
import threading
import zlib
from collections.abc import Callable, Sequence
from pathlib import Path
from types import TracebackType
from typing import IO, Any, Self, cast

from astropy.io import fits

from qualityfits import html, plots, tables
from qualityfits.manifest import MANIFEST_NAME, Manifest, Product
from qualityfits.report import QualityReport
from qualityfits.weights import assemble_maps

MIME = {
    ".vot": "application/x-votable+xml",
    ".fits": "application/fits",
    ".fz": "application/fits",
    ".json": "application/json",
    ".png": "image/png",
    ".html": "text/html",
    ".gz": "application/gzip",
    ".log": "text/plain",
}

#: Product steps, in order, for progress reports.
PRODUCT_STEPS: tuple[str, ...] = ("maps", "tables", "plots", "report",
                                  "archive")


#: Primary-header keywords of the image carried into the map files.
_IDENTITY = ("OBJECT", "FILTER", "EXPTIME", "DATE-OBS", "MJD-OBS",
             "TELESCOP", "INSTRUME", "DETECTOR", "RA", "DEC", "EQUINOX",
             "AIRMASS", "RUNID", "OBSID", "EXPNUM")


def _primary(header: fits.Header | None, what: str,
             report: QualityReport) -> fits.Header:
    out = fits.Header()
    if header is not None:
        for key in _IDENTITY:
            if key in header:
                out[key] = (header[key], header.comments[key])
    out["QFPROD"] = (what, "QualityFITS product")
    out["QFIMAGE"] = (report.image[:68], "assessed image")
    out["QFVERS"] = (report.versions.get("qualityfits", ""),
                     "qualityfits version")
    return out


_MAPS = (
    ("weight", "weight", ("Weight map (relative inverse variance; 0 where "
     "flagged), one extension per CCD")),
    ("flag", "flag", ("Flag map (bits: 1 bad flat, 2 cosmic ray, 4 "
     "saturated, 8 user mask, 16 no data, 32 outside the data section, "
     "64 zero weight), one extension per CCD")),
    ("cosmic", "crmask", ("Cosmic-ray mask (1 = cosmic-ray pixel), one "
     "extension per CCD")),
)

_TABLES: tuple[tuple[str, str, Callable[[QualityReport, Path], Any],
                     str], ...] = (
    ("summary", "_summary.vot", tables.write_summary_votable,
     "Statistics per CCD and for the exposure (VOTable)"),
    ("summary_fits", "_summary.fits", tables.write_summary_fits,
     "Statistics per CCD and for the exposure (FITS table)"),
    ("catalogue", "_catalogue.vot", tables.write_catalogue_votable,
     "Every source with its class, size, shape and flags (VOTable)"),
    ("catalogue_fits", "_catalogue.fits", tables.write_catalogue_fits,
     "Every source with its class, size, shape and flags (FITS)"),
)


def write_products(
    report: QualityReport,
    outdir: str | Path,
    stem: str,
    *,
    maps_dir: str | Path | None = None,
    image_header: fits.Header | None = None,
    step: Callable[[str], None] | None = None,
) -> Manifest:
    """Write the whole product set; return its manifest.

    Parameters
    ----------
    report : QualityReport
    outdir : str or Path
        Output directory (created if needed).
    stem : str
        Prefix of the file names (the image name without suffixes).
    maps_dir : str or Path, optional
        Where `assess` wrote the per-CCD maps (its ``maps_dir``); the
        pieces are joined into the map files and the folder removed.
    image_header : astropy.io.fits.Header, optional
        The image's primary header (identification keywords for maps).
    step : callable, optional
        Called with each name of `PRODUCT_STEPS` as it starts.

    Returns
    -------
    Manifest
        What ``OUTDIR/manifest.json`` says: every product, the archive
        last.
    """
    out = Path(outdir)
    out.mkdir(parents=True, exist_ok=True)
    say = step or (lambda _name: None)
    map_items: list[tuple[str, str, str]] = []  # id, file, description

    archive = f"{stem}_qf.tar.gz"
    with _Archive(out / archive, f"{stem}_qf") as tar:
        say("maps")
        if maps_dir is not None:
            for kind, suffix, text in _MAPS:
                name = f"{stem}_{suffix}.fits.fz"
                if assemble_maps(Path(maps_dir), kind, out / name,
                                 _primary(image_header, kind, report)):
                    map_items.append((suffix, name, text))
                    tar.add(out / name)
            shutil.rmtree(maps_dir, ignore_errors=True)

        say("tables")
        table_items = []
        for pid, suffix, writer, text in _TABLES:
            name = f"{stem}{suffix}"
            writer(report, out / name)
            table_items.append((pid, name, text))
            tar.add(out / name)
        json_name = f"{stem}.summary.json"
        (out / json_name).write_text(
            json.dumps(report.to_dict(), indent=1) + "\n")
        tar.add(out / json_name)
        # The summary VOTable comes first: the UWS result a client takes.
        items = [*table_items, *map_items,
                 ("summary_json", json_name,
                  "Everything measured, for scripts (JSON)")]

        say("plots")
        previews = [plot for ext in report.extensions
                    if ext.preview is not None
                    for plot in plots.write_ccd_previews(
                        ext.preview, out, stem, ext.name)]
        for plot in [*plots.write_plots(report, out, stem,
                                        thumbnails=False), *previews]:
            items.append((plot.id, plot.path.name, plot.description))
            tar.add(plot.path)

        say("report")
        products = [_product(out, *item) for item in items]
        html.write_report(report, out / "index.html", stem, products)
        products.append(_product(out, "report", "index.html",
                                 "The report page (open it in a browser)"))
        manifest_path = out / MANIFEST_NAME
        _manifest(report, products).write(manifest_path)
        tar.add(out / "index.html")
        tar.add(manifest_path)
        say("archive")
    products.append(_product(out, "archive", archive,
                             "Every product in one archive (tar.gz)"))
    manifest = _manifest(report, products)
    manifest.write(manifest_path)
    return manifest


#: Files that are compressed already: stored in the archive as they are
#: (deflating 0.35 GB of RICE-compressed weights took 7.5 s to save
#: 0.2 %).
_COMPRESSED = (".fz", ".png", ".gz")


class _GzipMembers:
    """A gzip file written as one member per compression level.

    Concatenated gzip members are one gzip stream (RFC 1952), which
    ``gzip -d``, ``tar xzf`` and Python's ``tarfile`` read as a whole.
    """

    def __init__(self, path: Path) -> None:
        self._file = path.open("wb")
        self._level = -2
        self._deflate: Any = None
        self._pos = 0

    def level(self, level: int) -> None:
        """Deflate what follows at ``level`` (0: stored)."""
        if level != self._level:
            if self._deflate is not None:
                self._file.write(self._deflate.flush())
            self._deflate = zlib.compressobj(level, zlib.DEFLATED, 31)
            self._level = level

    def write(self, data: bytes) -> int:
        """Compress ``data`` into the current member."""
        self._file.write(self._deflate.compress(data))
        self._pos += len(data)
        return len(data)

    def tell(self) -> int:
        """Uncompressed bytes written (what tarfile counts)."""
        return self._pos

    def close(self) -> None:
        """End the last member and the file."""
        if self._deflate is not None:
            self._file.write(self._deflate.flush())
        self._file.close()


class _Archive:
    """A tar.gz written by a thread while the products are being made.

    Compression (zlib releases the GIL) overlaps with the rendering of
    the pictures; files compressed already are stored, the others
    deflated at level 1.
    """

    def __init__(self, path: Path, root: str) -> None:
        self._root = root
        self._gzip = _GzipMembers(path)
        self._gzip.level(1)
        # Copies in 1 MB blocks: few calls into zlib, which holds the GIL
        # between them.
        self._tar = tarfile.TarFile(
            mode="w", fileobj=cast("IO[bytes]", self._gzip),
            copybufsize=1 << 20)
        self._queue: queue.Queue[Path | None] = queue.Queue()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, daemon=True,
                                        name="archive")
        self._thread.start()

    def add(self, path: Path) -> None:
        """Queue ``path`` for the archive (it must not change any more)."""
        self._queue.put(path)

    def _run(self) -> None:
        while (path := self._queue.get()) is not None:
            if self._error is not None:
                continue
            try:
                self._gzip.level(0 if path.suffix in _COMPRESSED else 1)
                self._tar.add(path, arcname=f"{self._root}/{path.name}")
            except BaseException as exc:  # noqa: BLE001 - raised in close()
                self._error = exc

    def close(self) -> None:
        """Finish the archive; raise what went wrong while writing it."""
        self._queue.put(None)
        self._thread.join()
        try:
            self._gzip.level(1)  # the tar end blocks: zeros
            self._tar.close()
        finally:
            self._gzip.close()
        if self._error is not None:
            raise self._error

    def __enter__(self) -> Self:
        """Use as a context manager."""
        return self

    def __exit__(self, kind: type[BaseException] | None,
                 value: BaseException | None,
                 traceback: TracebackType | None) -> None:
        """Close (on an error too, so that the thread ends)."""
        if kind is None:
            self.close()
            return
        with contextlib.suppress(BaseException):  # the first error wins
            self.close()


def _product(out: Path, pid: str, name: str, description: str) -> Product:
    path = out / name
    suffix = path.suffix.lower()
    return Product(id=pid, file=name, mime=MIME.get(
        suffix, "application/octet-stream"), size=path.stat().st_size,
        description=description)


def _manifest(report: QualityReport,
              products: Sequence[Product]) -> Manifest:
    return Manifest(
        image=report.image,
        qualityfits=report.versions.get("qualityfits", ""),
        n_extensions=len(report.extensions),
        failed_extensions=tuple(e.name for e in report.extensions
                                if not e.ok),
        flags=tuple(report.exposure.flags),
        products=tuple(products),
    )
