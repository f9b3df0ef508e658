"""docs/products-tables.md describes the columns the writers write."""

from __future__ import annotations

from pathlib import Path

from qualityfits.metrics import METRIC_BY_NAME
from qualityfits.tables import METRIC_UCD_FIXES, SOURCE_COLUMNS
from votable import VOUNIT_SPELLINGS

DOC = Path(__file__).resolve().parents[2] / "docs" / "products-tables.md"


def test_every_fixed_column_and_source_column_is_documented():
    text = DOC.read_text()
    fixed = ("EXTNAME", "HDU", "STATUS", "NAXIS1", "NAXIS2", "QA_FLAGS",
             "NOTES", "ERROR_CODE", "ERROR", "N_EXTENSIONS", "N_FAILED")
    for name in (*fixed, *SOURCE_COLUMNS):
        assert f"`{name}`" in text, name


def test_every_spelling_correction_is_documented():
    text = DOC.read_text()
    for bad, good in VOUNIT_SPELLINGS.items():
        assert f"`{bad}` | `{good}`" in text, bad
    for name, (bad, good) in METRIC_UCD_FIXES.items():
        assert f"| `{name}` UCD | `{bad}` | `{good}`" in text, name


def test_the_source_ucds_of_the_doc_are_the_codes():
    # Spot checks that the table was written from the code, not memory.
    text = DOC.read_text()
    for name in ("NUMBER", "SNR", "CLASS", "FLAGS", "KRON_RADIUS",
                 "ELLIP_ISO", "FWHM_FIT", "ELLIP_FIT", "PSF_STAR"):
        ucd = SOURCE_COLUMNS[name][0]
        row = next(line for line in text.splitlines()
                   if line.startswith(f"| `{name}` |"))
        assert f"`{ucd}`" in row, name


def test_every_ucd_fix_names_a_metric():
    # a stale entry (metric renamed or removed) would silently linger
    assert set(METRIC_UCD_FIXES) <= set(METRIC_BY_NAME)
