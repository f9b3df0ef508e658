"""How well can S tell stars from galaxies?  A bound from the truth.

``python benchmarks/classify_limit.py [--json FILE]`` simulates 1024²
CCDs with seeds, betas and skies that neither the classifier nor the
regression harness uses (a large PSF of 9-10 px, an undersampled,
a crowded, a strongly elliptical and an ordinary field), runs
`qualityfits.pipeline.assess_extension` with its defaults (or the
``--class-confidence`` given) and labels
every detection from the truth, as `regression.classify_truth` does
(within 1.5 px, and the truth source dominating the detection's light,
`regression.mark_dominant`): stars of truth S/N > 20, galaxies of
r_e > 2 px.  For each case it prints

* our classifier: the completeness of the stars, the fraction of the
  galaxies called stars;
* the best completeness that a cut on S (``SPREAD_MODEL``), on S/σ_S,
  or on S - b σ_S with a minimum S/N (`_best_line`) reaches while
  calling at most 3 % of the galaxies stars -- the cut chosen with the
  truth, so an optimistic bound for those rules on these data (a source
  without S is a galaxy); ``line@ours`` the same bound at the fraction
  of galaxies our classifier calls stars;
* ``sep@20-30``: the separation, in σ_S, of a star at S/N 20-30 from
  a galaxy of r_e 2-2.5 px: the median S of those galaxies over the
  median σ_S of those stars (the stars' S is 0 by construction);
* ``best 2-feat``: the best completeness at <= 3 % of a cut on S and
  one other feature of the detection (`FEATURES`, `_pair_rule`: a line
  in the (S, feature) plane, minus b σ_S, with a minimum S/N; all
  chosen with the truth), and which feature gives it.  A second table
  gives that bound for every feature, and, with two seeds or more, the
  S-only and 2-feature bounds on the even and the odd seeds alone (the
  seed-to-seed scatter a gain must exceed) and ``held out``: the rules
  chosen on one half applied to the other (`_cross`).

The features are measured on the very inputs `qualityfits.classify`
gets in the pipeline (`_Inputs` records them): S on larger stamps
(1.75 and 2.5 FWHM) and without its local plane, the quadrupole
counterpart of S (the source against sheared copies of the PSF: σ_S
times the square root of a chi2 of 2 degrees of freedom), the
deficit of light in a 0.6 FWHM aperture against the PSF-fit flux,
the chi2 per degree of freedom of the PSF fit, and FLUX_RADIUS,
FLUX_MAX / FLUX_AUTO and A·B (second moments) against the PSF
stars'.

``--theory`` prints instead, for the PSFs of the cases, how much of
the information S uses: on S's stamp, the separation of a star from
an r_e = 2 px exponential disc of the same flux (no noise but the
sky's) by S's template against the likelihood ratio of the two
profiles (the Neyman-Pearson test, whose statistic is the source's
projection on the galaxy-minus-star profile, `_theory`); and the
separation at a PSF S/N of 20 on that stamp, on a 3 FWHM stamp, and
with the sky known (no local plane).

``--seed-base B --nseeds N`` replaces every case's seeds by
B + 10 k + i (k the case, i < N): more seeds, none of the defaults.

CPU-heavy: run it under ``nice -n 19``.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
from astropy.table import Table
from scipy.spatial import cKDTree

BENCHMARKS = Path(__file__).resolve().parent
if str(BENCHMARKS) not in sys.path:
    sys.path.insert(0, str(BENCHMARKS))

import regression  # noqa: E402

from qualityfits import moffat, pipeline  # noqa: E402
from qualityfits.classify import (  # noqa: E402
    MIN_CLASS_SNR,
    SPREAD_RADIUS,
    Classification,
    _broadened,
    _convolve_same,
    _project_plane,
    _spread,
    spread_radius,
    windowed_centroid,
)
from qualityfits.config import QualityConfig  # noqa: E402
from qualityfits.datasets import SimulationParams, simulate_image  # noqa: E402
from qualityfits.detection import Sources  # noqa: E402
from qualityfits.psf import PsfField, PsfResult, source_stamps, stamp_grid  # noqa: E402

MAX_CONTAMINATION = 0.03
#: Features other than S, in the order of the per-feature table.
FEATURES = ("S 1.75 FWHM", "S 2.5 FWHM", "S no plane", "quadrupole",
            "aperture", "chi2/dof", "FLUX_RADIUS", "peak/flux", "A*B")
#: Shear of the PSF copies the quadrupole statistic compares with.
SHEAR = 0.25
#: Radius of the aperture of the "aperture" feature, in FWHM.
APERTURE = 0.6


@dataclass(frozen=True)
class Case:
    """A simulated case: its parameters and seeds."""

    name: str
    changes: dict[str, Any]
    seeds: tuple[int, ...]


CASES = (
    Case("large 9 px b2.5", {"fwhm": 9.0, "beta": 2.5, "theta": 50.0,
                             "sky": 1500.0, "n_stars": 300}, (601, 602, 603)),
    Case("large 10 px b4", {"fwhm": 10.0, "beta": 4.0, "theta": -10.0,
                            "sky": 700.0, "n_stars": 300}, (611, 612, 613)),
    Case("large 9.5 px b3", {"fwhm": 9.5, "n_stars": 300}, (621, 622, 623)),
    Case("under 1.8 px b3.5", {"fwhm": 1.8, "beta": 3.5, "sky": 500.0},
         (631, 632)),
    Case("crowded 12k b2.8", {"n_stars": 3000, "beta": 2.8,
                              "theta": 80.0}, (641,)),
    Case("ellip 0.15 b3.5", {"ellipticity": 0.15, "beta": 3.5,
                             "theta": 10.0}, (651, 652)),
    Case("ordinary b2.5", {"beta": 2.5, "sky": 300.0}, (661, 662)),
)


def _params(changes: dict[str, Any]) -> SimulationParams:
    base: dict[str, Any] = {
        "shape": (1024, 1024), "fwhm": 4.0, "beta": 3.0,
        "ellipticity": 0.05, "theta": 30.0, "sky": 1000.0,
        "n_stars": 150, "n_galaxies": 375, "n_cr_hits": 75,
        "n_cr_tracks": 8,
    }
    base.update(changes)
    return SimulationParams(**base)


@dataclass
class _Inputs:
    """What `qualityfits.classify.classify` was given, and its result."""

    data_sub: np.ndarray | None = None
    bad: np.ndarray | None = None
    src: Sources | None = None
    psf: PsfResult | None = None
    gain: float | None = None
    result: Classification | None = None


@contextmanager
def _recording() -> Iterator[_Inputs]:
    """Record the inputs of the pipeline's classification step.

    The pipeline's own `classify` runs unchanged; the wrapper keeps a
    copy of the background-subtracted image (the pipeline drops it).
    """
    seen = _Inputs()
    real = pipeline.classify

    def wrapper(data_sub: np.ndarray, bad: np.ndarray, src: Sources,
                psf: PsfResult, *, gain: float | None,
                config: QualityConfig) -> Classification:
        seen.data_sub, seen.bad = np.array(data_sub), np.array(bad)
        seen.src, seen.psf, seen.gain = src, psf, gain
        seen.result = real(data_sub, bad, src, psf, gain=gain,
                           config=config)
        return seen.result

    pipeline.classify = wrapper
    try:
        yield seen
    finally:
        pipeline.classify = real


def _sheared(params: np.ndarray, component: int) -> np.ndarray:
    """The PSF sheared by `SHEAR` along x/y (0) or the diagonals (1)."""
    out = params.copy()
    q = np.empty((params.shape[0], 2, 2))
    q[:, 0, 0], q[:, 1, 1] = params[:, moffat.Q11], params[:, moffat.Q22]
    q[:, 0, 1] = q[:, 1, 0] = params[:, moffat.Q12]
    a = (np.diag([1.0 - SHEAR, 1.0 + SHEAR]) if component == 0
         else np.array([[1.0, -SHEAR], [-SHEAR, 1.0]]))
    q = a.T @ q @ a
    out[:, moffat.Q11], out[:, moffat.Q22] = q[:, 0, 0], q[:, 1, 1]
    out[:, moffat.Q12] = q[:, 0, 1]
    return out


def _stamp_features(seen: _Inputs, src: Sources, field: PsfField,
                    idx: np.ndarray, radius_fwhm: float, *,
                    plane: bool = True,
                    extra: bool = False) -> dict[str, np.ndarray]:
    """S (and with ``extra`` the other stamp features) of sources idx.

    As `qualityfits.classify.measure_spread`, on a stamp of half-size
    ``radius_fwhm`` FWHM, with or without removing the local plane.
    """
    if seen.data_sub is None or seen.bad is None:
        msg = "the classification step did not run"
        raise RuntimeError(msg)
    fwhm = float(np.median(field.fwhm_at(src.x[idx], src.y[idx])))
    radius = int(np.clip(np.ceil(radius_fwhm * fwhm), 3, 40))
    ix = np.round(src.x[idx]).astype(np.intp)
    iy = np.round(src.y[idx]).astype(np.intp)
    data, usable = source_stamps(seen.data_sub, seen.bad, src.segmap, idx,
                                 ix, iy, radius)
    xs, ys = stamp_grid(radius)
    cx, cy = windowed_centroid(data, usable, xs, ys, src.x[idx] - ix,
                               src.y[idx] - iy, fwhm)
    placed = field.params_at(src.x[idx], src.y[idx], x0=cx, y0=cy)
    placed[:, moffat.AMP] = 1.0
    phi = moffat.render(placed, xs, ys, order=2, fast=True)
    g = moffat.render(_broadened(placed), xs, ys, order=2, fast=True)
    templates = [g]
    if extra:
        templates += [moffat.render(_sheared(placed, c), xs, ys, order=2,
                                    fast=True) for c in (0, 1)]
    var = (src.noise[idx] ** 2)[:, None] + (
        np.maximum(data, 0.0) / seen.gain if seen.gain else 0.0)
    if plane:
        data, phi, *templates = _project_plane(usable, xs, ys, data, phi,
                                               *templates)
    out: dict[str, np.ndarray] = {}
    out["S"], out["err"] = _spread(data, var, usable, phi, templates[0])
    if not extra:
        return out
    q1, e1 = _spread(data, var, usable, phi, templates[1])
    q2, e2 = _spread(data, var, usable, phi, templates[2])
    out["q1"], out["q1_err"], out["q2"], out["q2_err"] = q1, e1, q2, e2
    w = usable.astype(np.float64)
    pp = np.sum(w * phi * phi, axis=1)
    f_psf = np.sum(w * phi * data, axis=1) / pp
    # Light missing from the core against the PSF fit: a linear
    # statistic u·p, positive for extended sources.
    ap = w * (np.hypot(xs[None, :] - cx[:, None], ys[None, :] - cy[:, None])
              < APERTURE * fwhm)
    ap_phi = np.sum(ap * phi, axis=1)
    u = ap - (ap_phi / pp)[:, None] * phi * w
    with np.errstate(divide="ignore", invalid="ignore"):
        den = ap_phi * f_psf
        out["aperture"] = -np.sum(u * data, axis=1) / den
        res = data - f_psf[:, None] * phi
        out["chi2/dof"] = (np.sum(w * res**2 / var, axis=1)
                           / np.maximum(np.sum(w, axis=1) - 4.0, 1.0))
    return out


def _zeroed(values: np.ndarray, err: np.ndarray,
            psf_index: np.ndarray) -> np.ndarray:
    """Subtract the median over the brighter half of the PSF stars.

    As `qualityfits.classify.classify` sets S = 0.
    """
    on, on_err = values[psf_index], err[psf_index]
    bright = np.isfinite(on) & (on_err <= np.nanmedian(on_err))
    if bright.sum() < 3:
        bright = np.isfinite(on)
    return values - float(np.median(on[bright]))


def _features(seen: _Inputs) -> dict[str, np.ndarray]:
    """Every feature of `FEATURES`, for every source (NaN: not measured).

    Each is oriented so that larger means more extended.
    """
    src, psf = seen.src, seen.psf
    if src is None or psf is None or psf.field is None:
        msg = "the classification step did not run or had no PSF"
        raise RuntimeError(msg)
    field = psf.field
    n = len(src)
    pi = psf.stars.index
    idx = np.flatnonzero(np.nan_to_num(src.snr) >= MIN_CLASS_SNR)

    def spread_full(radius_fwhm: float, *, plane: bool = True,
                    extra: bool = False) -> dict[str, np.ndarray]:
        part = _stamp_features(seen, src, field, idx, radius_fwhm,
                               plane=plane, extra=extra)
        full = {k: np.full(n, np.nan) for k in part}
        for k, v in part.items():
            full[k][idx] = v
        return full

    out: dict[str, np.ndarray] = {}
    for name, radius, plane in (("S 1.75 FWHM", 1.75, True),
                                ("S 2.5 FWHM", 2.5, True),
                                ("S no plane", SPREAD_RADIUS, False)):
        f = spread_full(radius, plane=plane)
        out[name] = _zeroed(f["S"], f["err"], pi)
        out[name + " err"] = f["err"]
    f = spread_full(SPREAD_RADIUS, extra=True)
    # The quadrupole statistic in units of S: σ_S sqrt(chi2_2).
    q1 = _zeroed(f["q1"], f["q1_err"], pi)
    q2 = _zeroed(f["q2"], f["q2_err"], pi)
    with np.errstate(divide="ignore", invalid="ignore"):
        chi2 = (q1 / f["q1_err"]) ** 2 + (q2 / f["q2_err"]) ** 2
        out["quadrupole"] = f["err"] * np.sqrt(chi2)
        out["aperture"] = _zeroed(f["aperture"], f["err"], pi)
        out["chi2/dof"] = f["chi2/dof"] / np.nanmedian(f["chi2/dof"][pi])
        out["FLUX_RADIUS"] = src.r_half / np.median(src.r_half[pi])
        sharp = src.peak / src.flux
        out["peak/flux"] = -sharp / np.median(sharp[pi])
        area = src.a * src.b
        out["A*B"] = area / np.median(area[pi])
    return out


def _labelled(params: SimulationParams, seed: int,
              config: QualityConfig) -> dict[str, np.ndarray]:
    """S, σ_S, S/N, our class and the features of labelled detections."""
    sim = simulate_image(params, seed=seed)
    with _recording() as seen:
        report = pipeline.assess_extension(sim.data, sim.header,
                                           name=f"s{seed}", config=config)
    if not report.ok or report.sources is None:
        msg = f"seed {seed}: {report.error}"
        raise RuntimeError(msg)
    src = report.sources
    feats = _features(seen)
    truth = {"stars": Table(sim.stars), "galaxies": Table(sim.galaxies)}
    regression.mark_dominant(truth, regression.TruthPsf(
        params.fwhm, params.beta, params.ellipticity, params.theta))
    x = np.asarray(src["X_IMAGE"], float) - 1
    y = np.asarray(src["Y_IMAGE"], float) - 1
    tree = cKDTree(np.column_stack([x, y]))
    out: dict[str, list[np.ndarray]] = {k: [] for k in
                                        ("star", "S", "err", "snr", "ours",
                                         "re", *feats)}
    for kind, table, wanted in (
            ("star", truth["stars"],
             np.asarray(truth["stars"]["snr"]) > regression.MIN_SNR),
            ("galaxy", truth["galaxies"],
             np.asarray(truth["galaxies"]["r_e"]) > regression.BIG_GALAXY)):
        keep = wanted & (np.asarray(table["own_frac"])
                         >= regression.DOMINANT)
        d, i = tree.query(np.column_stack([table["x"], table["y"]])[keep])
        i = i[d < regression.MATCH_RADIUS]
        out["star"].append(np.full(i.size, kind == "star"))
        out["S"].append(np.asarray(src["SPREAD_MODEL"], float)[i])
        out["err"].append(np.asarray(src["SPREADERR_MODEL"], float)[i])
        out["snr"].append(np.asarray(src["SNR"], float)[i])
        out["ours"].append(np.asarray(src["CLASS"]).astype(str)[i] == "star")
        r_e = (np.asarray(table["r_e"], float) if kind == "galaxy"
               else np.zeros(len(table)))
        out["re"].append(r_e[keep][d < regression.MATCH_RADIUS])
        for name, values in feats.items():
            out[name].append(values[i])
    return {k: np.concatenate(v) for k, v in out.items()}


def _best(star: np.ndarray, score: np.ndarray,
          contamination: float = MAX_CONTAMINATION) -> float:
    """Best completeness of 'star iff score < t', galaxies <= a fraction."""
    gal = np.sort(np.where(np.isfinite(score[~star]), score[~star],
                           np.inf))
    allowed = int(np.floor(contamination * gal.size + 1e-9))
    # t at the (allowed+1)-th smallest galaxy score: `allowed` below it.
    t = gal[allowed] if allowed < gal.size else np.inf
    s = np.where(np.isfinite(score[star]), score[star], np.inf)
    return float(np.mean(s < t))


def _best_line(star: np.ndarray, s: np.ndarray, err: np.ndarray,
               snr: np.ndarray,
               contamination: float = MAX_CONTAMINATION) -> float:
    """Best completeness of 'S - b σ_S < t and S/N >= m' at <= 3 %.

    Over b in [-4, 4] and m in {0, 10, 15, 20}, t chosen for each: a
    line in the (σ_S, S) plane, which holds our rule's main test
    (S < S_ref - z σ_S) and a plain cut on S (b = 0).
    """
    fin = np.isfinite(s) & np.isfinite(err)
    best = 0.0
    for m in (0.0, 10.0, 15.0, 20.0):
        ok = fin & (np.nan_to_num(snr) >= m)
        for b in np.linspace(-4.0, 4.0, 33):
            score = np.where(ok, s - b * err, np.inf)
            best = max(best, _best(star, score, contamination))
    return best


@dataclass(frozen=True)
class _Rule:
    """'cos a S + sin a k f - b σ_S < t and S/N >= m' (see `_best_pair`)."""

    m: float
    a: float
    k: float
    b: float
    t: float

    def stars(self, d: dict[str, np.ndarray], feature: str | None) -> Any:
        """Which sources of ``d`` the rule calls stars."""
        f = d[feature] if feature else np.zeros_like(d["S"])
        score = (np.cos(self.a) * d["S"] + np.sin(self.a) * self.k * f
                 - self.b * d["err"])
        ok = (np.isfinite(score) & (np.nan_to_num(d["snr"]) >= self.m))
        return ok & (np.where(ok, score, np.inf) < self.t)


def _pair_rule(d: dict[str, np.ndarray], feature: str | None,
               contamination: float = MAX_CONTAMINATION,
               ) -> tuple[float, _Rule]:
    """Best completeness of a cut on S and a feature at <= 3 %, and it.

    'cos a S + sin a k f - b σ_S < t and S/N >= m': a line in the
    (S, f) plane (a in [-90°, 90°] by 5°; k scales the stars' spread
    of f to that of S), shifted with the noise of S (b in [-4, 4] by
    0.5), with a minimum S/N m in {0, 10, 15, 20} -- every parameter
    and t chosen with the truth.  Without a feature (None) only a = 0:
    `_best_line`'s family on a coarser grid of b.  A source without S
    or f is a galaxy.
    """
    star, s, err = d["star"], d["S"], d["err"]
    f = d[feature] if feature else np.zeros_like(s)
    fin = np.isfinite(s) & np.isfinite(err) & np.isfinite(f)
    ref = star & fin
    k = 1.0
    if feature and ref.any():
        spread_f = np.median(np.abs(f[ref] - np.median(f[ref])))
        k = float(np.median(np.abs(s[ref]))) / max(float(spread_f), 1e-12)
    angles = np.radians(np.arange(-90.0, 90.1, 5.0)) if feature else [0.0]
    best, rule = -1.0, _Rule(0.0, 0.0, k, 0.0, -np.inf)
    for m in (0.0, 10.0, 15.0, 20.0):
        ok = fin & (np.nan_to_num(d["snr"]) >= m)
        for a in angles:
            line = np.cos(a) * s + np.sin(a) * k * f
            for b in np.linspace(-4.0, 4.0, 17):
                score = np.where(ok, line - b * err, np.inf)
                c = _best(star, score, contamination)
                if c > best:
                    gal = np.sort(score[~star])
                    allowed = int(np.floor(contamination * gal.size + 1e-9))
                    t = gal[allowed] if allowed < gal.size else np.inf
                    best, rule = c, _Rule(m, float(a), k, float(b), float(t))
    return best, rule


def _best_pair(d: dict[str, np.ndarray], feature: str) -> float:
    """Best completeness of a cut on S and ``feature`` at <= 3 %."""
    return _pair_rule(d, feature)[0]


def _bounds(d: dict[str, np.ndarray]) -> dict[str, Any]:
    """S-only line bound and the 2-feature bound of every feature."""
    star = d["star"]
    line = _best_line(star, d["S"], d["err"], d["snr"])
    pairs = {f: _best_pair(d, f) for f in FEATURES}
    top = max(pairs, key=lambda f: pairs[f])
    return {"best_line": line, "best_pair": pairs,
            "best_2feat": pairs[top], "best_2feat_feature": top}


def _cross(train: dict[str, np.ndarray], test: dict[str, np.ndarray],
           top: str) -> dict[str, Any]:
    """Rules chosen on ``train`` applied to ``test``.

    S alone, and S with ``top`` (the best feature on ``train``): the
    completeness and the fraction of galaxies called stars on
    ``test``, whose truth chose nothing.
    """
    out: dict[str, Any] = {"feature": top}
    for key, feature in (("line", None), ("pair", top)):
        _, rule = _pair_rule(train, feature)
        called = rule.stars(test, feature)
        star = test["star"]
        out[key] = [float(called[star].mean()), float(called[~star].mean())]
    return out


def measure(case: Case, config: QualityConfig) -> dict[str, Any]:
    """Pool the case's seeds and compute its figures."""
    params = _params(case.changes)
    parts = [_labelled(params, seed, config) for seed in case.seeds]
    d = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
    bounds = _bounds(d)
    halves = []
    if len(parts) >= 2:
        for first in (0, 1):
            h = {k: np.concatenate([p[k] for p in parts[first::2]])
                 for k in parts[0]}
            b = _bounds(h)
            other = {k: np.concatenate([p[k] for p in parts[1 - first::2]])
                     for k in parts[0]}
            halves.append({"seeds": list(case.seeds[first::2]),
                           "best_line": b["best_line"],
                           "best_2feat": b["best_2feat"],
                           "best_2feat_feature": b["best_2feat_feature"],
                           "applied_to_other_half": _cross(
                               h, other, b["best_2feat_feature"])})
    star = d["star"]
    with np.errstate(invalid="ignore", divide="ignore"):
        z = d["S"] / d["err"]
    mid = star & (d["snr"] >= 20) & (d["snr"] < 30)
    return {
        "case": case.name, "seeds": list(case.seeds),
        "class_confidence": config.class_confidence,
        "n_stars": int(star.sum()), "n_galaxies": int((~star).sum()),
        "ours_completeness": float(d["ours"][star].mean()),
        "ours_gal_as_star": float(d["ours"][~star].mean()),
        "best_S": _best(star, d["S"]),
        "best_S_over_err": _best(star, z),
        "best_line": bounds["best_line"],
        "best_line_at_ours": _best_line(star, d["S"], d["err"], d["snr"],
                                        float(d["ours"][~star].mean())),
        "separation_snr20_30": float(
            np.nanmedian(d["S"][~star & (d["re"] < 2.5)])
            / np.nanmedian(d["err"][mid])),
        "best_2feat": bounds["best_2feat"],
        "best_2feat_feature": bounds["best_2feat_feature"],
        "best_pair": bounds["best_pair"],
        "halves": halves,
    }


def _profiles(params: SimulationParams, r_e: float,
              radius: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Star, r_e disc and template G on a stamp, unit flux, pixelised.

    The PSF of the case at the centre (3 sub-samples per pixel).
    """
    sub = 3
    big = radius + int(np.ceil(6 * r_e + 3 * params.fwhm))
    n = 2 * big * sub + sub
    u = (np.arange(n) - (n - 1) / 2) / sub
    gx, gy = np.meshgrid(u, u)
    p = moffat.params_from_shape(x0=0.0, y0=0.0, flux=1.0,
                                 fwhm=params.fwhm, beta=params.beta,
                                 ellipticity=params.ellipticity,
                                 theta=params.theta)
    psf = moffat.render_point(p, gx.ravel(), gy.ravel())[0].reshape(n, n)
    disc = np.exp(-1.678 * np.hypot(gx, gy) / r_e)
    out = []
    for image in (psf, _convolve_same(disc, psf)):
        pix = image.reshape(n // sub, sub, n // sub, sub).sum(axis=(1, 3))
        pix /= pix.sum()
        mid = pix.shape[0] // 2
        out.append(pix[mid - radius:mid + radius + 1,
                       mid - radius:mid + radius + 1].ravel())
    xs, ys = stamp_grid(radius)
    g = moffat.render(_broadened(p), xs, ys, order=2)[0]
    return out[0], out[1], g


def _orthogonal(v: np.ndarray, basis: np.ndarray) -> np.ndarray:
    """Part of v orthogonal to the columns of basis."""
    q, _ = np.linalg.qr(basis)
    return v - q @ (q.T @ v)


def _theory(params: SimulationParams) -> dict[str, float]:
    """S's efficiency and the separations of `--theory` for one PSF.

    Separations in σ at a PSF S/N of 20 (S/N = F |φ| / σ, φ of unit
    sum over the whole profile): F |(T - φ)⊥| / σ, ⊥ to what is
    fitted (the flux, and the local plane unless the sky is known).
    """
    r_e = QualityConfig().class_galaxy_re
    whole, _, _ = _profiles(params, r_e, int(np.ceil(4 * params.fwhm)))
    norm = float(np.linalg.norm(whole))
    out: dict[str, float] = {}
    for key, radius in (("stamp", spread_radius(params.fwhm)),
                        ("3fwhm", int(np.ceil(3 * params.fwhm)))):
        star, gal, g = _profiles(params, r_e, radius)
        xs, ys = stamp_grid(radius)
        plane = np.stack([star, np.ones_like(xs), xs, ys], axis=1)
        diff = _orthogonal(gal - star, plane)
        sep = float(np.linalg.norm(diff))
        out[f"sep20_{key}"] = 20.0 * sep / norm
        out[f"sep20_{key}_sky_known"] = 20.0 * float(np.linalg.norm(
            _orthogonal(gal - star, star[:, None]))) / norm
        if key == "stamp":
            g_perp = _orthogonal(g, plane)
            out["efficiency"] = float(abs(g_perp @ diff)
                                      / (np.linalg.norm(g_perp) * sep))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", metavar="FILE",
                        help="also write the figures as JSON")
    parser.add_argument("--class-confidence", type=float,
                        default=QualityConfig().class_confidence,
                        help="our classifier's class_confidence "
                             "(default %(default)s)")
    parser.add_argument("--cases", default="",
                        help="only the cases whose name contains this")
    parser.add_argument("--seed-base", type=int, default=None,
                        help="replace the seeds of case k by "
                             "SEED_BASE + 10 k + i, i < NSEEDS")
    parser.add_argument("--nseeds", type=int, default=3,
                        help="seeds per case with --seed-base "
                             "(default %(default)s, at most 10)")
    parser.add_argument("--theory", action="store_true",
                        help="print how much of the information S uses "
                             "(no simulation)")
    args = parser.parse_args(argv)
    if args.theory:
        print(f"{'case':20s} {'S/NP':>6s} {'sep@20 stamp':>12s} "
              f"{'sky known':>9s} {'3 FWHM':>7s} {'sky known':>9s}")
        for case in CASES:
            t = _theory(_params(case.changes))
            print(f"{case.name:20s} {t['efficiency']:6.3f} "
                  f"{t['sep20_stamp']:12.2f} "
                  f"{t['sep20_stamp_sky_known']:9.2f} "
                  f"{t['sep20_3fwhm']:7.2f} "
                  f"{t['sep20_3fwhm_sky_known']:9.2f}")
        return 0
    if not 1 <= args.nseeds <= 10:
        parser.error("--nseeds must be in 1..10")
    config = QualityConfig(class_confidence=args.class_confidence)
    cases = list(CASES)
    if args.seed_base is not None:
        cases = [replace(c, seeds=tuple(args.seed_base + 10 * k + i
                                        for i in range(args.nseeds)))
                 for k, c in enumerate(CASES)]
    rows = []
    head = (f"{'case':20s} {'N*':>4s} {'Ngal':>5s} {'ours compl':>10s} "
            f"{'ours gal>*':>10s} {'best S':>7s} {'best S/sig':>10s} "
            f"{'best line':>9s} {'line@ours':>9s} {'sep@20-30':>9s} "
            f"{'best 2-feat':>11s}  with")
    print(head)
    for case in cases:
        if args.cases not in case.name:
            continue
        r = measure(case, config)
        rows.append(r)
        print(f"{r['case']:20s} {r['n_stars']:4d} {r['n_galaxies']:5d} "
              f"{r['ours_completeness']:10.3f} {r['ours_gal_as_star']:10.3f} "
              f"{r['best_S']:7.3f} {r['best_S_over_err']:10.3f} "
              f"{r['best_line']:9.3f} {r['best_line_at_ours']:9.3f} "
              f"{r['separation_snr20_30']:9.2f} {r['best_2feat']:11.3f}  "
              f"{r['best_2feat_feature']}",
              flush=True)
    print("\nbest completeness at <= 3 % of a cut on S and one feature "
          "(S alone: best line); halves: even / odd seeds, S alone -> "
          "best 2-feature; held out: the rules chosen on one half "
          "applied to the other, completeness/galaxies called stars, "
          "S alone | S and the feature chosen")
    print(f"{'case':20s} {'line':>5s} "
          + " ".join(f"{f[:11]:>11s}" for f in FEATURES) + "  halves")
    for r in rows:
        halves = "  ".join(f"{h['best_line']:.3f}->{h['best_2feat']:.3f}"
                           for h in r["halves"])
        held = "  ".join(
            "{:.3f}/{:.3f} | {:.3f}/{:.3f}".format(
                *h["applied_to_other_half"]["line"],
                *h["applied_to_other_half"]["pair"])
            for h in r["halves"])
        if held:
            halves += f"  held out: {held}"
        print(f"{r['case']:20s} {r['best_line']:5.3f} "
              + " ".join(f"{r['best_pair'][f]:11.3f}" for f in FEATURES)
              + f"  {halves}")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
