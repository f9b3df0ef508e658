"""Reports and checkers shared by the votable tests.

Two real assessments of simulated images: ``make_report`` a two-CCD
sample (every extension assessed), ``make_failed_report`` a three-CCD
exposure whose middle CCD is constant (a failed extension, NaN metrics,
no sources) under a non-ASCII file name, with a zero point given.
``big_report`` makes a MegaCam-sized report (36 CCDs, ~100 000 sources)
out of a real one, for the speed test.  The fixtures ``report`` and
``failed_report`` hold the first two, and ``written`` a product of
either in both formats (a test module imports them, ``*_fixture``, and
names its product with a ``product`` fixture).

This directory has no ``__init__.py`` and is named ``votable_tests``,
not ``votable``: a ``tests/votable`` directory would be importable as a
namespace package named ``votable`` and could hide the real one.
"""

from __future__ import annotations

import dataclasses
import re
import subprocess
from collections.abc import Callable
from pathlib import Path

import astropy.units as u
import numpy as np
import pytest
from astropy.io import fits
from astropy.io.votable.ucd import check_ucd
from astropy.table import Table
from lxml import etree
from testkit import SHARED_DATA, require_tool

import qualityfits
from qualityfits.datasets import SimulationParams, simulate_image, write_sample
from qualityfits.parameters import QualityParameters
from qualityfits.report import QualityReport

SCHEMA_PATH = SHARED_DATA.parent / "schemas" / "VOTable.xsd"
VO = "{http://www.ivoa.net/xml/VOTable/v1.3}"
FAILED_NAME = "expo≠sure.fits"

SMALL = SimulationParams(
    shape=(512, 512), n_stars=150, n_galaxies=200, n_cr_hits=20,
    n_cr_tracks=2,
)


def make_report(directory: Path) -> QualityReport:
    path = write_sample(directory / "sample.fits", n_ccds=2,
                        shape=(1024, 1024), seed=2027)
    return qualityfits.assess(path, jobs=1)


def make_failed_report(directory: Path) -> QualityReport:
    path = directory / FAILED_NAME
    hdus = [fits.PrimaryHDU()]
    for k in range(3):
        hdu = simulate_image(SMALL, seed=900 + k).to_hdu(name=f"ccd{k:02d}")
        if k == 1:
            hdu.data = np.full((512, 512), 9.0, np.float32)
        hdus.append(hdu)
    fits.HDUList(hdus).writeto(path)
    return qualityfits.assess(
        path, jobs=1, parameters=QualityParameters(zeropoint=30.0))


#: The report fixtures the products are written from.
REPORTS = ("report", "failed_report")

#: A public writer of the votable package: (report, path) -> path.
Writer = Callable[[QualityReport, Path], Path]


@pytest.fixture(scope="module", name="report")
def report_fixture(tmp_path_factory: pytest.TempPathFactory) -> QualityReport:
    """The two-CCD sample, assessed once per test module."""
    return make_report(tmp_path_factory.mktemp("sample"))


@pytest.fixture(scope="module", name="failed_report")
def failed_report_fixture(
        tmp_path_factory: pytest.TempPathFactory) -> QualityReport:
    """The exposure with a failed CCD, assessed once per test module."""
    return make_failed_report(tmp_path_factory.mktemp("failed"))


@pytest.fixture(scope="module", params=REPORTS, name="written")
def written_fixture(request: pytest.FixtureRequest,
                    tmp_path_factory: pytest.TempPathFactory,
                    product: tuple[str, Writer, Writer],
                    ) -> tuple[QualityReport, Path, Path]:
    """(report, VOTable path, FITS path) for each report.

    The test module names the product with a ``product`` fixture: the
    file stem, the VOTable writer and the FITS writer.
    """
    stem, to_votable, to_fits = product
    rep = request.getfixturevalue(request.param)
    out = tmp_path_factory.mktemp(f"{request.param}-{stem}")
    return (rep, to_votable(rep, out / f"{stem}.vot"),
            to_fits(rep, out / f"{stem}.fits"))


def big_report(report: QualityReport, n_ccds: int = 36,
               n_sources: int = 2800) -> QualityReport:
    """A report of ``n_ccds`` CCDs of ``n_sources`` sources each."""
    exts = []
    for i in range(n_ccds):
        ext = report.extensions[i % len(report.extensions)]
        assert ext.sources is not None
        rows = np.resize(np.arange(len(ext.sources)), n_sources)
        sources = ext.sources[rows]
        sources["NUMBER"] = np.arange(1, n_sources + 1, dtype=np.int32)
        exts.append(dataclasses.replace(
            ext, index=i + 1, name=f"ccd{i:02d}", sources=sources))
    return dataclasses.replace(report, extensions=tuple(exts))


def schema() -> etree.XMLSchema:
    """The VOTable 1.4 schema of ../shared/schemas; skip if absent."""
    if not SCHEMA_PATH.exists():
        pytest.skip(f"VOTable schema not available: {SCHEMA_PATH} is absent "
                    "(the shared folder sits beside the project)")
    return etree.XMLSchema(etree.parse(str(SCHEMA_PATH)))


def parse_xml(path: Path) -> etree._ElementTree:
    # A BINARY2 stream is one text node, beyond libxml2's default 10 MB.
    return etree.parse(str(path), etree.XMLParser(huge_tree=True))


def votlint(path: Path) -> str:
    """Everything ``stilts votlint`` reports on a file ("" when clean).

    votlint exits 0 even when it reports errors: its output is the
    verdict.
    """
    stilts = require_tool("stilts")
    done = subprocess.run([stilts, "votlint", str(path)],
                          capture_output=True, text=True, check=False,
                          timeout=300)
    return (done.stdout + done.stderr).strip()


def check_vounit(unit: str) -> None:
    """Fail unless ``unit`` is VOUnit (astropy's parser, and ``**``).

    astropy's VOUnit parser also takes FITS-style exponents ("pix2"),
    which VOUnit's grammar does not: those are refused here.
    """
    assert not re.search(r"[A-Za-z]\d", unit), f"FITS-style exponent: {unit}"
    u.Unit(unit, format="vounit", parse_strict="raise")


def check_ucd1p(ucd: str) -> None:
    assert check_ucd(ucd, check_controlled_vocabulary=True), ucd


def as_float(values: object) -> np.ndarray:
    """Float values of a (masked) column, NaN where masked."""
    mask = np.ma.getmaskarray(values)
    data = np.asarray(np.ma.getdata(values), dtype=float)
    return np.where(mask, np.nan, data)


def nan_equal(read: object, expected: object) -> None:
    """Values read back equal the report's; masked or NaN where NaN."""
    np.testing.assert_array_equal(as_float(read),
                                  np.asarray(expected, dtype=float))


def read_fits_table(path: Path, extname: str) -> tuple[Table, fits.Header]:
    with fits.open(path) as hdus:
        header = hdus[extname].header.copy()
    return Table.read(path, hdu=extname), header


def fits_column_meta(header: fits.Header) -> dict[str, dict[str, str]]:
    """Column name -> {unit, ucd, description} from a BINTABLE header."""
    meta = {}
    for i in range(1, header["TFIELDS"] + 1):
        meta[header[f"TTYPE{i}"]] = {
            "unit": header.get(f"TUNIT{i}", ""),
            "ucd": header.get(f"TUCD{i}", ""),
            "description": header.get(f"TCOMM{i}", ""),
        }
    return meta


def votable_field_meta(root: etree._Element,
                       table: str) -> dict[str, dict[str, str]]:
    """Field name -> {datatype, unit, ucd, description, null} (lxml)."""
    meta = {}
    element = root.find(f".//{VO}TABLE[@name='{table}']")
    assert element is not None, table
    for field in element.iter(f"{VO}FIELD"):
        values = field.find(f"{VO}VALUES")
        meta[field.get("name")] = {
            "datatype": field.get("datatype"),
            "arraysize": field.get("arraysize"),
            "unit": field.get("unit", ""),
            "ucd": field.get("ucd", ""),
            "description": field.findtext(f"{VO}DESCRIPTION", ""),
            "null": None if values is None else values.get("null"),
        }
    return meta


def check_fields_described(root: etree._Element,
                           tables: tuple[str, ...]) -> None:
    """Fail unless every FIELD of ``tables`` has a UCD1+ UCD, a
    description and, where it has a unit, a VOUnit."""
    for table in tables:
        for name, meta in votable_field_meta(root, table).items():
            assert meta["ucd"], name
            check_ucd1p(meta["ucd"])
            assert meta["description"], name
            if meta["unit"]:
                check_vounit(meta["unit"])
