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
  median σ_S of those stars (the stars' S is 0 by construction).

CPU-heavy: run it under ``nice -n 19``.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from astropy.table import Table
from scipy.spatial import cKDTree

BENCHMARKS = Path(__file__).resolve().parent
if str(BENCHMARKS) not in sys.path:
    sys.path.insert(0, str(BENCHMARKS))

import regression  # noqa: E402

from qualityfits.config import QualityConfig  # noqa: E402
from qualityfits.datasets import SimulationParams, simulate_image  # noqa: E402
from qualityfits.pipeline import assess_extension  # noqa: E402

MAX_CONTAMINATION = 0.03


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


def _labelled(params: SimulationParams, seed: int,
              config: QualityConfig) -> dict[str, np.ndarray]:
    """S, σ_S, S/N and our class of the truth-labelled detections."""
    sim = simulate_image(params, seed=seed)
    report = assess_extension(sim.data, sim.header, name=f"s{seed}",
                              config=config)
    if not report.ok or report.sources is None:
        msg = f"seed {seed}: {report.error}"
        raise RuntimeError(msg)
    src = report.sources
    truth = {"stars": Table(sim.stars), "galaxies": Table(sim.galaxies)}
    regression.mark_dominant(truth, regression.TruthPsf(
        params.fwhm, params.beta, params.ellipticity, params.theta))
    x = np.asarray(src["X_IMAGE"], float) - 1
    y = np.asarray(src["Y_IMAGE"], float) - 1
    tree = cKDTree(np.column_stack([x, y]))
    out: dict[str, list[np.ndarray]] = {k: [] for k in
                                        ("star", "S", "err", "snr", "ours",
                                         "re")}
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


def measure(case: Case, config: QualityConfig) -> dict[str, Any]:
    """Pool the case's seeds and compute its figures."""
    params = _params(case.changes)
    parts = [_labelled(params, seed, config) for seed in case.seeds]
    d = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
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
        "best_line": _best_line(star, d["S"], d["err"], d["snr"]),
        "best_line_at_ours": _best_line(star, d["S"], d["err"], d["snr"],
                                        float(d["ours"][~star].mean())),
        "separation_snr20_30": float(
            np.nanmedian(d["S"][~star & (d["re"] < 2.5)])
            / np.nanmedian(d["err"][mid])),
    }


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
    args = parser.parse_args(argv)
    config = QualityConfig(class_confidence=args.class_confidence)
    rows = []
    head = (f"{'case':20s} {'N*':>4s} {'Ngal':>5s} {'ours compl':>10s} "
            f"{'ours gal>*':>10s} {'best S':>7s} {'best S/sig':>10s} "
            f"{'best line':>9s} {'line@ours':>9s} {'sep@20-30':>9s}")
    print(head)
    for case in CASES:
        if args.cases not in case.name:
            continue
        r = measure(case, config)
        rows.append(r)
        print(f"{r['case']:20s} {r['n_stars']:4d} {r['n_galaxies']:5d} "
              f"{r['ours_completeness']:10.3f} {r['ours_gal_as_star']:10.3f} "
              f"{r['best_S']:7.3f} {r['best_S_over_err']:10.3f} "
              f"{r['best_line']:9.3f} {r['best_line_at_ours']:9.3f} "
              f"{r['separation_snr20_30']:9.2f}",
              flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
