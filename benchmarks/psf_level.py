"""Candidate levels of the FWHM field on real and simulated PSF stars.

``python benchmarks/psf_level.py [--workdir DIR] [--sets SET,..]`` (sets
``harness,sims,edges,real``) runs the pipeline (`qualityfits.assess` /
`assess_extension`, defaults) on each image, takes its published PSF
stars (``psf_stars``: positions, pixel-free FWHM, S/N), refits their
FWHM trend as `measure_psf` does and levels it with each candidate
estimator of the level of the stars' FWHM over the trend: the shorth
mode (the level until issue 15's NTT instability), the median, the
half-sample mode, Tukey's biweight location with a MAD scale (c 3 and 4.685)
or a sharp-side scale (c 3, `qualityfits.psf.fwhm_level`), and the mode
of a kernel density (Silverman's bandwidth). For each CCD and estimator
it prints FWHM_PIX (the levelled field's median at the stars) and its
deviation from the truth where known, and the largest move over 20
perturbations of the stars' FWHMs by 1e-4 (relative), in units of the
estimator's bootstrap error (100 resamples of the ratios). The stars are
those the pipeline's own level selected (its clips use the level): a
comparison of levels on one sample, not of whole pipelines.

Sets: ``harness``: the 2048² simulations `regression.py` wrote into
``--workdir`` (cp_trio left out: it needs its weight and mask);
``sims``: twelve 1024² simulations drawn here (seeds 3001-3012, FWHM
2.2-8 px, beta 2.3-4.5, 0-15 % FWHM variation, 120-400 stars and
200-700 galaxies); ``edges``: `psf_edges.py` fields (Moffat at 1.4-3 px,
Gaussian 2.5 px, Airy 2 px, no galaxies); ``real``: the NTT and Spitzer
frames of ``../shared/data``.  Results: ``benchmarks/README.md``, "The
level of the FWHM field".
"""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from astropy.io import fits
from numpy.typing import NDArray

BENCHMARKS = Path(__file__).resolve().parent
if str(BENCHMARKS) not in sys.path:
    sys.path.insert(0, str(BENCHMARKS))

import psf_edges  # noqa: E402

import qualityfits  # noqa: E402
from qualityfits.datasets import SimulationParams, simulate_image  # noqa: E402
from qualityfits.pipeline import assess_extension  # noqa: E402
from qualityfits.psf import (  # noqa: E402
    _eval_coef,
    _shorth_mode,
    fit_trend,
    fwhm_level,
    fwhm_weight,
)

Array = NDArray[np.float64]
SHARED_DATA = BENCHMARKS.parent.parent / "shared" / "data"
HARNESS_TRUTH = {"ordinary": 4.0, "crowded": 4.0, "undersampled": 1.7,
                 "large_psf": 9.5, "elliptical": 4.0, "hst_flt": 1.8}


def _biweight(v: Array, c: float, sharp: bool) -> float:
    m = float(np.median(v))
    if sharp:
        s = (m - float(np.percentile(v, 25))) / 0.6745
    else:
        s = 1.4826 * float(np.median(np.abs(v - m)))
    if not s > 0:
        return m
    for _ in range(100):
        u = (v - m) / (c * s)
        w = np.clip(1.0 - u**2, 0.0, None) ** 2
        new = float(np.sum(w * v) / np.sum(w))
        if abs(new - m) < 1e-12:
            return new
        m = new
    return m


def _half_sample_mode(v: Array) -> float:
    v = np.sort(v)
    while v.size > 3:
        w = (v.size + 1) // 2 - 1
        i = int(np.argmin(v[w:] - v[:-w]))
        v = v[i:i + w + 1]
    if v.size == 3:
        if v[1] - v[0] < v[2] - v[1]:
            return float(v[:2].mean())
        if v[2] - v[1] < v[1] - v[0]:
            return float(v[1:].mean())
        return float(v[1])
    return float(v.mean())


def _kde_mode(v: Array) -> float:
    s = 1.4826 * float(np.median(np.abs(v - np.median(v))))
    h = max(1.06 * s * v.size ** -0.2, 1e-3)
    grid = np.linspace(v.min(), v.max(), 2001)
    density = np.exp(-0.5 * ((grid[:, None] - v[None]) / h) ** 2).sum(1)
    m = float(grid[np.argmax(density)])
    for _ in range(50):  # mean shift to the peak
        w = np.exp(-0.5 * ((v - m) / h) ** 2)
        m = float(np.sum(w * v) / np.sum(w))
    return m


ESTIMATORS: dict[str, Callable[[Array], float]] = {
    "shorth": _shorth_mode,
    "median": lambda v: float(np.median(v)),
    "HSM": _half_sample_mode,
    "bw3 MAD": lambda v: _biweight(v, 3.0, sharp=False),
    "bw4.7 MAD": lambda v: _biweight(v, 4.685, sharp=False),
    "bw3 sharp": fwhm_level,
    "KDE mode": _kde_mode,
}


def _stars(ext: Any) -> dict[str, Any] | None:
    t = ext.psf_stars
    if t is None or len(t) < 3:
        return None
    return {"x": np.asarray(t["X_IMAGE"], float) - 1.0,
            "y": np.asarray(t["Y_IMAGE"], float) - 1.0,
            "fwhm": np.asarray(t["FWHM"], float),
            "snr": np.asarray(t["SNR"], float), "shape": ext.shape}


def _trend(d: dict[str, Any], fwhm: Array) -> Array:
    coef = fit_trend(d["x"], d["y"], fwhm, d["shape"],
                     weights=fwhm_weight(d["snr"]))
    return _eval_coef(coef, d["x"], d["y"], d["shape"])


def _quiet_assess(path: Path, **kw: Any) -> Any:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return qualityfits.assess(path, jobs=1, **kw)


def harness_set(workdir: Path) -> list[dict[str, Any]]:
    """The regression harness's 2048² simulations in ``workdir``."""
    out = []
    for path in sorted((workdir / "sims").glob("*_2048_s?.fits")):
        case = path.name.rsplit("_2048", 1)[0]
        if case not in HARNESS_TRUTH:
            continue
        d = _stars(_quiet_assess(path).extensions[0])
        if d:
            d.update(name=path.stem, truth=np.full(d["x"].size,
                                                   HARNESS_TRUTH[case]))
            out.append(d)
    return out


def sims_set() -> list[dict[str, Any]]:
    """Twelve 1024² simulations with varying PSFs and galaxies."""
    rng = np.random.default_rng(77)
    out = []
    for seed in range(3001, 3013):
        params = SimulationParams(
            shape=(1024, 1024),
            fwhm=float(rng.choice([2.2, 3.0, 4.5, 6.0, 8.0])),
            beta=float(rng.uniform(2.3, 4.5)),
            ellipticity=float(rng.uniform(0, 0.12)),
            theta=float(rng.uniform(-90, 90)),
            sky=float(rng.choice([300.0, 1000.0, 3000.0])),
            n_stars=int(rng.integers(120, 400)),
            n_galaxies=int(rng.integers(200, 700)),
            fwhm_variation=float(rng.choice([0.0, 0.08, 0.15])),
            n_cr_hits=60, n_cr_tracks=6)
        sim = simulate_image(params, seed=seed)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            d = _stars(assess_extension(sim.data, sim.header, name="sim"))
        if d:
            d.update(name=(f"sim {seed} {params.fwhm:g} px "
                           f"var {params.fwhm_variation:g}"),
                     truth=sim.fwhm_at(d["x"], d["y"]))
            out.append(d)
    return out


def edges_set() -> list[dict[str, Any]]:
    """`psf_edges.py` fields, two seeds each."""
    header = fits.Header({"GAIN": psf_edges.GAIN, "SATURATE": 1e7})
    out = []
    for kind, fwhm in [("moffat1.7", 1.4), ("moffat2.2", 1.6),
                       ("moffat3", 1.6), ("gauss", 2.5), ("moffat3", 3.0),
                       ("airy", 2.0)]:
        for seed in (11, 12):
            data = psf_edges.field(kind, fwhm, 500, seed)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                d = _stars(assess_extension(data, header, name="sim"))
            if d:
                d.update(name=f"edges {kind} {fwhm:g} px s{seed}",
                         truth=np.full(d["x"].size, fwhm))
                out.append(d)
    return out


def real_set() -> list[dict[str, Any]]:
    """The NTT frame (with its weight) and the Spitzer mosaic."""
    out = []
    for stem, kw in [
        ("ntt_emmi_R_galaxies",
         {"weight": SHARED_DATA / "ntt_emmi_R_galaxies.weight.fits.gz"}),
        ("spitzer_irac_ch2_glimpse_example", {}),
    ]:
        path = SHARED_DATA / f"{stem}.fits.gz"
        if not path.exists():
            continue
        d = _stars(_quiet_assess(path, **kw).extensions[0])
        if d:
            d.update(name=stem, truth=None)
            out.append(d)
    return out


def evaluate(d: dict[str, Any], rng: np.random.Generator,
             ) -> dict[str, tuple[float, float, float]]:
    """Per estimator: FWHM_PIX, its deviation [%] and max move / error."""
    trend = _trend(d, d["fwhm"])
    ratio = d["fwhm"] / trend
    truth = (float(np.median(d["truth"])) if d["truth"] is not None
             else math.nan)
    out = {}
    for name, level in ESTIMATORS.items():
        value = float(np.median(trend)) * level(ratio)
        boot = [level(ratio[rng.integers(0, ratio.size, ratio.size)])
                for _ in range(100)]
        err = float(np.std(boot, ddof=1)) / level(ratio)
        moves = []
        for _ in range(20):
            p = d["fwhm"] * (1 + 1e-4 * rng.standard_normal(ratio.size))
            t = _trend(d, p)
            moves.append(abs(float(np.median(t)) * level(p / t) / value
                             - 1.0))
        out[name] = (value, 100.0 * (value / truth - 1.0),
                     max(moves) / err if err > 0 else math.inf)
    return out


def main(argv: list[str] | None = None) -> int:
    """Run the sets and print the table and the summary."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workdir", type=Path,
                        default=Path(tempfile.gettempdir())
                        / "qualityfits-regression")
    parser.add_argument("--sets", default="harness,sims,edges,real")
    args = parser.parse_args(argv)
    makers = {"harness": lambda: harness_set(args.workdir),
              "sims": sims_set, "edges": edges_set, "real": real_set}
    rng = np.random.default_rng(5)
    names = list(ESTIMATORS)
    print(f"{'CCD':36} {'n':>4} " + " ".join(f"{n:>20}" for n in names))
    for set_name in args.sets.split(","):
        rows = []
        for d in makers[set_name]():
            res = evaluate(d, rng)
            rows.append(res)
            print(f"{d['name'][:36]:36} {d['x'].size:4d} " + " ".join(
                f"{res[n][0]:7.3f} {res[n][1]:+6.2f}% {res[n][2]:4.2f}"
                for n in names), flush=True)
        if rows and set_name != "real":
            print(f"  {set_name}: deviation min..max %, max move/error")
            for n in names:
                dev = [r[n][1] for r in rows]
                move = max(r[n][2] for r in rows)
                print(f"    {n:10} {min(dev):+6.2f} .. {max(dev):+6.2f}"
                      f"   {move:5.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
