"""``index.html`` of a run folder: the exposures of ``qualityfits run``.

One self-contained page, like the report of one image
(`qualityfits.html`): the grades counted, the run table in time order
(each row linking to its exposure's report), the trend plots and the
focal-plane strip (`qualityfits.runplots`), and the run's tables.
Built with lxml's HTML builder, so every value is escaped.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from pathlib import Path

from lxml import etree
from lxml.html import builder as E  # noqa: N812 - lxml's own idiom

from qualityfits.grades import LETTERS, MEANING
from qualityfits.html import STYLE
from qualityfits.plots import Plot
from qualityfits.runs import RunExposure, run_columns, run_rows


def write_run_page(run_id: str, exposures: Sequence[RunExposure],
                   plots: Sequence[Plot], path: Path,
                   tables: Sequence[str]) -> None:
    """Write the run page ``path`` (links relative to its folder)."""
    rows = run_rows(exposures)
    counts = Counter(row.grade for row in rows if row.grade)
    head = E.TR(*(E.TH(h, scope="col") for h in run_columns(exposures)),
                E.TH("Grade", scope="col"), E.TH("Why", scope="col"))
    body_rows = []
    for row in rows:
        cells = [E.TD(text) for text in row.cells]
        if row.exposure.link:
            cells[1] = E.TD(E.A(row.cells[1], href=row.exposure.link))
        grade = (E.SPAN(row.grade, E.CLASS(f"grade grade-{row.grade}"))
                 if row.grade else "–")
        body_rows.append(E.TR(*cells, E.TD(grade), E.TD(row.reasons),
                              E.CLASS("failed") if row.exposure.error
                              else E.CLASS("")))
    summary = ", ".join(f"{counts[letter]} {letter} ({MEANING[letter]})"
                        for letter in LETTERS if counts[letter])
    body = [
        E.H1(f"QualityFITS run: {run_id}"),
        E.P(f"{len(rows)} exposure(s); grades: {summary or 'none'}."),
        E.H2("Exposures, in time order"),
        E.DIV(E.TABLE(E.THEAD(head), E.TBODY(*body_rows), id="run"),
              E.CLASS("wide")),
        E.P("The run's tables: ", *[
            item for name in tables
            for item in (E.A(name, href=name), " ")],
            "(VOTable for TOPCAT, FITS)."),
    ]
    if plots:
        body += [E.H2("Trends"), E.DIV(*(
            E.FIGURE(E.A(E.IMG(src=p.path.name, alt=p.description,
                               width="640"), href=p.path.name),
                     E.FIGCAPTION(p.description))
            for p in plots), E.CLASS("gallery"))]
    page = E.HTML(
        E.HEAD(E.META(charset="utf-8"),
               E.META(name="viewport",
                      content="width=device-width, initial-scale=1"),
               E.TITLE(f"QualityFITS run: {run_id}"),
               E.STYLE(STYLE + ".gallery figure { max-width: 40em; }\n")),
        E.BODY(*body),
        lang="en",
    )
    path.write_bytes(b"<!DOCTYPE html>\n" + etree.tostring(
        page, method="html", encoding="utf-8", pretty_print=True))
