"""``qualityfits run IMAGE... -o OUT``: assess the exposures of a night.

Each image is assessed as ``qualityfits IMAGE`` would, its products
written in ``OUT/<stem>/``; then the run's tables (``run.vot``,
``run.fits``: `qualityfits.runs`), its pictures (`qualityfits.runplots`)
and its page (``OUT/index.html``) are written over all of them.  One
progress bar runs over the whole run, advancing as each CCD of each
image is done.  An image that cannot be assessed (bad input) is a row
with its error, the others go on; the exit status is then 2.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Any

from qualityfits._version import __version__
from qualityfits.cliutil import (
    OneLineParser,
    add_input_options,
    add_process_options,
    config_from_pairs,
)
from qualityfits.errors import QualityFitsError
from qualityfits.io import image_stem, primary_header
from qualityfits.parameters import PARAMETERS, QualityParameters
from qualityfits.pipeline import ProgressEvent, assess
from qualityfits.products import write_products
from qualityfits.runpage import write_run_page
from qualityfits.runplots import write_run_plots
from qualityfits.runs import RunExposure, write_run_fits, write_run_votable


def _parser() -> argparse.ArgumentParser:
    p = OneLineParser(
        prog="qualityfits run",
        description="Assess the exposures of a night (or any set): each "
        "image's products in OUTDIR/<stem>/, and the run's table, trend "
        "plots and page in OUTDIR.")
    p.add_argument("images", nargs="+", metavar="IMAGE",
                   help="FITS images of the run")
    p.add_argument("-o", "--outdir", required=True, metavar="OUTDIR",
                   help="where to write the run")
    p.add_argument("--run-id", metavar="NAME",
                   help="the run's name (default: OUTDIR's name)")
    add_input_options(p, every="(for every image)")
    add_process_options(p)
    return p


class RunProgress:
    """One tqdm bar over the images, advanced by each CCD finished."""

    def __init__(self, n_images: int, stream: IO[str]) -> None:
        from tqdm import tqdm  # noqa: PLC0415 - only on a terminal

        tqdm.monitor_interval = 0
        self._bar = tqdm(total=n_images, file=stream, unit="image",
                         desc="run", bar_format="{desc}: {percentage:3.0f}%"
                         "|{bar}| {postfix} [{elapsed}<{remaining}]")
        self._image = ""
        self._ccds: set[str] = set()
        self._image_done = 0.0  # of the current image
        self.done = 0.0  #: images done, fractions of the current one

    def start(self, image: str) -> None:
        """Begin an image (its CCD count comes with its first event)."""
        self._image = image
        self._ccds = set()
        self._image_done = 0.0
        self._bar.set_postfix_str(image)

    def __call__(self, event: ProgressEvent) -> None:
        """Advance by a CCD as it ends (the pipeline's progress)."""
        n_ccds = max(event.n_extensions, 1)
        if event.step in ("done", "failed") and \
                event.extension not in self._ccds:
            self._ccds.add(event.extension)
            self._advance(1.0 / n_ccds)
        self._bar.set_postfix_str(
            f"{self._image}: {len(self._ccds)}/{n_ccds} CCDs")

    def finish_image(self) -> None:
        """Complete the image (refused before its CCDs ended, say)."""
        self._advance(1.0 - self._image_done)

    def _advance(self, amount: float) -> None:
        amount = max(0.0, min(amount, 1.0 - self._image_done))
        self._image_done += amount
        self.done += amount
        self._bar.update(amount)

    def close(self) -> None:
        """Close the bar."""
        self._bar.close()


def _assess_one(image: str, outdir: Path, args: argparse.Namespace,
                settings: tuple[Any, QualityParameters],
                progress: RunProgress | None) -> RunExposure:
    config, parameters = settings
    stem = image_stem(image)
    folder = outdir / stem
    maps_dir = outdir / f".{stem}_maps.partial"
    if progress is not None:
        progress.start(Path(image).name)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        report = assess(image, flat=args.flat, mask=args.mask,
                        weight=args.weight,
                        parameters=parameters, config=config,
                        jobs=args.jobs, progress=progress,
                        maps_dir=maps_dir)
        write_products(report, folder, stem, maps_dir=maps_dir,
                       image_header=primary_header(image))
    except QualityFitsError as exc:
        return RunExposure(Path(image).name, None, phase="ERROR",
                           error=str(exc))
    finally:
        shutil.rmtree(maps_dir, ignore_errors=True)
        if progress is not None:
            progress.finish_image()
    return RunExposure(Path(image).name, report.to_dict(),
                       link=f"{stem}/index.html")


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``qualityfits run``; return the exit status."""
    args = _parser().parse_args(argv)
    warnings.simplefilter("ignore")  # astropy header chatter
    outdir = Path(args.outdir)
    run_id = args.run_id or outdir.resolve().name
    try:
        settings = (config_from_pairs(args.set), QualityParameters.from_text(
            {param.name: getattr(args, param.name) for param in PARAMETERS}))
        outdir.mkdir(parents=True, exist_ok=True)
    except QualityFitsError as exc:
        print(f"qualityfits run: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"qualityfits run: error: cannot create {outdir}: "
              f"{exc.strerror}", file=sys.stderr)
        return 2
    stems = [image_stem(i) for i in args.images]
    if len(set(stems)) < len(stems):
        print("qualityfits run: error: two images have the same name "
              "(their products would share a folder)", file=sys.stderr)
        return 2
    progress = None
    if not args.no_progress and sys.stderr.isatty():
        progress = RunProgress(len(args.images), sys.stderr)
    exposures = []
    try:
        for image in args.images:
            exposure = _assess_one(image, outdir, args, settings, progress)
            exposures.append(exposure)
            grade = exposure.grade
            line = (f"{exposure.image}: grade {grade.get('letter')}"
                    + (f" ({'; '.join(grade.get('reasons', ()))})"
                       if grade.get("reasons") else "")
                    if exposure.summary is not None
                    else f"{exposure.image}: error: {exposure.error}")
            print(line)
    except KeyboardInterrupt:
        if progress is not None:
            progress.close()
        print("qualityfits run: interrupted", file=sys.stderr)
        return 130
    if progress is not None:
        progress.close()
    versions = {"qualityfits": __version__}
    write_run_votable(run_id, exposures, versions, outdir / "run.vot")
    write_run_fits(run_id, exposures, versions, outdir / "run.fits")
    plots = write_run_plots(exposures, outdir)
    write_run_page(run_id, exposures, plots, outdir / "index.html",
                   ("run.vot", "run.fits"))
    failed = [e for e in exposures if e.summary is None]
    print(f"run {run_id}: {len(exposures) - len(failed)} of "
          f"{len(exposures)} exposures assessed; open "
          f"{outdir / 'index.html'} in a browser")
    return 2 if failed else 0

