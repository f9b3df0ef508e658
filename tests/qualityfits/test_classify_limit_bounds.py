"""The 2-feature bounds of `benchmarks/classify_limit.py` (issue 15).

The bound of a cut on S and one other feature, the rule it comes
from, the recording of the classifier's inputs the features are
measured on, and the comparison of S with the Neyman-Pearson test.
Constructed populations whose answer follows from their construction.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from qualityfits import pipeline
from qualityfits.datasets import SimulationParams, simulate_image

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"
if str(BENCHMARKS) not in sys.path:
    sys.path.insert(0, str(BENCHMARKS))

import classify_limit  # noqa: E402


def _population(seed: int, n: int = 1500) -> dict[str, np.ndarray]:
    """Stars and galaxies whose S overlaps; 'sharp' separates them.

    'useless' has the same distribution for both.
    """
    rng = np.random.default_rng(seed)
    star = np.arange(2 * n) < n
    err = np.full(2 * n, 0.5)
    s = np.where(star, 0.0, 1.0) + rng.normal(0.0, 0.5, 2 * n)
    return {
        "star": star, "S": s, "err": err,
        "snr": rng.uniform(10.0, 100.0, 2 * n),
        "sharp": np.where(star, 0.0, 1.0) + rng.normal(0.0, 0.05, 2 * n),
        "useless": rng.normal(0.0, 1.0, 2 * n),
    }


def test_rule_reproduces_its_bound() -> None:
    d = _population(11)
    for feature in (None, "useless", "sharp"):
        best, rule = classify_limit._pair_rule(d, feature)
        called = rule.stars(d, feature)
        assert called[d["star"]].mean() == best
        assert called[~d["star"]].mean() <= classify_limit.MAX_CONTAMINATION


def test_second_feature_counts_only_when_it_separates() -> None:
    d = _population(12)
    alone, _ = classify_limit._pair_rule(d, None)
    useless = classify_limit._best_pair(d, "useless")
    sharp = classify_limit._best_pair(d, "sharp")
    # S alone: two populations one sigma apart, 3 % of the galaxies
    # below the cut, about a third of the stars above it.
    assert 0.3 < alone < 0.8
    assert abs(useless - alone) < 0.05
    assert sharp > 0.99


def test_rule_chosen_on_one_sample_applies_to_another() -> None:
    train, test = _population(13), _population(14)
    out = classify_limit._cross(train, test, "sharp")
    assert out["pair"][0] > 0.99
    assert out["pair"][1] < 0.06
    assert out["line"][0] < 0.8


def test_features_are_measured_on_the_classifier_inputs() -> None:
    params = SimulationParams(shape=(512, 512), fwhm=4.0, n_stars=60,
                              n_galaxies=80, n_cr_hits=0, n_cr_tracks=0)
    sim = simulate_image(params, seed=4711)
    real = pipeline.classify
    with classify_limit._recording() as seen:
        report = pipeline.assess_extension(sim.data, sim.header, name="t")
    assert pipeline.classify is real
    assert report.sources is not None
    assert seen.src is not None
    assert seen.result is not None
    assert seen.psf is not None
    assert len(seen.src) == len(report.sources)
    np.testing.assert_array_equal(
        np.asarray(report.sources["SPREAD_MODEL"]), seen.result.spread)
    feats = classify_limit._features(seen)
    assert set(classify_limit.FEATURES) <= set(feats)
    psf_stars = seen.psf.stars.index
    for name in ("S 1.75 FWHM", "S 2.5 FWHM", "S no plane"):
        values = feats[name]
        assert values.shape == (len(seen.src),)
        # Zero on the brighter half of the PSF stars, as S, and larger
        # on the sources the classifier finds extended.
        err = feats[name + " err"][psf_stars]
        bright = np.isfinite(values[psf_stars]) & (err <= np.nanmedian(err))
        assert abs(np.median(values[psf_stars][bright])) < 1e-12
        galaxies = seen.result.cls == 1
        assert np.nanmedian(values[galaxies]) > np.nanmedian(
            values[psf_stars])


def test_s_is_no_better_than_the_neyman_pearson_test() -> None:
    for case in classify_limit.CASES:
        t = classify_limit._theory(classify_limit._params(case.changes))
        assert 0.9 < t["efficiency"] <= 1.0
        # More pixels and a known sky carry more information.
        assert t["sep20_3fwhm"] > t["sep20_stamp"]
        assert t["sep20_stamp_sky_known"] > t["sep20_stamp"]
        assert t["sep20_3fwhm_sky_known"] >= t["sep20_3fwhm"]
