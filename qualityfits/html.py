"""``index.html``: the static report page of a product set.

One self-contained page (inline style, no script, no external resource)
that opens from the file system: the exposure's QA flags and notes, the
pictures, the per-CCD summary table with its QA flags highlighted, and a
link to every product with its size.  The table's columns and the
pictures with their captions are those of `qualityfits.presentation`,
shared with the UWS service's results page.  Built with lxml's HTML
builder, so every value is escaped.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from lxml import etree
from lxml.html import builder as E  # noqa: N812 - lxml's own idiom

from qualityfits.grades import MEANING
from qualityfits.manifest import Product
from qualityfits.metrics import QA_FLAGS
from qualityfits.presentation import (
    ccd_table,
    hdu_lines,
    pictures,
    previews,
)
from qualityfits.report import QualityReport

#: The style sheet of the report page (the run page reuses it).
STYLE = """
body { font-family: system-ui, sans-serif; margin: 1.5em auto;
       max-width: 72em; padding: 0 1em; color: #1a1a1a; }
h1 { font-size: 1.6em; margin-bottom: 0.2em; }
h2 { border-bottom: 1px solid #ccc; margin-top: 1.6em; }
table { border-collapse: collapse; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.5em; }
th { background: #f0f0f0; text-align: left; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
.flag { background: #ffe2b3; font-weight: bold; }
.failed { background: #f8c8c8; }
.ok { color: #176b1d; font-weight: bold; }
.gallery { display: flex; flex-wrap: wrap; gap: 1em; }
.gallery figure { margin: 0; max-width: 22em; }
.gallery img { width: 100%; height: auto; border: 1px solid #ddd; }
.thumbs figure { max-width: 9em; }
figcaption { font-size: 0.85em; color: #444; }
.wide { overflow-x: auto; }
.note { font-size: 0.9em; color: #444; }
.grade { display: inline-block; min-width: 1.6em; text-align: center;
         font-weight: bold; border-radius: 4px; color: #fff; }
.grade-A { background: #176b1d; } .grade-B { background: #5b7f16; }
.grade-C { background: #a35d00; } .grade-D { background: #b42318; }
"""

def _summary_table(report: QualityReport) -> Any:
    table = ccd_table(report.to_dict())
    head = E.TR(*(E.TH(text, title=title, scope="col") if title
                  else E.TH(text, scope="col")
                  for text, title in zip(table.headings, table.titles,
                                         strict=True)))
    rows = []
    for row in table.rows:
        name: Any = E.B(row.name) if row.median else row.name
        cells = [E.TD(name), E.TD(row.status)]
        cells += [E.TD(E.B(v) if row.median else v, E.CLASS("num"))
                  for v in row.cells]
        if row.failed:
            cells.append(E.TD("FAILED: " + row.flags, E.CLASS("failed")))
            rows.append(E.TR(*cells, E.CLASS("failed")))
        else:
            cells.append(E.TD(row.flags,
                              E.CLASS("flag" if row.flagged else "ok")))
            rows.append(E.TR(*cells))
    parts = [E.TABLE(E.THEAD(head), E.TBODY(*rows))]
    if table.note is not None:
        parts.append(E.P(table.note, E.CLASS("note"), id="instrumental"))
    return E.DIV(*parts, E.CLASS("wide"))


def _figure(product: Product, caption: str, *, lazy: bool = True) -> Any:
    img = E.IMG(src=product.file, alt=caption)
    if lazy:
        img.set("loading", "lazy")
    return E.FIGURE(E.A(img, href=product.file), E.FIGCAPTION(caption))


def human_size(size: float) -> str:
    """Size in bytes as a short readable string (``12.3 MB``)."""
    units = ("B", "kB", "MB", "GB")
    power = 0
    while size >= 1000 and power < len(units) - 1:
        size /= 1000.0
        power += 1
    return (f"{size:.0f} {units[power]}" if power == 0 or size >= 100
            else f"{size:.1f} {units[power]}")


def _products_table(products: Sequence[Product]) -> Any:
    rows = [E.TR(E.TD(E.A(p.file, href=p.file)), E.TD(p.description),
                 E.TD(human_size(p.size), E.CLASS("num")), E.TD(p.mime))
            for p in products]
    return E.DIV(E.TABLE(
        E.THEAD(E.TR(E.TH("File", scope="col"),
                     E.TH("Content", scope="col"),
                     E.TH("Size", scope="col"),
                     E.TH("Type", scope="col"))),
        E.TBODY(*rows)), E.CLASS("wide"))


def _grade(report: QualityReport) -> Any:
    grade = report.exposure.grade
    head = E.P(E.SPAN(grade.letter, E.CLASS(f"grade grade-{grade.letter}")),
               f" {MEANING[grade.letter]}", E.CLASS("grade-line"))
    items = [E.LI(r) for r in grade.reasons]
    items += [E.LI(n, E.CLASS("note")) for n in grade.notes]
    return E.DIV(head, E.UL(*items)) if items else head


def write_report(report: QualityReport, path: Path, stem: str,
                 products: Sequence[Product]) -> None:
    """Write the report page ``path`` linking ``products``."""
    flags = report.exposure.flags
    meaning = {f.name: f.description for f in QA_FLAGS}
    notes = sorted({n for e in report.extensions for n in e.notes})
    gallery = pictures(products)
    thumbs = previews(products)
    params = {k: v for k, v in report.parameters.items() if v is not None}
    body = [
        E.H1(f"QualityFITS report: {report.image}"),
        E.P(f"{len(report.extensions)} extension(s), "
            f"{len(report.failed)} failed; qualityfits "
            f"{report.versions.get('qualityfits', '?')}."),
        E.H2("Grade"), _grade(report),
        E.H2("Quality flags"),
        E.UL(*(E.LI(E.SPAN(f, E.CLASS("flag")), f": {meaning.get(f, '')}")
               for f in flags)) if flags
        else E.P(E.SPAN("No QA flag raised.", E.CLASS("ok"))),
    ]
    if notes:
        body += [E.H2("Notes"), E.UL(*(E.LI(n) for n in notes))]
    roles = hdu_lines([h.to_dict() for h in report.hdus])
    body += [
        E.H2("Summary per CCD"), _summary_table(report),
        E.P("What each HDU of the file is (only the sky images are "
            "assessed):", E.CLASS("note")),
        E.UL(*(E.LI(line) for line in roles), id="hdus"),
    ] if roles else [E.H2("Summary per CCD"), _summary_table(report)]
    body += [
        E.P("Full statistics: ", E.A(f"{stem}_summary.vot",
                                     href=f"{stem}_summary.vot"),
            " (VOTable, for TOPCAT) and ",
            E.A(f"{stem}_summary.fits", href=f"{stem}_summary.fits"), "."),
    ]
    if gallery:
        body += [E.H2("Pictures"),
                 E.DIV(*(_figure(p, caption, lazy=i > 1)
                         for i, (p, caption) in enumerate(gallery)),
                       E.CLASS("gallery"))]
    if thumbs:
        body += [E.H2("CCD previews"),
                 E.DIV(*(_figure(p, caption) for p, caption in thumbs),
                       E.CLASS("gallery thumbs"))]
    body += [E.H2("Products"), _products_table(products)]
    if params:
        body += [E.H2("Parameters"),
                 E.UL(*(E.LI(f"{k}: {v}") for k, v in params.items()))]
    body.append(E.P("Software: " + ", ".join(
        f"{k} {v}" for k, v in report.versions.items())))
    page = E.HTML(
        E.HEAD(E.META(charset="utf-8"),
               E.META(name="viewport",
                      content="width=device-width, initial-scale=1"),
               E.TITLE(f"QualityFITS: {report.image}"),
               E.STYLE(STYLE)),
        E.BODY(*body),
        lang="en",
    )
    path.write_bytes(b"<!DOCTYPE html>\n" + etree.tostring(
        page, method="html", encoding="utf-8", pretty_print=True))
