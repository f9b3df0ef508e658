"""Command line: ``qualityfits IMAGE [options]``.

Assesses one FITS image, shows a progress bar on a terminal, prints a
summary table and writes the product set in ``OUTDIR`` (see
`qualityfits.products`: maps, tables, pictures, ``index.html``,
``manifest.json`` and a tar archive; only ``<image stem>.summary.json``
with ``--summary-only``).  Exit status: 0 on success (some extensions
may have failed: the table says which), 2 with a one-line message on
bad input.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Any, NoReturn

from qualityfits.cliutil import (
    OneLineParser,
    add_input_options,
    add_process_options,
    config_from_pairs,
    exit_now,
)
from qualityfits.errors import QualityFitsError
from qualityfits.grades import MEANING
from qualityfits.io import image_stem, primary_header
from qualityfits.parameters import PARAMETERS, QualityParameters
from qualityfits.pipeline import STEPS, ProgressEvent, assess
from qualityfits.presentation import (
    hdu_lines,
    instrumental,
    instrumental_note,
)
from qualityfits.products import write_products
from qualityfits.report import QualityReport


def _parser() -> argparse.ArgumentParser:
    p = OneLineParser(
        prog="qualityfits",
        description="Assess the quality of a flat-fielded FITS image: sky, "
        "PSF FWHM and ellipticity, PSF model, star and galaxy counts.",
    )
    p.add_argument("image", help="FITS image (.fits, .fits.gz, .fits.fz; "
                   "single or multi-extension)")
    add_input_options(p)
    p.add_argument("-o", "--outdir", default=".", metavar="OUTDIR",
                   help="where to write the products (default: current "
                   "directory)")
    p.add_argument("--summary-only", action="store_true",
                   help="write only <image stem>.summary.json: no maps, "
                   "tables, pictures or archive")
    add_process_options(p)
    return p


class _Progress:
    """A tqdm bar over (extensions x steps) showing each CCD's step."""

    def __init__(self, image: str, stream: IO[str]) -> None:
        from tqdm import tqdm  # noqa: PLC0415 - only on a terminal

        # No monitor thread: `assess` starts its workers the fast way
        # (fork) only from a process without other threads.
        tqdm.monitor_interval = 0
        # Follow the terminal's width; a terminal that reports none (a
        # pseudo-terminal without a size) gets 80 x 24, not nothing.
        try:
            columns = os.get_terminal_size(stream.fileno()).columns
        except (OSError, ValueError, AttributeError):
            columns = 0
        width: dict[str, Any] = (
            {"dynamic_ncols": True} if columns > 0
            else {"ncols": 80, "nrows": 24})
        self._bar = tqdm(total=None, unit="step", file=stream,
                         desc=Path(image).name, **width,
                         bar_format="{desc}: {percentage:3.0f}%|{bar}| "
                         "{n_fmt}/{total_fmt} steps [{elapsed}<{remaining}]"
                         " {postfix}")
        self._running: dict[str, str] = {}
        self._seen: dict[str, int] = {}
        self._done = 0

    def __call__(self, event: ProgressEvent) -> None:
        if self._bar.total is None:
            self._bar.total = len(STEPS) * max(event.n_extensions, 1)
        self._seen.setdefault(event.extension, 0)
        if event.step in ("done", "failed"):
            self._running.pop(event.extension, None)
            self._done += 1
            advance = len(STEPS) - self._seen[event.extension]
        else:
            self._running[event.extension] = event.step
            advance = event.step_number - 1 - self._seen[event.extension]
        self._seen[event.extension] += max(advance, 0)
        self._bar.update(max(advance, 0))
        shown = ", ".join(f"{k}: {v}" for k, v in
                          list(self._running.items())[:4])
        self._bar.set_postfix_str(f"{self._done} CCD done; {shown}")

    def close(self) -> None:
        self._bar.close()


def _fmt(value: float, digits: int) -> str:
    if not isinstance(value, int | float) or not math.isfinite(value):
        return "-"
    if digits == 0:
        return f"{round(value)}"
    return f"{value:.{digits}f}"


def summary_text(report: QualityReport) -> str:
    """Format the readable summary table printed at the end of a run."""
    has_scale = any(math.isfinite(e.metrics.get("PIXSCALE", math.nan))
                    for e in report.extensions)
    fwhm_key, fwhm_head = (("FWHM_ARCSEC", 'FWHM"') if has_scale
                           else ("FWHM_PIX", "FWHMpx"))
    cols = [
        ("EXTNAME", None, 0), ("SKY", "SKY_MEAN", 1), ("RMS", "SKY_RMS", 2),
        (fwhm_head, fwhm_key, 3), ("ELLIP", "ELLIPTICITY", 3),
        ("BETA", "PSF_BETA", 2), ("NPSF", "NSTAR_FIT", 0),
        ("NOBJ", "NOBJ", 0), ("NSTAR", "NSTAR", 0), ("NGAL", "NGAL", 0),
        ("MLIM5", "MAGLIM_5SIG", 2),
    ]
    # Magnitudes without a zero point are instrumental: a "*" on the
    # heading when every CCD's are, else on each such value (and on the
    # median, which then mixes both), explained below the table.
    assessed = [e for e in report.extensions if e.ok]
    inst = [e.name for e in assessed if instrumental(e.metrics)]
    every = bool(inst) and len(inst) == len(assessed)
    mags = {"MAGLIM_5SIG"}

    def cell(key: str, value: float, digits: int, starred: bool) -> str:
        text = _fmt(value, digits)
        return text + "*" if starred and key in mags and text != "-" \
            else text

    rows = []
    for ext in report.extensions:
        row = [ext.name]
        for _, key, digits in cols[1:]:
            assert key is not None
            row.append(cell(key, ext.metrics.get(key, math.nan), digits,
                            not every and ext.name in inst))
        row.append(",".join(ext.flags) if ext.ok else "FAILED")
        rows.append(row)
    agg = report.exposure.metrics
    if len(report.extensions) > 1:
        row = ["median"]
        for _, key, digits in cols[1:]:
            assert key is not None
            row.append(cell(key, agg[key]["median"], digits,
                            not every and bool(inst)))
        row.append(",".join(report.exposure.flags))
        rows.append(row)
    heads = [f"{c[0]}*" if every and c[1] in mags else c[0] for c in cols]
    heads.append("QA FLAGS")
    widths = [max(len(h), *(len(r[i]) for r in rows))
              for i, h in enumerate(heads)]
    lines = ["  ".join(h.ljust(w) if i in (0, len(heads) - 1) else h.rjust(w)
                       for i, (h, w) in enumerate(zip(heads, widths,
                                                      strict=True)))]
    lines.append("  ".join("-" * w for w in widths))
    for r in rows:
        if r[0] == "median":
            lines.append("  ".join("-" * w for w in widths))
        lines.append("  ".join(
            v.ljust(w) if i in (0, len(heads) - 1) else v.rjust(w)
            for i, (v, w) in enumerate(zip(r, widths, strict=True))))
    why = instrumental_note(inst, len(assessed), "MLIM5 magnitudes",
                            marks=("*", "*"))
    if why is not None:
        lines.append(f"* {why}")
    # What each HDU of the file is (one sky image alone: nothing to say).
    roles = [h.to_dict() for h in report.hdus]
    if len(roles) > 1 or any(h["role"] != "sky image" for h in roles):
        lines.extend(hdu_lines(roles))
    lines.extend(f"FAILED {ext.name}: {ext.error.message}"
                 for ext in report.extensions if ext.error is not None)
    grade = report.exposure.grade
    why = "; ".join(grade.reasons) or "no defect found"
    lines.append(f"grade {grade.letter} ({MEANING[grade.letter]}): {why}")
    lines.extend(f"note: {n}" for n in grade.notes)
    notes = sorted({n for e in report.extensions for n in e.notes})
    lines.extend(f"note: {n}" for n in notes)
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the exit status.

    ``qualityfits run IMAGE...`` assesses a run (`qualityfits.runcli`);
    a file named ``run`` is ``./run``.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["run"]:
        from qualityfits.runcli import main as run_main  # noqa: PLC0415

        return run_main(argv[1:])
    args = _parser().parse_args(argv)
    stem = image_stem(args.image)
    # Where the workers write each CCD's maps until they are joined;
    # removed whatever happens (a failed run leaves no pieces behind).
    maps_dir = (None if args.summary_only
                else Path(args.outdir) / f".{stem}_maps.partial")
    try:
        return _run(args, stem, maps_dir)
    finally:
        if maps_dir is not None:
            shutil.rmtree(maps_dir, ignore_errors=True)


def run() -> NoReturn:
    """Run the ``qualityfits`` command: `main`, then `exit_now`."""
    exit_now(main())


def _run(args: argparse.Namespace, stem: str, maps_dir: Path | None) -> int:
    warnings.simplefilter("ignore")  # astropy header chatter
    progress = None
    if not args.no_progress and sys.stderr.isatty():
        progress = _Progress(args.image, sys.stderr)
    try:
        config = config_from_pairs(args.set)
        parameters = QualityParameters.from_text(
            {param.name: getattr(args, param.name) for param in PARAMETERS})
        outdir = Path(args.outdir)
        try:
            outdir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise QualityFitsError(
                f"cannot create output directory {outdir}: {exc.strerror}"
            ) from None
        report = assess(
            args.image, flat=args.flat, mask=args.mask, weight=args.weight,
            parameters=parameters, config=config, jobs=args.jobs,
            progress=progress, maps_dir=maps_dir,
        )
    except QualityFitsError as exc:
        if progress is not None:
            progress.close()
        print(f"qualityfits: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        if progress is not None:
            progress.close()
        print("qualityfits: interrupted", file=sys.stderr)
        return 130
    if progress is not None:
        progress.close()
    print(summary_text(report))
    if args.summary_only:
        out = outdir / f"{stem}.summary.json"
        out.write_text(json.dumps(report.to_dict(), indent=1) + "\n")
        print(f"summary written to {out}")
        return 0
    try:
        manifest = write_products(
            report, outdir, stem, maps_dir=maps_dir,
            image_header=primary_header(args.image),
            step=None if progress is None else (
                lambda name: print(f"writing products: {name}",
                                   file=sys.stderr)))
    except OSError as exc:
        print(f"qualityfits: error: cannot write the products in "
              f"{outdir}: {exc}", file=sys.stderr)
        return 1
    print(f"{len(manifest.products)} products written to {outdir}; open "
          f"{outdir / 'index.html'} in a browser")
    return 0


if __name__ == "__main__":  # pragma: no cover
    run()
