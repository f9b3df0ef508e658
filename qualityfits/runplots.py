"""The pictures of a run: quality against time, and every CCD's FWHM.

`write_run_plots` draws, for the exposures of a run
(`qualityfits.runs.RunExposure`):

* ``run_trends.png``: four panels sharing the time axis (hours of UTC
  from the first exposure's date, or the exposure's rank when the
  headers give no time): the FWHM (arcsec when every exposure has a
  pixel scale, else pixels), the ellipticity, the sky brightness
  (mag/arcsec², or ADU without a zero point) and the 5σ depth; one point
  per exposure at its median, coloured by its grade, with a bar from
  the CCDs' minimum to maximum;
* ``run_ccd_fwhm.png``: the focal-plane strip, one line per exposure and
  one column per CCD, coloured by the CCD's FWHM relative to that
  exposure's median (the night's seeing taken out, a drifting or
  tilted CCD stands out as a column), on the diverging scale of the PSF
  FWHM map (`qualityfits.plots.psf_map_scale`).

Both return `qualityfits.plots.Plot` records; nothing is drawn for an
empty run.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Final

import numpy as np

from qualityfits.plots import (
    Plot,
    _figure_rgb,
    _imsave,
    _new_figure,
    psf_map_scale,
)
from qualityfits.runs import RunExposure, in_time_order

if TYPE_CHECKING:
    from matplotlib.axes import Axes

#: Colour of each grade's points (none: not graded).
GRADE_COLOURS: Final = {"A": "#1a7f37", "B": "#4d7314", "C": "#9a5800",
                        "D": "#b42318", "": "0.5"}


def _time_axis(exposures: Sequence[RunExposure]) -> tuple[np.ndarray, str]:
    """Return x values and their label: hours of UTC, or the rank."""
    mjd = np.array([e.mjd for e in exposures])
    if mjd.size and np.isfinite(mjd).all():
        day = math.floor(float(mjd.min()))
        from astropy.time import Time  # noqa: PLC0415

        date = Time(day, format="mjd").iso[:10]
        return (mjd - day) * 24.0, f"UTC hours from {date} 00:00"
    return np.arange(1, len(exposures) + 1, dtype=float), \
        "exposure (the headers give no time)"


def _panel(ax: Axes, x: np.ndarray, exposures: Sequence[RunExposure],
           metric: str, label: str, min_span: float, *,
           invert: bool = False) -> None:
    med = np.array([e.median(metric) for e in exposures])
    lo = np.array([e.median(metric, "min") for e in exposures])
    hi = np.array([e.median(metric, "max") for e in exposures])
    ax.set_ylabel(label)
    ax.grid(visible=True, alpha=0.3)
    good = np.isfinite(med)
    if not good.any():
        ax.text(0.5, 0.5, "not measured", transform=ax.transAxes,
                ha="center", va="center", color="0.4")
        return
    spread = np.isfinite(lo) & np.isfinite(hi) & good
    ax.vlines(x[spread], lo[spread], hi[spread], color="0.6", lw=1.5)
    colours = [GRADE_COLOURS.get(str(e.grade.get("letter", "")), "0.5")
               for e in exposures]
    ax.scatter(x[good], med[good], c=[c for c, g in zip(colours, good,
                                                         strict=True) if g],
               s=28, zorder=3, edgecolors="black", linewidths=0.4)
    ax.ticklabel_format(axis="y", useOffset=False)
    # A steady night stays a flat line, not noise blown up to the axis.
    values = np.concatenate([med[good], lo[spread], hi[spread]])
    low, high = float(values.min()), float(values.max())
    if high - low < min_span:
        centre = (low + high) / 2
        ax.set_ylim(centre - min_span / 2, centre + min_span / 2)
    if invert:
        ax.invert_yaxis()


def _all(exposures: Sequence[RunExposure], metric: str) -> bool:
    return all(math.isfinite(e.median(metric)) for e in exposures
               if e.summary is not None)


def write_trends(exposures: Sequence[RunExposure], path: Path) -> Plot:
    """Draw the quality of each exposure against time."""
    exposures = in_time_order(exposures)
    x, xlabel = _time_axis(exposures)
    fig = _new_figure()
    fig.set_size_inches(8.0, 8.5)
    axes = fig.subplots(4, 1, sharex=True)
    if _all(exposures, "FWHM_ARCSEC"):
        _panel(axes[0], x, exposures, "FWHM_ARCSEC", "FWHM [arcsec]", 0.2)
    else:
        _panel(axes[0], x, exposures, "FWHM_PIX", "FWHM [pix]", 1.0)
    _panel(axes[1], x, exposures, "ELLIPTICITY", "ellipticity", 0.02)
    if _all(exposures, "SKY_MAG"):
        _panel(axes[2], x, exposures, "SKY_MAG", "sky [mag/arcsec²]", 0.2,
               invert=True)
    else:
        _panel(axes[2], x, exposures, "SKY_MEAN", "sky [ADU]", 0.0)
    _panel(axes[3], x, exposures, "MAGLIM_5SIG", "5σ depth [mag]", 0.2)
    axes[3].set_xlabel(xlabel)
    handles = [axes[0].scatter([], [], c=colour, s=28, edgecolors="black",
                               linewidths=0.4, label=letter)
               for letter, colour in GRADE_COLOURS.items() if letter]
    axes[0].legend(handles=handles, title="grade", ncols=4, fontsize=8,
                   title_fontsize=8, loc="best")
    fig.suptitle(f"Quality of the run's {len(exposures)} exposures "
                 "(median over the CCDs, bar: min to max)")
    fig.tight_layout()
    description = ("Run trends: FWHM, ellipticity, sky brightness and "
                   "depth of each exposure against time")
    _imsave(path, _figure_rgb(fig), description)
    return Plot("run_trends", path, description)


def write_ccd_strip(exposures: Sequence[RunExposure], path: Path) -> Plot:
    """Draw every CCD's FWHM relative to its exposure's median."""
    from matplotlib import colormaps  # noqa: PLC0415
    from matplotlib.colors import Normalize  # noqa: PLC0415

    exposures = [e for e in in_time_order(exposures) if e.ccds]
    names: list[str] = []
    for e in exposures:
        for ccd in e.ccds:
            if ccd.get("name") not in names:
                names.append(str(ccd.get("name")))
    rel = np.full((len(exposures), len(names)), np.nan)
    for i, e in enumerate(exposures):
        median = e.median("FWHM_PIX")
        for ccd in e.ccds:
            value = ccd.get("metrics", {}).get("FWHM_PIX")
            if value is not None and median > 0:
                rel[i, names.index(str(ccd.get("name")))] = value / median
    _, span = psf_map_scale(rel)
    fig = _new_figure()
    fig.set_size_inches(max(5.0, 1.6 + 0.28 * len(names)),
                        max(2.6, 1.4 + 0.3 * len(exposures)))
    ax = fig.add_subplot()
    shown = np.ma.masked_invalid((rel - 1.0) * 100.0)
    # A copy with grey for the masked cells (set_bad is going away).
    cmap = colormaps["RdBu_r"].with_extremes(bad="0.85")
    image = ax.imshow(shown, cmap=cmap, aspect="auto",
                      norm=Normalize(-span, span), interpolation="nearest")
    ax.set_xticks(range(len(names)), names, rotation=90 if len(names) > 6
                  else 0, fontsize=8)
    ax.set_yticks(range(len(exposures)),
                  [e.image if len(e.image) <= 28 else e.image[:27] + "…"
                   for e in exposures], fontsize=8)
    ax.set_xlabel("CCD")
    bar = fig.colorbar(image, ax=ax)
    bar.set_label("FWHM − exposure median [%]")
    ax.set_title("Per-CCD FWHM of each exposure (grey: not measured)",
                 fontsize=10)
    fig.tight_layout()
    description = ("Focal-plane strip: each CCD's FWHM against its "
                   "exposure's median, one line per exposure")
    _imsave(path, _figure_rgb(fig), description)
    return Plot("run_ccd_fwhm", path, description)


def write_run_plots(exposures: Sequence[RunExposure],
                    outdir: Path) -> list[Plot]:
    """Write both pictures of a run in ``outdir`` (none when empty)."""
    done = [e for e in exposures if e.summary is not None]
    if not done:
        return []
    return [write_trends(exposures, outdir / "run_trends.png"),
            write_ccd_strip(done, outdir / "run_ccd_fwhm.png")]
