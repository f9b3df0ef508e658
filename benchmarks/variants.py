"""Real frames altered as users' files differ: outcomes and invariances.

``python benchmarks/variants.py [--files SUBSTR,..] [--variants NAME,..]
[--json FILE]`` rewrites every image file of ``../shared/data`` (its
first two-dimensional image HDU, as a single-image file) in each of the
ways of `VARIANTS` and assesses it (`qualityfits.assess`, defaults, one
process).  Each run must end in a report or in a `QualityFitsError`
that is not an internal error (exit 2 and one line on the command
line): anything else is a CRASH.  For the variants that change nothing
a measurement should see (``exact``: the frame times 2^-40, 2^-13,
2^13 or 2^40 (~1e-12 to 1e12, powers of two so that the float32 values
stay exact; its gains divided by the factor), in float64, as a
one-plane cube, GZIP_2-compressed without quantisation) it also
compares the counts, FWHM and ellipticity with the unaltered frame's,
and the sky metrics after the scale: a difference is a VIOLATION.  For
the frame times 1e-4 (every value rounded), rotations, flips and a
pedestal (``near``) it prints the differences
without judging them (the background meshes and samples move with
the pixels).  Exit status 1 if any crash or violation.

Not a timing: run it under ``nice``; ~6 min for every file and variant.
Results: ``benchmarks/README.md``, "Altered real frames".
"""

from __future__ import annotations

import argparse
import gzip
import json
import math
import shutil
import sys
import tempfile
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from astropy.io import fits

HERE = Path(__file__).resolve().parent
DATA = HERE.parent.parent / "shared" / "data"

#: Counts compared exactly, and values compared within `_REL` / `_ABS`.
COUNTS = ("NOBJ", "NSTAR", "NGAL", "NCR", "NSTAR_PSF")
_REL = {"FWHM_PIX": 1e-3, "FWHM_RH": 1e-3, "PSF_BETA": 1e-3}
_ABS = {"ELLIPTICITY": 1e-4}
#: Sky metrics, compared after the scale within this relative tolerance
#: (sep's background histograms bin integer-valued frames, KPNO's, a
#: little differently once the scale's rounding moves the values: 0.5 %).
_SKY = ("SKY_MEAN", "SKY_RMS")
_SKY_REL = 0.01
SHOWN = ("NSTAR", "NGAL", "NCR", "FWHM_PIX", "ELLIPTICITY", "SKY_RMS")

Maker = Callable[[np.ndarray, fits.Header], list[Any]]


@dataclass(frozen=True)
class Variant:
    """One way a user's file may differ from the frame as published."""

    name: str
    kind: str  # "exact", "near" or "robust"
    make: Maker
    scale: float = 1.0  # what the sky metrics are multiplied by


def _primary(data: np.ndarray, header: fits.Header) -> list[Any]:
    return [fits.PrimaryHDU(data, header)]


def _scaled(factor: float) -> Maker:
    """The frame in another unit: its levels times ``factor``, its gains
    (electrons per unit) over it; the read noise stays in electrons."""
    def make(d: np.ndarray, h: fits.Header) -> list[Any]:
        h = h.copy()
        for key in ("SATURATE", "SATLEVEL"):
            if _number(h.get(key)):
                h[key] = h[key] * factor
        for key in ("GAIN", "EGAIN", "CCDGAIN", "GAINA", "GAINB"):
            if _number(h.get(key)):
                h[key] = h[key] / factor
        return _primary((d * factor).astype(np.float32), h)
    return make


def _offset(d: np.ndarray, h: fits.Header, level: float) -> list[Any]:
    """A pedestal of ``level`` added to the frame and its saturation."""
    h = h.copy()
    for key in ("SATURATE", "SATLEVEL"):
        if _number(h.get(key)):
            h[key] = h[key] + level
    return _primary((d + level).astype(np.float32), h)


def _number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _edit(d: np.ndarray, h: fits.Header, how: str) -> list[Any]:
    d = d.copy()
    ny, nx = d.shape
    if how == "nanborder":
        d[: ny // 8] = np.nan
        d[-(ny // 8):] = np.nan
        d[:, : nx // 8] = np.nan
    elif how == "deadthird":
        d[:, : nx // 3] = 0.0
    elif how == "infcross":
        d[:, nx // 2] = np.inf
        d[ny // 2, :] = -np.inf
    elif how == "negsky":
        med = float(np.nanmedian(d))
        d -= med + 5.0 * 1.4826 * float(np.nanmedian(np.abs(d - med)))
    return _primary(d.astype(np.float32), h)


def _keys(d: np.ndarray, h: fits.Header, values: dict[str, Any]
          ) -> list[Any]:
    h = h.copy()
    h.update(values)
    return _primary(d.astype(np.float32), h)


def _integer(d: np.ndarray, h: fits.Header, dtype: str) -> list[Any]:
    finite = d[np.isfinite(d)]
    if dtype == "uint8":
        lo, hi = np.percentile(finite, [1, 99.9])
        span = hi - lo if hi > lo else 1.0  # a constant frame stays one
        u8 = np.clip(np.round((d - lo) / span * 255), 0, 255)
        return _primary(np.nan_to_num(u8).astype(np.uint8), h)
    i16 = np.clip(np.round(d - np.median(finite)), -32000, 32000)
    i16 = np.nan_to_num(i16, nan=-32768)
    i16[: d.shape[0] // 5] = -32768
    h = h.copy()
    h["BLANK"] = -32768
    return _primary(i16.astype(np.int16), h)


def _compressed(kind: str, **kw: Any) -> Maker:
    def make(d: np.ndarray, h: fits.Header) -> list[Any]:
        return [fits.PrimaryHDU(), fits.CompImageHDU(
            d.astype(np.float32), h, compression_type=kind, **kw)]
    return make


def _cut(size: int) -> Maker:
    def make(d: np.ndarray, h: fits.Header) -> list[Any]:
        ny, nx = d.shape
        y, x = ny // 2 - size // 2, nx // 2 - size // 2
        return _primary(
            np.ascontiguousarray(d[y:y + size, x:x + size]).astype(
                np.float32), h)
    return make


def _array(f: Callable[[np.ndarray], np.ndarray]) -> Maker:
    def make(d: np.ndarray, h: fits.Header) -> list[Any]:
        return _primary(np.ascontiguousarray(f(d)).astype(np.float32), h)
    return make


VARIANTS: tuple[Variant, ...] = (
    # Powers of two: the scaled float32 values are exact, so that any
    # difference is the pipeline's (1e-4 below rounds every value).
    Variant("x2^-40", "exact", _scaled(2.0 ** -40), 2.0 ** -40),
    Variant("x2^-13", "exact", _scaled(2.0 ** -13), 2.0 ** -13),
    Variant("x2^13", "exact", _scaled(2.0 ** 13), 2.0 ** 13),
    Variant("x2^40", "exact", _scaled(2.0 ** 40), 2.0 ** 40),
    Variant("x1e-4", "near", _scaled(1e-4), 1e-4),
    Variant("float64", "exact", _primary),
    Variant("cube1", "exact", _array(lambda d: d[None])),
    Variant("gzip2", "exact", _compressed("GZIP_2", quantize_level=0.0)),
    Variant("rot90", "near", _array(np.rot90)),
    Variant("rot180", "near", _array(lambda d: np.rot90(d, 2))),
    Variant("flipx", "near", _array(lambda d: d[:, ::-1])),
    Variant("transpose", "near", _array(lambda d: d.T)),
    Variant("pedestal", "near", lambda d, h: _offset(d, h, 1e4)),
    Variant("nanborder", "robust", lambda d, h: _edit(d, h, "nanborder")),
    Variant("deadthird", "robust", lambda d, h: _edit(d, h, "deadthird")),
    Variant("infcross", "robust", lambda d, h: _edit(d, h, "infcross")),
    Variant("negsky", "robust", lambda d, h: _edit(d, h, "negsky")),
    Variant("cut200", "robust", _cut(200)),
    Variant("cut48", "robust", _cut(48)),
    Variant("strip", "robust", _array(lambda d: d[:1])),
    Variant("badkeys", "robust", lambda d, h: _keys(
        d, h, {"GAIN": -2.0, "SATURATE": 0.0, "EXPTIME": 0.0})),
    Variant("textkeys", "robust", lambda d, h: _keys(
        d, h, {"GAIN": "high", "SATURATE": "none", "PHOTZP": "x",
               "BUNIT": "furlongs"})),
    Variant("rice", "robust", _compressed("RICE_1")),
    Variant("hcompress", "robust", _compressed("HCOMPRESS_1",
                                               hcomp_scale=2.5)),
    Variant("uint8", "robust", lambda d, h: _integer(d, h, "uint8")),
    Variant("int16blank", "robust", lambda d, h: _integer(d, h, "int16")),
)


def _frame(path: Path, work: Path) -> tuple[np.ndarray, fits.Header] | None:
    """The first 2-D image HDU of a file, float64, its header cleaned."""
    plain = work / "frame.fits"
    with gzip.open(path) as src, plain.open("wb") as dst:
        shutil.copyfileobj(src, dst)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with fits.open(plain) as hdul:
            for hdu in hdul:
                if hdu.is_image and hdu.data is not None \
                        and hdu.data.ndim == 2:
                    header = hdu.header.copy()
                    data = hdu.data.astype(np.float64)
                    break
            else:
                return None
            for key, value in hdul[0].header.items():
                if key not in header and key not in ("SIMPLE", "EXTEND",
                                                     "COMMENT", "HISTORY"):
                    header[key] = value
    for key in ("XTENSION", "PCOUNT", "GCOUNT", "EXTNAME", "EXTVER",
                "BZERO", "BSCALE", "BLANK", "SIMPLE", "EXTEND"):
        header.remove(key, ignore_missing=True, remove_all=True)
    return data, header


def _run(path: Path) -> tuple[str, dict[str, float] | None, str]:
    """(outcome, metrics of the first CCD or None, message)."""
    import qualityfits  # noqa: PLC0415 - after argument parsing
    from qualityfits.errors import (  # noqa: PLC0415
        InternalError,
        QualityFitsError,
    )

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            report = qualityfits.assess(path, jobs=1)
    except InternalError as exc:
        return "CRASH", None, str(exc)
    except QualityFitsError as exc:
        return f"refused ({exc.code})", None, str(exc)
    except Exception as exc:  # noqa: BLE001 - what the sweep looks for
        return "CRASH", None, f"{type(exc).__name__}: {exc}"
    ext = report.extensions[0]
    if ext.status != "ok":
        assert ext.error is not None
        crash = ext.error.code == InternalError.code
        return ("CRASH" if crash else f"failed ({ext.error.code})", None,
                ext.error.message)
    return "ok", {k: float(v) for k, v in ext.metrics.items()}, ""


def _same(a: float, b: float, rel: float = 0.0, ab: float = 0.0) -> bool:
    if math.isnan(a) or math.isnan(b):
        return math.isnan(a) and math.isnan(b)
    return abs(a - b) <= max(rel * abs(a), ab)


def _violations(base: dict[str, float], other: dict[str, float],
                scale: float) -> list[str]:
    out = [f"{k} {base[k]:g} -> {other[k]:g}" for k in COUNTS
           if not _same(base[k], other[k])]
    out += [f"{k} {base[k]:.5g} -> {other[k]:.5g}" for k, r in _REL.items()
            if not _same(base[k], other[k], rel=r)]
    out += [f"{k} {base[k]:.5g} -> {other[k]:.5g}" for k, a in _ABS.items()
            if not _same(base[k], other[k], ab=a)]
    out += [f"{k} {base[k]:.5g} -> {other[k] / scale:.5g} (scaled back)"
            for k in _SKY
            if not _same(base[k], other[k] / scale, rel=_SKY_REL)]
    return out


def _shown(base: dict[str, float], other: dict[str, float]) -> str:
    parts = []
    for k in SHOWN:
        a, b = base[k], other[k]
        if _same(a, b, rel=1e-3):
            continue
        if k in COUNTS:
            parts.append(f"{k} {a:g}->{b:g}")
        else:
            parts.append(f"{k} {a:.4g}->{b:.4g}")
    return "; ".join(parts) or "same"


def sweep(files: list[Path], variants: tuple[Variant, ...]
          ) -> Iterator[dict[str, Any]]:
    """Assess each file's variants; yield one row per run."""
    for path in files:
        with tempfile.TemporaryDirectory() as tmp:
            work = Path(tmp)
            frame = _frame(path, work)
            if frame is None:
                continue
            data, header = frame
            orig = work / "orig.fits"
            fits.HDUList(_primary(data.astype(np.float32), header)
                         ).writeto(orig)
            outcome, base, message = _run(orig)
            name = path.name.removesuffix(".fits.gz")
            yield {"file": name, "variant": "as published",
                   "kind": "", "outcome": outcome, "detail": message}
            for v in variants:
                target = work / f"{v.name}.fits"
                fits.HDUList(v.make(data, header)).writeto(target)
                got, metrics, message = _run(target)
                detail, violation = message, []
                if got == "ok" and base is not None and metrics is not None:
                    if v.kind == "exact":
                        violation = _violations(base, metrics, v.scale)
                        detail = "; ".join(violation) or "same"
                    else:
                        detail = _shown(base, metrics)
                elif v.kind == "exact" and got != outcome:
                    violation = [f"{outcome} -> {got}"]
                    detail = f"{outcome} -> {got}: {message}"
                yield {"file": name, "variant": v.name, "kind": v.kind,
                       "outcome": got, "detail": detail,
                       "violation": bool(violation)}
                target.unlink()


def main(argv: list[str] | None = None) -> int:
    """Run the sweep, print one line per run; 1 on a crash or violation."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--files", default="",
                        help="comma-separated parts of file names "
                             "(default: every file)")
    parser.add_argument("--variants", default="",
                        help="comma-separated variant names (default: "
                             "all: " + ", ".join(v.name for v in VARIANTS)
                             + ")")
    parser.add_argument("--json", type=Path, help="write the rows here")
    args = parser.parse_args(argv)
    if not DATA.is_dir():
        print(f"variants: {DATA} is absent (the shared data folder sits "
              "beside the project)", file=sys.stderr)
        return 2
    wanted = [s for s in args.files.split(",") if s]
    files = sorted(p for p in DATA.glob("*.fits.gz")
                   if not wanted or any(s in p.name for s in wanted))
    names = {s for s in args.variants.split(",") if s}
    unknown = names - {v.name for v in VARIANTS}
    if unknown:
        parser.error(f"unknown variants: {', '.join(sorted(unknown))}")
    variants = tuple(v for v in VARIANTS if not names or v.name in names)
    rows = []
    print(f"{'file':40s} {'variant':13s} {'kind':6s} {'outcome':26s} "
          "detail")
    for row in sweep(files, variants):
        rows.append(row)
        mark = "CRASH" if row["outcome"] == "CRASH" else (
            "VIOLATION" if row.get("violation") else "")
        detail = row["detail"].replace("\n", " ")
        print(f"{row['file'][:40]:40s} {row['variant']:13s} "
              f"{row['kind']:6s} {row['outcome'][:26]:26s} "
              f"{mark + ' ' if mark else ''}{detail[:150]}", flush=True)
    crashes = sum(r["outcome"] == "CRASH" for r in rows)
    violations = sum(bool(r.get("violation")) for r in rows)
    print(f"\n{len(rows)} runs, {crashes} crashes, {violations} "
          "violations of an exact invariance")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    return 1 if crashes or violations else 0


if __name__ == "__main__":
    sys.exit(main())
