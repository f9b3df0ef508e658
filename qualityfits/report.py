"""The result of an assessment: a frozen, typed `QualityReport`.

A report holds one `ExtensionReport` per image extension (each CCD) and
an `ExposureReport` aggregating them.  ``to_dict()`` gives the JSON
summary (metrics, flags, maps, histograms, counts; not the per-source
catalogues), ``to_table()`` an astropy Table with one row per extension.
Per-source and per-star catalogues are astropy Tables on each extension.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from astropy.table import Table
from numpy.typing import NDArray

from qualityfits.background import Background
from qualityfits.classify import Counts
from qualityfits.config import QualityConfig
from qualityfits.grades import Grade
from qualityfits.io import HduRole
from qualityfits.metrics import METRIC_BY_NAME, METRICS
from qualityfits.psf import PsfGrid, PsfModel


def _json(value: Any) -> Any:
    """Turn numpy values and arrays into JSON-friendly ones (NaN → None)."""
    if isinstance(value, np.ndarray):
        return [_json(v) for v in value.tolist()]
    if isinstance(value, list | tuple):
        return [_json(v) for v in value]
    if isinstance(value, Mapping):
        return {str(k): _json(v) for k, v in value.items()}
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


class FrozenMap(Mapping[str, Any]):
    """An immutable mapping that pickles (reports cross processes)."""

    __slots__ = ("_data",)

    def __init__(self, data: Mapping[str, Any] | None = None) -> None:
        """Copy ``data``."""
        self._data = dict(data or {})

    def __getitem__(self, key: str) -> Any:
        """Return the value of ``key``."""
        return self._data[key]

    def __iter__(self) -> Iterator[str]:
        """Iterate over the keys."""
        return iter(self._data)

    def __len__(self) -> int:
        """Return the number of keys."""
        return len(self._data)

    def __repr__(self) -> str:
        """Show the content."""
        return f"FrozenMap({self._data!r})"

    def __reduce__(self) -> tuple[type[FrozenMap], tuple[dict[str, Any]]]:
        """Pickle as the plain dictionary it wraps."""
        return (FrozenMap, (self._data,))


def _readonly(mapping: Mapping[str, Any]) -> Mapping[str, Any]:
    return FrozenMap(mapping)


@dataclass(frozen=True)
class Preview:
    """Binned pictures of one CCD's data section, for the previews.

    Attributes
    ----------
    image : ndarray of float32
        Mean of the usable pixels in each ``binning`` x ``binning``
        block, row 0 at the bottom of the CCD (FITS order); NaN where
        no pixel of the block is usable.
    weight : ndarray of float32
        Mean weight of each block (0 where every pixel is flagged).
    binning : int
        Pixels per block side.
    weight_source : str
        ``"flat"`` (the master flat) or ``"rms"`` (the background RMS
        map: no flat was given).
    """

    image: NDArray[np.float32]
    weight: NDArray[np.float32]
    binning: int
    weight_source: str


@dataclass(frozen=True)
class ErrorInfo:
    """Why an extension could not be assessed."""

    type: str
    code: str
    message: str


@dataclass(frozen=True)
class ExtensionReport:
    """The assessment of one image extension (one CCD).

    Attributes
    ----------
    index : int
        HDU index in the input file.
    name : str
        EXTNAME (or PRIMARY / HDU<n>).
    shape : tuple of int
        (ny, nx) of the data section assessed.
    status : str
        ``"ok"`` or ``"failed"``.
    error : ErrorInfo or None
        Why it failed; metrics measured before the failure are kept.
    metrics : Mapping
        Metric name → value (NaN when not measured); see
        `qualityfits.metrics.METRICS`.
    flags : tuple of str
        QA flags raised.
    notes : tuple of str
        What the reader should know (pixel scale unknown, ...).
    background : Background or None
    psf_grid, psf_model : PsfGrid, PsfModel or None
    psf_stars : astropy.table.Table or None
        Per-star pixel-free measurements (positions 1-based).
    sources : astropy.table.Table or None
        Every source with its class (positions 1-based).
    counts : Counts or None
    preview : Preview or None
        Binned image and weight (for the PNG previews).
    timings : Mapping
        Seconds per processing step.
    """

    index: int
    name: str
    shape: tuple[int, int]
    status: str
    error: ErrorInfo | None = None
    metrics: Mapping[str, float] = field(default_factory=dict)
    flags: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()
    background: Background | None = None
    psf_grid: PsfGrid | None = None
    psf_model: PsfModel | None = None
    psf_stars: Table | None = None
    sources: Table | None = None
    counts: Counts | None = None
    preview: Preview | None = None
    timings: Mapping[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        """Freeze the mappings."""
        object.__setattr__(self, "metrics", _readonly(self.metrics))
        object.__setattr__(self, "timings", _readonly(self.timings))

    @property
    def ok(self) -> bool:
        """True when the extension was assessed."""
        return self.status == "ok"

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly summary of this extension."""
        out: dict[str, Any] = {
            "index": self.index,
            "name": self.name,
            "shape": list(self.shape),
            "status": self.status,
            "error": None if self.error is None else {
                "type": self.error.type, "code": self.error.code,
                "message": self.error.message,
            },
            "metrics": dict(self.metrics),
            "flags": list(self.flags),
            "notes": list(self.notes),
            "timings": dict(self.timings),
        }
        if self.background is not None:
            b = self.background
            out["background"] = {
                "mesh_x": b.mesh_x + 1, "mesh_y": b.mesh_y + 1,
                "mesh_back": b.mesh_back, "mesh_rms": b.mesh_rms,
                "hist_edges": b.hist_edges, "hist_counts": b.hist_counts,
            }
        if self.psf_grid is not None:
            g = self.psf_grid
            out["psf_map"] = {
                "x": g.x + 1, "y": g.y + 1, "fwhm": g.fwhm,
                "ellipticity": g.ellipticity, "theta": g.theta,
                "e1": g.e1, "e2": g.e2, "nstars": g.nstars,
            }
        if self.psf_model is not None:
            m = self.psf_model
            out["psf_model"] = {
                "oversampling": m.oversampling, "fwhm": m.fwhm,
                "fwhm_pixel_free": m.fwhm_pixel_free, "beta": m.beta,
                "ellipticity": m.ellipticity, "residual": m.residual,
                "asymmetry": m.asymmetry, "area": m.area,
                "nstars": m.nstars, "size": list(m.image.shape),
            }
        if self.psf_stars is not None:
            out["psf_star_fwhm"] = np.asarray(self.psf_stars["FWHM"])
        if self.counts is not None:
            c = self.counts
            out["counts"] = {
                "mag_edges": c.mag_edges, "nstar": c.nstar, "ngal": c.ngal,
                "nstar_per_deg2": c.nstar_per_deg2,
                "ngal_per_deg2": c.ngal_per_deg2,
            }
        return _json(out)


@dataclass(frozen=True)
class ExposureReport:
    """The aggregate over the CCDs of an exposure.

    Attributes
    ----------
    metrics : Mapping
        For each metric, a mapping with ``median``, ``min`` and ``max``
        over the assessed CCDs.
    flags : tuple of str
        Exposure-level QA flags.
    ccd_flags : Mapping
        QA flag → names of the CCDs that raised it.
    placement : str
        How CCDs were placed in the mosaic: ``"wcs"`` (tangent-plane
        offsets in arcmin), ``"detsec"`` (detector pixels) or ``"none"``.
    mosaic_psf : astropy.table.Table
        The PSF map cells of every CCD in mosaic coordinates: EXTNAME,
        X, Y, FWHM (px), ELLIPTICITY, THETA (deg, in the mosaic frame),
        NSTARS.
    layout : astropy.table.Table
        Where each CCD lies in that frame, one row per extension (failed
        ones too): EXTNAME, NAXIS1, NAXIS2 (data section), and the mosaic
        coordinates of three outer corners of its data section: X00,
        Y00 (corner of the first pixel), X10, Y10 (end of the first
        row), X01, Y01 (start of the last row).
    grade : Grade
        The exposure's grade, A to D, with its reasons
        (`qualityfits.grades`).
    """

    metrics: Mapping[str, Mapping[str, float]]
    flags: tuple[str, ...]
    ccd_flags: Mapping[str, tuple[str, ...]]
    placement: str
    mosaic_psf: Table
    layout: Table
    grade: Grade

    def __post_init__(self) -> None:
        """Freeze the mappings."""
        object.__setattr__(self, "metrics", _readonly(
            {k: _readonly(v) for k, v in self.metrics.items()}))
        object.__setattr__(self, "ccd_flags", _readonly(self.ccd_flags))

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly summary of the exposure."""
        return _json({
            "metrics": {k: dict(v) for k, v in self.metrics.items()},
            "flags": list(self.flags),
            "grade": self.grade.to_dict(),
            "ccd_flags": {k: list(v) for k, v in self.ccd_flags.items()},
            "placement": self.placement,
            "mosaic_psf": {
                name: np.asarray(self.mosaic_psf[name])
                for name in self.mosaic_psf.colnames
            },
            "layout": {
                name: np.asarray(self.layout[name])
                for name in self.layout.colnames
            },
        })


@dataclass(frozen=True)
class QualityReport:
    """The quality assessment of an image.

    Attributes
    ----------
    image : str
        The input's name.
    extensions : tuple of ExtensionReport
        One per image extension, in file order.
    exposure : ExposureReport
        Aggregate over the extensions that were assessed.
    config : QualityConfig
        The configuration used.
    parameters : Mapping
        The inputs: flat, mask, zeropoint, pixscale as given.
    versions : Mapping
        Software versions.
    observation : Mapping
        When, through which filter, how long and at what airmass the
        exposure was taken, as its header says
        (`qualityfits.observation.observation`; None where it does not).
    hdus : tuple of HduRole
        Every HDU of the image file with its role (sky image, mask,
        weight, ...) and why (`qualityfits.io.hdu_roles`); only the sky
        images are in ``extensions``.
    """

    image: str
    extensions: tuple[ExtensionReport, ...]
    exposure: ExposureReport
    config: QualityConfig
    parameters: Mapping[str, Any]
    versions: Mapping[str, str]
    observation: Mapping[str, Any] = field(default_factory=dict)
    hdus: tuple[HduRole, ...] = ()

    def __post_init__(self) -> None:
        """Freeze the mappings."""
        object.__setattr__(self, "parameters", _readonly(self.parameters))
        object.__setattr__(self, "versions", _readonly(self.versions))
        object.__setattr__(self, "observation",
                           _readonly(self.observation))

    @property
    def failed(self) -> tuple[ExtensionReport, ...]:
        """Extensions that could not be assessed."""
        return tuple(e for e in self.extensions if not e.ok)

    def to_dict(self) -> dict[str, Any]:
        """Return the whole summary as JSON-friendly data."""
        return _json({
            "image": self.image,
            "versions": dict(self.versions),
            "parameters": dict(self.parameters),
            "observation": dict(self.observation),
            "config": self.config.to_dict(),
            "n_extensions": len(self.extensions),
            "n_failed": len(self.failed),
            "hdus": [h.to_dict() for h in self.hdus],
            "exposure": self.exposure.to_dict(),
            "extensions": [e.to_dict() for e in self.extensions],
        })

    def to_table(self) -> Table:
        """One row per extension: identification, every metric, flags."""
        table = Table()
        table["EXTNAME"] = [e.name for e in self.extensions]
        table["HDU"] = np.array([e.index for e in self.extensions],
                                dtype=np.int32)
        table["STATUS"] = [e.status for e in self.extensions]
        table["NAXIS1"] = np.array([e.shape[1] for e in self.extensions],
                                   dtype=np.int32)
        table["NAXIS2"] = np.array([e.shape[0] for e in self.extensions],
                                   dtype=np.int32)
        for metric in METRICS:
            values = [e.metrics.get(metric.name, math.nan)
                      for e in self.extensions]
            if metric.integer:
                col = np.array([-1 if not math.isfinite(v) else int(v)
                                for v in values], dtype=np.int32)
            else:
                col = np.array(values, dtype=np.float64)
            table[metric.name] = col
            table[metric.name].unit = metric.unit or None
            table[metric.name].description = metric.description
        table["QA_FLAGS"] = [",".join(e.flags) for e in self.extensions]
        table["ERROR"] = [
            "" if e.error is None else e.error.message
            for e in self.extensions
        ]
        table.meta["IMAGE"] = self.image
        return table


def metric_unit(name: str) -> str:
    """Return the unit of a metric (empty when dimensionless)."""
    return METRIC_BY_NAME[name].unit
