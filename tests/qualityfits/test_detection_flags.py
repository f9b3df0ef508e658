"""Per-source flags of `qualityfits.detection.measure` (BAD_PIXELS).

`measure` counts the bad pixels of a source's AUTO aperture only where
sep met a masked pixel (the HASMASKED flag of the photometry); these
tests count them in every aperture, as SExtractor's FLAGS would, and
compare.  Two images: the project's simulator, and one drawn here
independently (Gaussian blobs on white noise), each with bad columns,
a bad block and scattered bad pixels.
"""

from __future__ import annotations

import numpy as np
import pytest
import sep

from qualityfits.background import sep_background
from qualityfits.config import QualityConfig
from qualityfits.datasets import SimulationParams, simulate_image
from qualityfits.detection import (
    KRON_FACTOR,
    KRON_MIN_RADIUS,
    DetectionOverflowError,
    SourceFlag,
    configure_sep,
    extract,
    measure,
)


def _blobs(seed: int) -> np.ndarray:
    """Round and elongated Gaussian sources on white noise, not simulated."""
    rng = np.random.default_rng(seed)
    ny, nx = 600, 500
    yy, xx = np.mgrid[:ny, :nx]
    image = rng.normal(300.0, 8.0, (ny, nx))
    for _ in range(250):
        x0, y0 = rng.uniform(0, nx), rng.uniform(0, ny)
        sx = rng.uniform(1.0, 4.0)
        sy = sx * rng.uniform(0.5, 1.0)
        flux = 10 ** rng.uniform(2.5, 5.0)
        box = (slice(max(int(y0) - 20, 0), int(y0) + 21),
               slice(max(int(x0) - 20, 0), int(x0) + 21))
        r2 = ((xx[box] - x0) / sx) ** 2 + ((yy[box] - y0) / sy) ** 2
        image[box] += flux / (2 * np.pi * sx * sy) * np.exp(-0.5 * r2)
    return image.astype(np.float32)


def _simulated(seed: int) -> np.ndarray:
    params = SimulationParams(shape=(512, 512), n_stars=150,
                              n_galaxies=250, n_cr_hits=0, n_cr_tracks=0)
    return np.asarray(simulate_image(params, seed=seed).data,
                      dtype=np.float32)


def _bad_pixels(shape: tuple[int, int], seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    bad = np.zeros(shape, dtype=bool)
    bad[:, rng.integers(0, shape[1], 3)] = True
    j, i = rng.integers(0, shape[0] - 20), rng.integers(0, shape[1] - 20)
    bad[j:j + 15, i:i + 20] = True
    bad.flat[rng.integers(0, bad.size, bad.size // 500)] = True
    return bad


@pytest.mark.parametrize("make", [_simulated, _blobs])
def test_bad_pixel_flags_match_a_count_in_every_aperture(make):
    configure_sep()
    config = QualityConfig()
    pix = make(7)
    bad = _bad_pixels(pix.shape, 8)
    bkg = sep_background(pix, bad, config)
    sub = pix.copy()
    bkg.subfrom(sub)
    rms = bkg.rms()
    objects, segmap = extract(sub, rms, bad, config)
    src = measure(sub, pix, rms, bad, objects, segmap, gain=1.5,
                  saturation=None, config=config)
    assert len(src) > 100
    # Every aperture, as measure built it (the Kron radius it found).
    scale = np.maximum(KRON_FACTOR * src.kron_radius, KRON_MIN_RADIUS)
    nbad, _, _ = sep.sum_ellipse(bad.astype(np.float32), src.x, src.y,
                                 src.a, src.b, src.theta, scale, subpix=1)
    flagged = (src.flags & SourceFlag.BAD_PIXELS) != 0
    expected = nbad > 0.5
    assert 5 <= int(expected.sum()) < len(src) - 5  # both kinds are seen
    np.testing.assert_array_equal(flagged, expected)


def test_degenerate_second_moments_are_measured_in_a_circle():
    """sep's b or theta can be NaN (a source on the edge of a zeroed
    third of the SAAO frame): sep's photometry refused the whole CCD,
    'invalid aperture parameters', an internal error.  Such a source is
    measured in a circle and its aperture flagged; the others unchanged.
    """
    configure_sep()
    config = QualityConfig()
    pix = _blobs(11)
    bad = np.zeros(pix.shape, dtype=bool)
    bkg = sep_background(pix, bad, config)
    sub = pix.copy()
    bkg.subfrom(sub)
    rms = bkg.rms()
    objects, segmap = extract(sub, rms, bad, config)
    kwargs = {"gain": None, "saturation": None, "config": config}
    before = measure(sub, pix, rms, bad, objects, segmap, **kwargs)
    broken = objects.copy()
    broken["b"][3] = np.nan
    broken["theta"][5] = np.nan
    broken["a"][7] = np.nan
    after = measure(sub, pix, rms, bad, broken, segmap, **kwargs)
    hit = np.zeros(len(after), dtype=bool)
    hit[[3, 5, 7]] = True
    for field in ("a", "b", "theta", "flux", "r_half"):
        values = getattr(after, field)
        assert np.isfinite(values[hit]).all(), field
        np.testing.assert_array_equal(values[~hit],
                                      getattr(before, field)[~hit])
    assert (after.flags[hit] & SourceFlag.APER_CORRUPT).all()
    np.testing.assert_array_equal(after.flags[~hit], before.flags[~hit])
    # A circle, not the others' shapes.
    assert (after.a[hit] == 1.0).all()
    assert (after.b[hit] == 1.0).all()
    assert (after.theta[hit] == 0.0).all()
    assert (after.flux[hit] > 0).all()


def test_sep_capacity_limits_are_said_not_raised_as_internal():
    """sep's pixel stack and deblending limits end in a precise error.

    The limits are lowered here on a plain blob image (the pipeline's,
    3 000 000 pixels and 4096 parts, were reached by the Elixir mask
    with its median and 5 sigma subtracted: an internal error).
    """
    configure_sep()
    config = QualityConfig()
    yy, xx = np.mgrid[:200, :200]
    image = (1000.0 * np.exp(-((xx - 100.0) ** 2 + (yy - 100.0) ** 2)
                              / (2 * 40.0 ** 2))).astype(np.float32)
    image += np.random.default_rng(3).normal(0.0, 1.0, image.shape
                                             ).astype(np.float32)
    rms = np.ones_like(image)
    bad = np.zeros(image.shape, dtype=bool)
    # Two blobs that deblend, for the limit on parts.
    pair = np.zeros((100, 100), dtype=np.float32)
    for x0 in (40.0, 58.0):
        pair += (500.0 * np.exp(-((xx[:100, :100] - x0) ** 2
                                  + (yy[:100, :100] - 50.0) ** 2)
                                / (2 * 3.0 ** 2))).astype(np.float32)
    pair += np.random.default_rng(4).normal(0.0, 1.0, pair.shape
                                            ).astype(np.float32)
    try:
        sep.set_extract_pixstack(1000)
        with pytest.raises(DetectionOverflowError,
                           match=r"more than 1,000 pixels above the "
                           r"detection threshold in objects at once"):
            extract(image, rms, bad, config)
        configure_sep()
        sep.set_sub_object_limit(1)
        with pytest.raises(DetectionOverflowError,
                           match=r"a detection splits into more than 1 "
                           r"parts \(sep's deblending limit\)"):
            extract(pair, np.ones_like(pair), np.zeros(pair.shape, bool),
                    config)
    finally:
        configure_sep()
    assert len(extract(pair, np.ones_like(pair),
                       np.zeros(pair.shape, bool), config)[0]) == 2
    objects, _ = extract(image, rms, bad, config)  # within the limits
    assert len(objects) >= 1
