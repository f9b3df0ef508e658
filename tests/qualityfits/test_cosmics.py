"""Cosmic-ray detection (qualityfits.cosmics) against the simulator's truth.

The simulated images carry the pixels each cosmic ray touched
(``cr_mask``: deposit above 0.5 sky sigma) and one row per hit or track
(``cr_events``).  The sky is estimated as the pipeline does (sep, the
default configuration).  A "star core" is the 3 x 3 pixels around the
true centre of an unsaturated star with truth S/N >= 20; it counts as
flagged when one of its pixels is in the mask and not a truth CR pixel.
No timing here: speed lives in ``benchmarks/bench_cosmics.py``.
"""

from __future__ import annotations

import dataclasses
import importlib
import warnings
from pathlib import Path
from typing import Any

import astroscrappy
import numpy as np
import pytest
import sep
from astropy.io import fits
from astroscrappy.utils import sepmedfilt5, sepmedfilt7, sepmedfilt9
from scipy import ndimage
from testkit import shared_file
from threadpoolctl import threadpool_info, threadpool_limits

from qualityfits import cosmics
from qualityfits.background import sep_background
from qualityfits.config import QualityConfig
from qualityfits.cosmics import EVENT_SIGCLIP, CosmicRays, find_cosmic_rays
from qualityfits.datasets import (
    SimulatedImage,
    SimulationParams,
    simulate_image,
)

ROOT = Path(__file__).resolve().parents[2]
EIGHT = np.ones((3, 3), dtype=bool)

#: Many cosmic rays on few stars: completeness statistics.
CR_RICH = SimulationParams(
    shape=(1024, 1024), fwhm=4.0, fwhm_variation=0.1, n_stars=100,
    n_galaxies=200, n_cr_hits=200, n_cr_tracks=20, sky=1200.0,
)
#: Many stars, a MegaCam-like density of cosmic rays x 3: star cores.
STAR_RICH = SimulationParams(
    shape=(1024, 1024), fwhm=4.0, fwhm_variation=0.1, n_stars=600,
    n_galaxies=300, n_cr_hits=100, n_cr_tracks=10, sky=1200.0,
)


def _inputs(image: SimulatedImage) -> dict[str, Any]:
    """Sky-subtracted pixels, RMS map and sky level, as the pipeline."""
    pix = np.array(image.data, dtype=np.float32)
    bad = np.zeros(pix.shape, dtype=bool)
    bkg = sep_background(pix, bad, QualityConfig())
    sub = pix.copy()
    bkg.subfrom(sub)
    return {"sub": sub, "rms": bkg.rms(), "sky": float(bkg.globalback)}


def _find(image: SimulatedImage, inputs: dict[str, Any],
          bad: np.ndarray | None = None, **kwargs: Any) -> CosmicRays:
    header = image.header
    return find_cosmic_rays(
        inputs["sub"], inputs["rms"], bad, gain=header["GAIN"],
        read_noise=header["RDNOISE"],
        saturation=header["SATURATE"] - inputs["sky"], **kwargs,
    )


def _truth_groups(image: SimulatedImage) -> tuple[np.ndarray, int]:
    labels, n = ndimage.label(image.cr_mask, structure=EIGHT)
    return labels, int(n)


def _star_cores(image: SimulatedImage) -> list[tuple[slice, slice]]:
    ny, nx = image.data.shape
    boxes = []
    for row in image.stars:
        if row["saturated"] or row["snr"] < 20:
            continue
        j, i = round(row["y"]), round(row["x"])
        if 0 <= j < ny and 0 <= i < nx:
            boxes.append((slice(max(j - 1, 0), j + 2),
                          slice(max(i - 1, 0), i + 2)))
    return boxes


def _cores_flagged(image: SimulatedImage, mask: np.ndarray) -> int:
    truth = image.cr_mask
    return sum(bool((mask[b] & ~truth[b]).any()) for b in _star_cores(image))


def _simulate(params: SimulationParams, fwhm: float,
              seed: int) -> dict[str, Any]:
    image = simulate_image(dataclasses.replace(params, fwhm=fwhm),
                           seed=seed)
    inputs = _inputs(image)
    return {"image": image, "inputs": inputs, "crs": _find(image, inputs)}


@pytest.fixture(scope="module")
def cr_rich() -> list[dict[str, Any]]:
    """Six CR-rich images: FWHM 4 and 2.5 px, three seeds each."""
    return [_simulate(CR_RICH, fwhm, seed) for fwhm in (4.0, 2.5)
            for seed in (11, 12, 13)]


@pytest.fixture(scope="module")
def star_rich() -> list[dict[str, Any]]:
    """Four star-rich images: FWHM 4 and 2.5 px, two seeds each."""
    return [_simulate(STAR_RICH, fwhm, seed) for fwhm in (4.0, 2.5)
            for seed in (21, 22)]


class TestSimulated:
    def test_finds_95_percent_of_cr_pixels(self, cr_rich):
        found = truth = 0
        for case in cr_rich:
            t = case["image"].cr_mask
            f = np.count_nonzero(case["crs"].mask & t)
            # One long faint track along a row can cost an image of a
            # million pixels a few per cent (astroscrappy: 80-88 %).
            assert f >= 0.93 * np.count_nonzero(t)
            found += f
            truth += np.count_nonzero(t)
        assert found >= 0.95 * truth

    def test_finds_every_event(self, cr_rich):
        for case in cr_rich:
            labels, n = _truth_groups(case["image"])
            found = np.unique(labels[case["crs"].mask & (labels > 0)])
            assert found.size >= 0.99 * n

    def test_tracks_are_found_whole(self, cr_rich):
        fractions = []
        for case in cr_rich:
            image, mask = case["image"], case["crs"].mask
            labels, _ = _truth_groups(image)
            for row in image.cr_events:
                if row["kind"] != "track":
                    continue
                j, i = round(row["y"]), round(row["x"])
                if not (0 <= j < labels.shape[0]
                        and 0 <= i < labels.shape[1] and labels[j, i]):
                    continue
                members = labels == labels[j, i]
                fractions.append(np.count_nonzero(members & mask)
                                 / np.count_nonzero(members))
        assert len(fractions) >= 100
        # Tracks are followed over most of their length: all but their
        # faintest edge pixels are found.
        assert np.mean(fractions) >= 0.95
        assert np.median(fractions) >= 0.97
        assert np.mean(np.array(fractions) < 0.8) < 0.03

    def test_mask_is_not_much_larger_than_the_truth(self, cr_rich):
        # The growth takes the partly covered pixels along tracks; it
        # must not take whole neighbourhoods.
        for case in cr_rich:
            truth = case["image"].cr_mask
            flagged = np.count_nonzero(case["crs"].mask)
            assert flagged < 2.0 * np.count_nonzero(truth)

    def test_n_events_near_the_truth(self, cr_rich):
        for case in cr_rich:
            _, n_truth = _truth_groups(case["image"])
            crs = case["crs"]
            _, n_mask = ndimage.label(crs.mask, structure=EIGHT)
            assert crs.n_events == n_mask
            # A few noise peaks pass L.A.Cosmic's 4.5-sigma test (as they
            # do astroscrappy's); a few neighbouring rays merge.
            assert 0.9 * n_truth <= crs.n_events <= 1.2 * n_truth

    def test_event_sigclip_counts_the_cosmic_rays(self, cr_rich):
        # Without the noise peaks, n_events is the number of rays (a few
        # merge), and no ray is lost.
        for case in cr_rich:
            image = case["image"]
            crs = _find(image, case["inputs"], event_sigclip=EVENT_SIGCLIP)
            labels, n_truth = _truth_groups(image)
            assert 0.95 * n_truth <= crs.n_events <= 1.02 * n_truth
            found = np.unique(labels[crs.mask & (labels > 0)])
            assert found.size >= 0.99 * n_truth
            # It only removes groups.
            assert not (crs.mask & ~case["crs"].mask).any()

    def test_input_is_not_modified(self, cr_rich):
        case = cr_rich[0]
        inputs = case["inputs"]
        before = inputs["sub"].copy()
        _find(case["image"], inputs)
        np.testing.assert_array_equal(inputs["sub"], before)

    def test_fewer_than_1_percent_of_star_cores_flagged(self, star_rich):
        n_cores = sum(len(_star_cores(c["image"])) for c in star_rich)
        flagged = sum(_cores_flagged(c["image"], c["crs"].mask)
                      for c in star_rich)
        assert n_cores >= 600
        assert flagged < 0.01 * n_cores

    def test_scalar_rms_gives_nearly_the_same_answer(self, star_rich):
        for case in star_rich:
            inputs = case["inputs"]
            scalar = dict(inputs, rms=float(np.median(inputs["rms"])))
            mask = _find(case["image"], scalar).mask
            reference = case["crs"].mask
            differ = np.count_nonzero(mask ^ reference)
            assert differ <= 0.05 * np.count_nonzero(reference)


def test_cr_free_image_has_no_more_detections_than_astroscrappy():
    params = dataclasses.replace(CR_RICH, n_cr_hits=0, n_cr_tracks=0)
    image = simulate_image(params, seed=31)
    crs = _find(image, _inputs(image))
    header = image.header
    ref, _ = astroscrappy.detect_cosmics(
        np.asarray(image.data, dtype=np.float32), gain=header["GAIN"],
        readnoise=header["RDNOISE"],
        satlevel=header["SATURATE"] * header["GAIN"])
    _, n_ref = ndimage.label(ref, structure=EIGHT)
    # Noise peaks alone: L.A.Cosmic's false-positive rate at 4.5 sigma,
    # ~15 per million pixels here.
    assert crs.n_events <= max(n_ref, 5)
    assert np.count_nonzero(crs.mask) < 1e-4 * crs.mask.size
    # With an event threshold, hardly any.
    strict = _find(image, _inputs(image), event_sigclip=EVENT_SIGCLIP)
    assert strict.n_events <= 1


def test_saturated_stars_are_not_flagged():
    params = dataclasses.replace(STAR_RICH, saturation=15000.0,
                                 n_cr_hits=0, n_cr_tracks=0)
    image = simulate_image(params, seed=41)
    mask = _find(image, _inputs(image)).mask
    saturated = [row for row in image.stars if row["saturated"]]
    assert len(saturated) >= 10
    for row in saturated:
        j, i = round(row["y"]), round(row["x"])
        box = mask[max(j - 4, 0):j + 5, max(i - 4, 0):i + 5]
        assert not box.any(), (row["x"], row["y"])


def test_saturated_star_with_unknown_level_is_not_flagged():
    # A summed image gives no saturation level; a saturated star's core
    # (wrapped to low values here, as the NTT image of ../shared/data
    # has one) must not be taken for cosmic rays.
    image = simulate_image(dataclasses.replace(
        STAR_RICH, n_cr_hits=0, n_cr_tracks=0), seed=42)
    inputs = _inputs(image)
    sub = inputs["sub"]
    j, i = 500, 500
    y, x = np.mgrid[-10:11, -10:11]
    sub[j - 10:j + 11, i - 10:i + 11] += (
        90000.0 * np.exp(-(x**2 + y**2) / (2 * 1.4**2))).astype(np.float32)
    sub[j, i - 1] = sub[j + 1, i] = -2000.0
    crs = find_cosmic_rays(sub, inputs["rms"], None, gain=None,
                           read_noise=None, saturation=None)
    assert not crs.mask[j - 4:j + 5, i - 4:i + 5].any()


def test_bad_pixels_are_ignored(cr_rich):
    case = cr_rich[0]
    image, inputs = case["image"], case["inputs"]
    rng = np.random.default_rng(5)
    bad = np.zeros(image.data.shape, dtype=bool)
    bad[:, 300] = True                       # a bad column
    bad[rng.integers(0, 1024, 500), rng.integers(0, 1024, 500)] = True
    sub = inputs["sub"].copy()
    # As the pipeline leaves them: pixel zeroed, then the sky subtracted.
    sub[bad] = -inputs["sky"]
    crs = _find(image, dict(inputs, sub=sub), bad=bad)
    assert not crs.mask[bad].any()
    # No false detections along the column or beside the bad pixels.
    near = ndimage.binary_dilation(bad, structure=EIGHT) & ~bad
    false = crs.mask & near & ~image.cr_mask
    assert np.count_nonzero(false) <= 0.01 * np.count_nonzero(near)
    # Elsewhere the answer is unchanged.
    far = ~ndimage.binary_dilation(bad, structure=EIGHT, iterations=10)
    differ = np.count_nonzero((crs.mask ^ case["crs"].mask) & far)
    assert differ <= 0.02 * np.count_nonzero(case["crs"].mask)


def test_cosmic_rays_at_the_edges_are_found():
    rng = np.random.default_rng(3)
    sub = rng.normal(0.0, 20.0, (300, 200)).astype(np.float32)
    hits = [(0, 0), (0, 100), (299, 199), (150, 0), (150, 199), (1, 1)]
    for j, i in hits:
        sub[j, i] += 800.0
    crs = find_cosmic_rays(sub, 20.0, None, gain=2.0, read_noise=5.0,
                           saturation=None)
    for j, i in hits:
        assert crs.mask[j, i], (j, i)
    labels, _ = ndimage.label(crs.mask, structure=EIGHT)
    # Five events ((0, 0) and (1, 1) touch), plus at most a noise peak or
    # two on these 60 000 pixels.
    assert len({labels[j, i] for j, i in hits}) == 5
    assert 5 <= crs.n_events <= 8


@pytest.mark.parametrize("shape", [(1, 1), (1, 40), (3, 3), (40, 1),
                                   (17, 5)])
def test_tiny_images(shape):
    rng = np.random.default_rng(0)
    sub = rng.normal(0.0, 1.0, shape).astype(np.float32)
    crs = find_cosmic_rays(sub, 1.0, None, gain=1.0, read_noise=None,
                           saturation=None)
    assert crs.mask.shape == shape
    assert crs.mask.dtype == np.bool_


def test_filters_run_on_one_openmp_thread(monkeypatch):
    """Whatever the caller allows: more made the step 2x slower.

    astroscrappy's filters (its dilation; its median filters were used
    too) start an OpenMP thread per core; in ``assess(jobs=1)`` nothing
    else limits them.  The filter is watched (not replaced) for the
    number of threads it may use.
    """
    def openmp_threads() -> set[int]:
        return {lib["num_threads"] for lib in threadpool_info()
                if lib["user_api"] == "openmp"}

    seen: list[set[int]] = []
    original = cosmics._Stack.dilate

    def watched(self, mask):
        seen.append(openmp_threads())
        return original(self, mask)

    monkeypatch.setattr(cosmics._Stack, "dilate", watched)
    rng = np.random.default_rng(1)
    sub = rng.normal(0.0, 10.0, (200, 200)).astype(np.float32)
    sub[50, 60] += 500.0
    with threadpool_limits(limits=2, user_api="openmp"):
        assert openmp_threads() == {2}
        crs = find_cosmic_rays(sub, 10.0, None, gain=1.5, read_noise=5.0,
                               saturation=None)
        assert openmp_threads() == {2}  # the caller's limit is back
    assert crs.mask[50, 60]
    assert seen
    assert all(threads == {1} for threads in seen)


@pytest.mark.parametrize("width", [5, 7, 9])
@pytest.mark.parametrize("shape", [(28 * 40, 28), (8200, 28), (13, 40),
                                   (9, 9), (4, 100), (100, 4)])
def test_separable_median_is_astroscrappys(width, shape):
    """`_sepmed` gives astroscrappy's ``sepmedfilt`` values exactly.

    Noise, ties (few distinct values), zeros and a window-stack shape
    taller than `_SEPMED_ROWS` (its blocks of rows), and shapes
    narrower than the filter (the input comes back).
    """
    rng = np.random.default_rng(width * 1000 + shape[0])
    filt = {5: sepmedfilt5, 7: sepmedfilt7, 9: sepmedfilt9}[width]
    noise = rng.normal(0.0, 10.0, shape).astype(np.float32)
    noise[rng.random(shape) < 0.05] = 0.0
    ties = rng.integers(-2, 3, shape).astype(np.float32)
    for image in (noise, ties):
        before = image.copy()
        out = cosmics._sepmed(image, width)
        assert np.array_equal(image, before)  # not modified
        assert out.dtype == np.float32
        assert np.array_equal(out, filt(image))


def test_empty_result_is_valid():
    sub = np.zeros((64, 64), dtype=np.float32)
    crs = find_cosmic_rays(sub, 1.0, None, gain=None, read_noise=None,
                           saturation=None)
    assert crs.n_events == 0
    assert not crs.mask.any()


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"sub": np.zeros(10, dtype=np.float32)}, "2-d"),
    ({"rms": np.ones((5, 5), dtype=np.float32)}, "rms has shape"),
    ({"rms": 0.0}, "rms must be positive"),
    ({"bad": np.zeros((5, 5), dtype=bool)}, "bad has shape"),
    ({"bad": np.ones((20, 20), dtype=bool)}, "every pixel is bad"),
    ({"gain": -1.0}, "gain must be positive"),
    ({"read_noise": float("nan")}, "read_noise must be positive"),
    ({"saturation": 0.0}, "saturation must be positive"),
    ({"sigclip": 0.0}, "sigclip must be positive"),
    ({"objlim": float("inf")}, "objlim must be positive"),
    ({"event_sigclip": -1.0}, "event_sigclip must be positive"),
    ({"pixel_noise": -1.0}, "pixel_noise must be finite and not negative"),
    ({"pixel_noise": float("nan")}, "pixel_noise must be finite"),
])
def test_bad_arguments_raise_value_error(kwargs, match):
    args: dict[str, Any] = {
        "sub": np.zeros((20, 20), dtype=np.float32), "rms": 1.0,
        "bad": None, "gain": 1.0, "read_noise": 5.0, "saturation": None,
    }
    args.update(kwargs)
    sub, rms, bad = args.pop("sub"), args.pop("rms"), args.pop("bad")
    with pytest.raises(ValueError, match=match):
        find_cosmic_rays(sub, rms, bad, **args)


@pytest.mark.slow
def test_full_size_megacam_ccd(monkeypatch):
    """The benchmark's CCD: 2048 x 4612, 300 hits and 30 tracks."""
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    bench = importlib.import_module("bench_exposure")
    params = SimulationParams(**bench.exposure_params(dtype="float32",
                                                      quick=False))
    image = simulate_image(params, seed=51)
    crs = _find(image, _inputs(image))
    truth = image.cr_mask
    assert np.count_nonzero(crs.mask & truth) >= 0.95 * np.count_nonzero(
        truth)
    labels, n = _truth_groups(image)
    assert np.unique(labels[crs.mask & truth]).size >= 0.99 * n
    n_cores = len(_star_cores(image))
    assert _cores_flagged(image, crs.mask) < 0.01 * n_cores


# ----------------------------------------------------------------- real


def _read(name: str, hdu: int = 0) -> tuple[np.ndarray, fits.Header]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with fits.open(shared_file(name)) as hdus:
            return (np.asarray(hdus[hdu].data, dtype=np.float32),
                    hdus[hdu].header.copy())


def _real(data: np.ndarray, *, gain: float | None,
          read_noise: float | None, saturation: float | None
          ) -> tuple[CosmicRays, np.ndarray, dict[str, Any]]:
    """Ours (pipeline inputs) and astroscrappy at its defaults."""
    pix = np.ascontiguousarray(data)
    bad = np.zeros(pix.shape, dtype=bool)
    bkg = sep_background(pix, bad, QualityConfig())
    sub = pix.copy()
    bkg.subfrom(sub)
    rms = bkg.rms()
    ours = find_cosmic_rays(
        sub, rms, None, gain=gain, read_noise=read_noise,
        saturation=None if saturation is None
        else saturation - bkg.globalback)
    kwargs: dict[str, float] = {}
    if gain is not None:
        kwargs["gain"] = gain
    if read_noise is not None:
        kwargs["readnoise"] = read_noise
    if saturation is not None:
        kwargs["satlevel"] = saturation * (gain or 1.0)
    ref, _ = astroscrappy.detect_cosmics(pix, **kwargs)
    return ours, ref, {"sub": sub, "rms": rms}


def _stellar_peaks(sub: np.ndarray, rms: np.ndarray) -> list[tuple[int,
                                                                   int]]:
    """Peaks of round, unblended 10-sigma sources on the stellar locus."""
    objs = sep.extract(sub, 10.0, err=rms, minarea=5, filter_kernel=None)
    objs = objs[((objs["flag"] & sep.OBJ_MERGED) == 0)
                & (objs["a"] < 1.3 * objs["b"])]
    radius, flag = sep.flux_radius(sub, objs["x"], objs["y"],
                                   6.0 * objs["a"], 0.5, subpix=5)
    objs, radius = objs[flag == 0], radius[flag == 0]
    locus = float(np.median(np.sort(radius)[: (len(radius) + 1) // 2]))
    stars = objs[np.abs(radius - locus) < 0.2 * locus]
    return [(int(s["ypeak"]), int(s["xpeak"])) for s in stars]


def _flagged(mask: np.ndarray, peaks: list[tuple[int, int]]) -> int:
    return sum(bool(mask[max(j - 1, 0):j + 2, max(i - 1, 0):i + 2].any())
               for j, i in peaks)


@pytest.mark.realdata
def test_ntt_image_agrees_with_astroscrappy():
    """NTT/EMMI, 1024 x 1024, no GAIN or SATURATE keyword: 87 events.

    astroscrappy's events missed are three bright stars at the image
    edge (its median filters are not computed near the edges).
    """
    data, _ = _read("ntt_emmi_R_galaxies.fits.gz")
    ours, ref, inputs = _real(data, gain=None, read_noise=None,
                              saturation=None)
    labels, n_ref = ndimage.label(ref, structure=EIGHT)
    found = np.unique(labels[ours.mask & ref]).size
    assert n_ref >= 50
    assert found >= 0.95 * n_ref
    peaks = _stellar_peaks(inputs["sub"], inputs["rms"])
    assert len(peaks) >= 20
    assert _flagged(ours.mask, peaks) <= _flagged(ref, peaks)


@pytest.mark.realdata
def test_decam_pipeline_cosmic_ray_is_found():
    """The DECam Community Pipeline flags one 177-pixel streak (DQ 5)."""
    data, header = _read("decam_c4d_170316_062107_ooi_z_ls9.N2.fits.gz", 1)
    dq, _ = _read("decam_c4d_170316_062107_ood_z_ls9.N2.fits.gz", 1)
    gain = float(np.mean([header["GAINA"], header["GAINB"]]))
    ours, ref, _ = _real(data, gain=gain, read_noise=header["RDNOISEA"],
                         saturation=header["SATURATE"])
    cp = dq == 5
    assert np.count_nonzero(cp) == 177
    assert (ours.mask & cp).any()
    # The streak itself is found well, better than by astroscrappy.
    assert np.count_nonzero(ours.mask & cp) >= np.count_nonzero(ref & cp)
    labels, n_ref = ndimage.label(ref, structure=EIGHT)
    assert np.unique(labels[ours.mask & ref]).size == n_ref


@pytest.mark.realdata
def test_megacam_cutout_agrees_with_astroscrappy():
    data, header = _read("megacam_1616681p_ccd21_cutout.fits.gz")
    ours, ref, _ = _real(data, gain=header["GAIN"],
                         read_noise=header["RDNOISE"],
                         saturation=header["SATURATE"])
    labels, n_ref = ndimage.label(ref, structure=EIGHT)
    assert n_ref >= 3
    assert np.unique(labels[ours.mask & ref]).size == n_ref
