"""Real frames of instruments not in ../shared/data: every run must end well.

``python benchmarks/external_frames.py DIR [--reference] [--files SUBSTR,..]
[--json FILE]`` assesses each file of ``external_frames.tsv`` found in
``DIR`` (`qualityfits.assess`, defaults, one process) and prints one line
per file: the outcome (a report, or the code and line of a refusal),
FWHM_PIX, the PSF stars, the QA flags; with ``--reference``, PSFEx's
pixel-free FWHM on the same file (`terapix.run_reference`).  A run that
ends in anything but a report or a `QualityFitsError` other than an
internal error is a CRASH: exit status 1.

The files are public test and sample data of 24 repositories
(Python packages, observatory pipelines, courses, viewers: telescopes
from 0.4 m to HST and JWST, photographic plates, CMOS and colour
sensors; cut-outs, raw and reduced frames, masks, weights).  The project
ships none of them (`docs/metrics.md`, "Real data"): each row of the
table names its repository, commit, path and licence (only files under
an open licence are listed).  ``--commands`` prints the shell commands
that fetch them into ``DIR`` with git.

Results: ``benchmarks/README.md``, "Frames of other instruments".
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import sys
import traceback
import warnings
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
TABLE = HERE / "external_frames.tsv"


def frames() -> list[dict[str, str]]:
    """The rows of `TABLE`."""
    with TABLE.open(newline="") as f:
        return list(csv.DictReader(f, delimiter="\t"))


def fetch_commands(rows: list[dict[str, str]], folder: str) -> list[str]:
    """Shell commands that put each file of ``rows`` in ``folder``."""
    lines = [f"mkdir -p {folder}"]
    for repo in sorted({r["repository"] for r in rows}):
        local = f"{folder}/.repos/" + repo.replace("/", "+")
        lines.append(f"git clone -q --filter=blob:none --no-checkout "
                     f"https://github.com/{repo} {local}")
        lines.extend(
            f"git -C {local} show {r['commit']}:'{r['path']}' > "
            f"{folder}/{r['file']}" for r in rows
            if r["repository"] == repo)
    return lines


def _fmt(value: Any, digits: int = 3) -> str:
    if isinstance(value, float) and math.isfinite(value):
        return f"{value:.{digits}f}"
    return "-"


def assess_one(path: Path, reference: bool) -> dict[str, Any]:
    """Assess ``path``; classify the outcome."""
    import qualityfits  # noqa: PLC0415 - after argument parsing
    from qualityfits.errors import InternalError, QualityFitsError  # noqa: PLC0415

    row: dict[str, Any] = {"file": path.name}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            report = qualityfits.assess(path, jobs=1)
    except InternalError as exc:
        row.update(outcome="CRASH", detail=str(exc))
        return row
    except QualityFitsError as exc:
        row.update(outcome=f"refused ({exc.code})", detail=str(exc))
        return row
    except Exception:  # noqa: BLE001 - what the sweep is looking for
        row.update(outcome="CRASH", detail=traceback.format_exc(limit=3))
        return row
    ok = [e for e in report.extensions if e.ok]
    first = ok[0] if ok else report.extensions[0]
    row.update(
        outcome=f"report ({len(ok)}/{len(report.extensions)} CCDs)",
        fwhm=float(first.metrics.get("FWHM_PIX", math.nan)),
        psf_stars=float(first.metrics.get("NSTAR_FIT", math.nan)),
        flags=",".join(first.flags),
        detail=first.name)
    if reference:
        if str(HERE) not in sys.path:
            sys.path.insert(0, str(HERE))
        import terapix  # noqa: PLC0415 - needs benchmarks/ on sys.path

        try:
            ref = terapix.run_reference(path)
            match = [e for e in ref.extensions if e.name == first.name]
            if match:
                row["psfex"] = float(match[0].psfex.get(
                    "FWHM_PixelFree_Mean", math.nan))
        except Exception as exc:  # noqa: BLE001 - the reference may fail
            row["psfex_error"] = str(exc).splitlines()[0][:80]
    return row


def main(argv: list[str] | None = None) -> int:
    """Run the sweep; 1 on a crash, 2 on a wrong command line."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("folder", type=Path,
                        help="where the files of external_frames.tsv are")
    parser.add_argument("--files", default="",
                        help="comma-separated parts of file names")
    parser.add_argument("--reference", action="store_true",
                        help="also run SExtractor + PSFEx on each file")
    parser.add_argument("--commands", action="store_true",
                        help="print the git commands that fetch the files "
                             "into FOLDER, and stop")
    parser.add_argument("--json", type=Path, help="write the rows here")
    args = parser.parse_args(argv)
    wanted = [s for s in args.files.split(",") if s]
    rows = [r for r in frames()
            if not wanted or any(s in r["file"] for s in wanted)]
    if args.commands:
        print("\n".join(fetch_commands(rows, str(args.folder))))
        return 0
    present = [r for r in rows if (args.folder / r["file"]).is_file()]
    if not present:
        print(f"external_frames: none of the {len(rows)} files is in "
              f"{args.folder} (--commands prints how to fetch them)",
              file=sys.stderr)
        return 2
    out = []
    print(f"{'file':48s} {'instrument':22s} {'outcome':22s} {'FWHM':>6s} "
          f"{'PSFEx':>6s} {'PSF*':>5s} flags / refusal")
    for r in present:
        row = assess_one(args.folder / r["file"], args.reference)
        row["instrument"] = r["instrument"]
        out.append(row)
        tail = (row.get("flags", "") if row["outcome"].startswith("report")
                else row["detail"].split(": ", 1)[-1])
        print(f"{r['file'][:48]:48s} {r['instrument'][:22]:22s} "
              f"{row['outcome'][:22]:22s} {_fmt(row.get('fwhm')):>6s} "
              f"{_fmt(row.get('psfex')):>6s} "
              f"{_fmt(row.get('psf_stars'), 0):>5s} {tail[:110]}",
              flush=True)
    crashes = sum(row["outcome"] == "CRASH" for row in out)
    print(f"\n{len(out)} files of {len(rows)} ({len(rows) - len(out)} "
          f"absent), {crashes} crashes")
    if args.json:
        args.json.write_text(json.dumps(out, indent=1))
    return 1 if crashes else 0


if __name__ == "__main__":
    sys.exit(main())
