"""Cosmic-ray detection: ``qualityfits.cosmics`` against astroscrappy.

What it does, in one command (``python benchmarks/bench_cosmics.py``):

1. **Simulated CCDs.**  Builds ``--ccds`` MegaCam-like CCDs of
   2048 x 4612 pixels with `qualityfits.datasets.simulate_image` and the
   recipe of the exposure benchmark (``bench_exposure.exposure_params``:
   FWHM 4 px, 400 stars, 2000 galaxies, 300 cosmic-ray hits and 30
   tracks), one seed each.  For each, the sky is estimated as the
   pipeline does (`qualityfits.background.sep_background`, default
   `QualityConfig`), then:

   * **ours**: `find_cosmic_rays` on the background-subtracted pixels,
     timed (best of ``--repeat``, wall and CPU time, one thread) and, in
     a separate untimed call, its peak of traced numpy memory;
   * **astroscrappy at its defaults** (``detect_cosmics``: 4
     iterations, ``sigclip`` 4.5, ``objlim`` 5, ...) on the raw pixels
     (sky included, as it expects) with the header's gain and read noise
     and ``satlevel`` = SATURATE x gain (it works in electrons), timed
     once;

   and both masks are scored against the simulator's truth:

   * **CR pixels found**: truth pixels (CR deposit > 0.5 sky sigma,
     `SimulatedImage.cr_mask`) in the mask;
   * **CR events found**: 8-connected groups of truth pixels with at
     least one pixel in the mask; **tracks**: the fraction of the pixels
     of each track's group found, summed over tracks;
   * **star cores flagged**: unsaturated stars with truth S/N >= 20 whose
     3 x 3 core (around the pixel nearest the true centre) holds a
     flagged pixel that is not a truth CR pixel; "spurious" when no truth
     CR pixel lies within 2 pixels of the core;
   * purity (flagged pixels that are truth pixels), flagged groups, and
     groups without any truth pixel.

2. **Real frames** of ``../shared/data`` (``--data``): the science
   images, read as the pipeline reads them (first 2-d HDU, float32;
   the raw SAAO frame trimmed and overscan-subtracted with its
   TRIMSEC/BIASSEC).  Gain, read noise and saturation come from the
   header; the saturation falls back on the pipeline's
   `measure_saturation` for ours.  For each frame: astroscrappy's
   events (8-connected groups of its mask) and the fraction of them with
   at least one pixel in our mask; and the star cores each method flags.
   Star cores: sep sources at 10 sigma (5 pixels, no filter) that are
   round (a < 1.3 b), not blended, not near saturation, with a
   half-light radius within 20 % of the stellar locus (the median radius
   of the more compact half of them: cosmic rays are sharper, galaxies
   broader); the core is the 3 x 3 around the peak pixel.  The DECam
   frame's pipeline flags cosmic rays in its data-quality map (value 5):
   the events of that map found by each method are printed too.  The
   raw flat (NOT/ALFOSC), the raw bias (NTT/SUSI) and the bad-pixel mask
   are skipped: no sky, no stars, and for the two raw calibration frames
   astroscrappy's noise model (counts + read noise) does not apply to a
   bias level.

3. Prints a table of both, the ratios, and PASS/FAIL against the targets
   of the issue: >= 95 % of CR pixels found, < 1 % of star cores
   flagged, <= 1.5 s per 2048 x 4612 CCD on one core (CPU time), and on
   the real frames >= 95 % of astroscrappy's events found with no more
   star-core flags than astroscrappy.

Timings on a shared machine are noisy: the speed-up is the ratio of two
runs made in the same command on the same CCD.

Run ``python benchmarks/bench_cosmics.py --help`` for the options; see
``benchmarks/README.md``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
import tracemalloc
import warnings
from pathlib import Path
from typing import Any

# One thread: the pipeline runs one CCD per core.
for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import astroscrappy  # noqa: E402
import numpy as np  # noqa: E402
import sep  # noqa: E402
from astropy.io import fits  # noqa: E402
from scipy import ndimage  # noqa: E402

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(HERE))

from bench_exposure import exposure_params, machine_info  # noqa: E402

from qualityfits.background import sep_background  # noqa: E402
from qualityfits.config import QualityConfig  # noqa: E402
from qualityfits.cosmics import (  # noqa: E402
    estimate_fwhm,
    find_cosmic_rays,
)
from qualityfits.datasets import SimulationParams, simulate_image  # noqa: E402
from qualityfits.detection import measure_saturation  # noqa: E402
from qualityfits.io import header_number  # noqa: E402

#: Targets of the issue.
TARGET_PIXELS = 0.95
TARGET_CORES = 0.01
TARGET_SECONDS = 1.5
TARGET_SHAPE = (4612, 2048)
TARGET_REFERENCE_EVENTS = 0.95

#: Seed of the first simulated CCD; CCD k uses SEED + k.
SEED = 20_260_700
#: Stars whose truth S/N is at least this have their core checked.
CORE_MIN_SNR = 20.0
#: A flagged core is "spurious" when no truth CR pixel is this close.
SPURIOUS_DISTANCE = 2.0

DEFAULT_DATA = ROOT.parent / "shared" / "data"
#: Real frames: file, and what is done to them.
REAL_FRAMES = (
    "ntt_emmi_R_galaxies.fits.gz",
    "kpno_m51_B_devpix.fits.gz",
    "saao1m_ste3_raw_a8280271.fits.gz",
    "megacam_1616687p_ccd10_cutout.fits.gz",
    "megacam_1616681p_ccd21_cutout.fits.gz",
    "decam_c4d_170316_062107_ooi_z_ls9.N2.fits.gz",
)
SKIPPED_FRAMES = {
    "not_alfosc_flat_raw.fits.gz": "raw flat: no sky, no stars",
    "ntt_susi_bias_raw.fits.gz": (
        "raw bias: no sky or stars, and a bias level is not counts for "
        "astroscrappy's noise model"),
    "megacam_elixir_badpix_2004B.mask.0.36.01.fits.gz": "bad-pixel mask",
}
DECAM_DQ = "decam_c4d_170316_062107_ood_z_ls9.N2.fits.gz"
#: The DECam Community Pipeline's data-quality code for cosmic rays.
DECAM_DQ_CR = 5
GAIN_KEYS = ("GAIN", "EGAIN", "CCDGAIN")
RDNOISE_KEYS = ("RDNOISE", "READNOIS", "RON", "READNOISE")
SATURATION_KEYS = ("SATURATE", "SATLEVEL", "SATURATION")
EIGHT = np.ones((3, 3), dtype=bool)


# ------------------------------------------------------------- helpers


def _machine() -> dict[str, Any]:
    return {**machine_info(), "astroscrappy": astroscrappy.__version__,
            "sep": sep.__version__, "numpy": np.__version__}


def _timed(func: Any, repeat: int) -> tuple[Any, float, float]:
    """Call ``func`` ``repeat`` times; its result, best wall and CPU s."""
    walls, cpus, result = [], [], None
    for _ in range(repeat):
        w0, c0 = time.perf_counter(), time.process_time()
        result = func()
        walls.append(time.perf_counter() - w0)
        cpus.append(time.process_time() - c0)
    return result, min(walls), min(cpus)


def _peak_memory(func: Any) -> int:
    """Peak of the memory traced (numpy arrays included) during func."""
    tracemalloc.start()
    try:
        func()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return int(peak)


def _groups(mask: np.ndarray) -> tuple[np.ndarray, int]:
    labels, n = ndimage.label(mask, structure=EIGHT)
    return labels, int(n)


def _found_groups(labels: np.ndarray, n: int, mask: np.ndarray
                  ) -> np.ndarray:
    """Per group of ``labels``, whether ``mask`` touches it."""
    hit = np.zeros(n + 1, dtype=bool)
    hit[labels[mask]] = True
    return hit[1:]


def _pipeline_inputs(data: np.ndarray) -> dict[str, Any]:
    """The sky-subtracted pixels and RMS map, as the pipeline makes them."""
    pix = np.array(data, dtype=np.float32, order="C")
    bad = ~np.isfinite(pix)
    pix[bad] = 0.0
    bkg = sep_background(pix, bad, QualityConfig())
    sub = pix.copy()
    bkg.subfrom(sub)
    return {"pix": pix, "sub": sub, "rms": bkg.rms(), "bad": bad,
            "sky": float(bkg.globalback)}


def _psf_peaks(inputs: dict[str, Any], saturation: float | None,
               args: argparse.Namespace) -> dict[str, Any]:
    """What the pipeline gives `find_cosmic_rays` from `estimate_fwhm`.

    The PSF FWHM and the pixel noise it measured (nothing with
    ``--no-psf-protection``).
    """
    if args.no_psf_protection:
        return {}
    peaks = estimate_fwhm(inputs["sub"], inputs["bad"],
                          saturation=saturation)
    return {"psf_fwhm": peaks.fwhm, "pixel_noise": peaks.noise}


def _ratio(num: float, den: float) -> float:
    return num / den if den else math.nan


def _pct(x: float) -> str:
    return "  n/a " if not math.isfinite(x) else f"{100 * x:5.1f}%"


# -------------------------------------------------------- simulated CCDs


def _score_simulated(mask: np.ndarray, image: Any,
                     truth_labels: np.ndarray, n_truth: int,
                     distance: np.ndarray) -> dict[str, Any]:
    truth = image.cr_mask
    found_px = int(np.count_nonzero(mask & truth))
    events = _found_groups(truth_labels, n_truth, mask)
    # Tracks: the pixels of each track's group found.
    track_px = track_found = 0
    stars = image.stars
    for row in image.cr_events:
        if row["kind"] != "track" or not math.isfinite(row["x"]):
            continue
        j, i = round(row["y"]), round(row["x"])
        label = truth_labels[j, i] if truth[j, i] else 0
        if label == 0:
            continue
        members = truth_labels == label
        track_px += int(np.count_nonzero(members))
        track_found += int(np.count_nonzero(members & mask))
    ny, nx = mask.shape
    cores = flagged = spurious = 0
    for row in stars:
        if row["saturated"] or row["snr"] < CORE_MIN_SNR:
            continue
        j, i = round(row["y"]), round(row["x"])
        if not (0 <= j < ny and 0 <= i < nx):
            continue
        cores += 1
        box = (slice(max(j - 1, 0), j + 2), slice(max(i - 1, 0), i + 2))
        if (mask[box] & ~truth[box]).any():
            flagged += 1
            if distance[box].min() > SPURIOUS_DISTANCE:
                spurious += 1
    labels, n_groups = _groups(mask)
    with_truth = _found_groups(labels, n_groups, truth)
    n_flagged = int(np.count_nonzero(mask))
    return {
        "truth_pixels": int(np.count_nonzero(truth)),
        "found_pixels": found_px,
        "pixel_completeness": _ratio(found_px, np.count_nonzero(truth)),
        "truth_events": n_truth,
        "found_events": int(events.sum()),
        "event_completeness": _ratio(events.sum(), n_truth),
        "track_pixels": track_px,
        "track_pixels_found": track_found,
        "track_completeness": _ratio(track_found, track_px),
        "star_cores": cores,
        "star_cores_flagged": flagged,
        "star_cores_spurious": spurious,
        "star_core_fraction": _ratio(flagged, cores),
        "flagged_pixels": n_flagged,
        "purity": _ratio(found_px, n_flagged),
        "flagged_groups": n_groups,
        "groups_without_truth": int(np.count_nonzero(~with_truth)),
    }


def run_simulated(args: argparse.Namespace) -> dict[str, Any]:
    kwargs = exposure_params(dtype="float32", quick=args.quick)
    if args.fwhm is not None:
        kwargs["fwhm"] = args.fwhm
    if args.stars is not None:
        kwargs["n_stars"] = args.stars
    if args.cr_hits is not None:
        kwargs["n_cr_hits"] = args.cr_hits
    params = SimulationParams(**kwargs)
    ny, nx = params.shape
    print(f"\nsimulated CCDs: {args.ccds} x {nx}x{ny}, FWHM "
          f"{params.fwhm} px, {params.n_stars} stars, {params.n_galaxies} "
          f"galaxies, {params.n_cr_hits} CR hits + {params.n_cr_tracks} "
          f"tracks each (bench_exposure recipe)")
    header = (f"{'seed':>9} {'truth px/ev':>12} | {'side':<12} "
              f"{'pixels':>7} {'events':>7} {'tracks':>7} {'cores':>9} "
              f"{'purity':>7} {'groups':>7} {'cpu s':>7} {'wall s':>7}")
    print(header)
    ccds = []
    for k in range(args.ccds):
        seed = args.seed + k
        image = simulate_image(params, seed=seed)
        inputs = _pipeline_inputs(image.data)
        truth_labels, n_truth = _groups(image.cr_mask)
        distance = ndimage.distance_transform_edt(~image.cr_mask)
        hdr = image.header
        gain, rdnoise, satur = hdr["GAIN"], hdr["RDNOISE"], hdr["SATURATE"]

        def ours(inputs: dict[str, Any] = inputs,
                 gain: float = gain, rdnoise: float = rdnoise,
                 satur: float = satur) -> Any:
            above = satur - inputs["sky"]
            return find_cosmic_rays(
                inputs["sub"], inputs["rms"], inputs["bad"], gain=gain,
                read_noise=rdnoise, saturation=above,
                event_sigclip=args.event_sigclip,
                **_psf_peaks(inputs, above, args))

        result, wall, cpu = _timed(ours, args.repeat)
        peak = _peak_memory(ours)
        side = {"ours": {**_score_simulated(result.mask, image,
                                            truth_labels, n_truth,
                                            distance),
                         "n_events": result.n_events,
                         "wall_seconds": wall, "cpu_seconds": cpu,
                         "peak_traced_bytes": peak}}
        if not args.skip_reference:
            data = np.ascontiguousarray(image.data, dtype=np.float32)
            (ref_mask, _), rwall, rcpu = _timed(
                lambda data=data, gain=gain, rdnoise=rdnoise, satur=satur:
                astroscrappy.detect_cosmics(
                    data, gain=gain, readnoise=rdnoise,
                    satlevel=satur * gain),
                1)
            side["astroscrappy"] = {
                **_score_simulated(ref_mask, image, truth_labels, n_truth,
                                   distance),
                "wall_seconds": rwall, "cpu_seconds": rcpu}
        for name, s in side.items():
            lead = (f"{seed:>9} {s['truth_pixels']:>6}/{n_truth:<5}"
                    if name == "ours" else " " * 22)
            print(f"{lead} | {name:<12} {_pct(s['pixel_completeness'])} "
                  f"{_pct(s['event_completeness'])} "
                  f"{_pct(s['track_completeness'])} "
                  f"{s['star_cores_flagged']:>3}/{s['star_cores']:<5} "
                  f"{_pct(s['purity'])} {s['flagged_groups']:>7} "
                  f"{s['cpu_seconds']:7.2f} {s['wall_seconds']:7.2f}")
        ccds.append({"seed": seed, **side})

    def total(side: str, num: str, den: str) -> float:
        return _ratio(sum(c[side][num] for c in ccds),
                      sum(c[side][den] for c in ccds))

    summary: dict[str, Any] = {"shape": [ny, nx], "ccds": ccds}
    for side in ("ours", "astroscrappy"):
        if side not in ccds[0]:
            continue
        summary[side] = {
            "pixel_completeness": total(side, "found_pixels",
                                        "truth_pixels"),
            "event_completeness": total(side, "found_events",
                                        "truth_events"),
            "track_completeness": total(side, "track_pixels_found",
                                        "track_pixels"),
            "star_core_fraction": total(side, "star_cores_flagged",
                                        "star_cores"),
            "star_cores_flagged": sum(c[side]["star_cores_flagged"]
                                      for c in ccds),
            "star_cores_spurious": sum(c[side]["star_cores_spurious"]
                                       for c in ccds),
            "star_cores": sum(c[side]["star_cores"] for c in ccds),
            "purity": total(side, "found_pixels", "flagged_pixels"),
            "flagged_groups": sum(c[side]["flagged_groups"] for c in ccds),
            "groups_without_truth": sum(c[side]["groups_without_truth"]
                                        for c in ccds),
            "truth_events": sum(c[side]["truth_events"] for c in ccds),
            "cpu_seconds_per_ccd": float(np.mean(
                [c[side]["cpu_seconds"] for c in ccds])),
            "wall_seconds_per_ccd": float(np.mean(
                [c[side]["wall_seconds"] for c in ccds])),
            "cpu_seconds_worst": max(c[side]["cpu_seconds"] for c in ccds),
        }
    o = summary["ours"]
    o["peak_traced_bytes"] = max(c["ours"]["peak_traced_bytes"]
                                 for c in ccds)
    print("\nall CCDs   pixels  events  tracks  cores (spurious)  purity  "
          "cpu s/CCD  wall s/CCD  groups (no truth) / truth events")
    for side in ("ours", "astroscrappy"):
        if side not in summary:
            continue
        s = summary[side]
        print(f"{side:<12} {_pct(s['pixel_completeness'])} "
              f"{_pct(s['event_completeness'])} "
              f"{_pct(s['track_completeness'])}  "
              f"{s['star_cores_flagged']:>3}/{s['star_cores']} "
              f"({s['star_cores_spurious']})  {_pct(s['purity'])}  "
              f"{s['cpu_seconds_per_ccd']:8.2f}  "
              f"{s['wall_seconds_per_ccd']:9.2f}  "
              f"{s['flagged_groups']} ({s['groups_without_truth']}) / "
              f"{s['truth_events']}")
    print(f"ours: peak traced memory {o['peak_traced_bytes'] / 1e6:.0f} MB "
          f"(the image itself is {ny * nx * 4 / 1e6:.0f} MB)")
    if "astroscrappy" in summary:
        a = summary["astroscrappy"]
        summary["ratios"] = {
            "cpu": _ratio(a["cpu_seconds_per_ccd"], o["cpu_seconds_per_ccd"]),
            "wall": _ratio(a["wall_seconds_per_ccd"],
                           o["wall_seconds_per_ccd"]),
        }
        print(f"ratio astroscrappy/ours: CPU "
              f"{summary['ratios']['cpu']:.1f}x, wall "
              f"{summary['ratios']['wall']:.1f}x")
    # The time target is per full-size CCD: scale a --quick run by area.
    scale = (TARGET_SHAPE[0] * TARGET_SHAPE[1]) / (ny * nx)
    summary["targets"] = {
        "pixels": {"value": o["pixel_completeness"],
                   "target": TARGET_PIXELS,
                   "pass": o["pixel_completeness"] >= TARGET_PIXELS},
        "star_cores": {"value": o["star_core_fraction"],
                       "target": TARGET_CORES,
                       "pass": o["star_core_fraction"] < TARGET_CORES},
        "seconds_per_ccd": {"value": o["cpu_seconds_worst"] * scale,
                            "target": TARGET_SECONDS,
                            "pass": o["cpu_seconds_worst"] * scale
                            <= TARGET_SECONDS,
                            "scaled_from_shape": [ny, nx]},
    }
    return summary


# ------------------------------------------------------------ real frames


def _read(path: Path) -> tuple[np.ndarray, fits.Header]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with fits.open(path) as hdus:
            for hdu in hdus:
                if hdu.data is not None and hdu.data.ndim == 2:
                    data = np.asarray(hdu.data, dtype=np.float32)
                    return data, hdu.header.copy()
    raise ValueError(f"{path}: no 2-d image")


def _section(value: str) -> tuple[slice, slice]:
    """``[x1:x2,y1:y2]`` (FITS, 1-based, inclusive) as numpy slices."""
    xs, ys = value.strip("[]").split(",")
    x1, x2 = (int(v) for v in xs.split(":"))
    y1, y2 = (int(v) for v in ys.split(":"))
    return slice(y1 - 1, y2), slice(x1 - 1, x2)


def _prepare(data: np.ndarray, header: fits.Header) -> tuple[np.ndarray,
                                                              str]:
    """Overscan-subtract and trim a raw frame that says how."""
    if "BIASSEC" in header and "TRIMSEC" in header:
        bias = float(np.median(data[_section(header["BIASSEC"])]))
        trimmed = data[_section(header["TRIMSEC"])] - np.float32(bias)
        return np.ascontiguousarray(trimmed), (
            f"overscan {bias:.1f} ADU subtracted, trimmed to "
            f"{header['TRIMSEC']}")
    return data, ""


def _stars(sub: np.ndarray, rms: np.ndarray,
           saturation: float | None) -> tuple[np.ndarray, np.ndarray]:
    """Stars (see the docstring), and every source not sharper than one.

    The second set (any 10-sigma source whose half-light radius is at
    least 0.8 times the stellar locus, blended, elongated or at an edge
    included) tells which missed astroscrappy events sit on a source
    peak rather than being cosmic rays.
    """
    objs = sep.extract(sub, 10.0, err=rms, minarea=5, filter_kernel=None)
    if len(objs) == 0:
        return objs, objs
    radius, flag = sep.flux_radius(sub, objs["x"], objs["y"],
                                   6.0 * objs["a"], 0.5, subpix=5)
    keep = (((objs["flag"] & sep.OBJ_MERGED) == 0)
            & (objs["a"] < 1.3 * objs["b"]) & (flag == 0))
    if saturation is not None:
        keep &= objs["peak"] < 0.8 * saturation
    if not keep.any():
        return objs[keep], objs[keep]
    compact = np.sort(radius[keep])[: max(1, (int(keep.sum()) + 1) // 2)]
    locus = float(np.median(compact))
    stars = objs[keep & (np.abs(radius - locus) < 0.2 * locus)]
    return stars, objs[radius >= 0.8 * locus]


def _cores_flagged(mask: np.ndarray, stars: np.ndarray) -> int:
    n = 0
    for s in stars:
        j, i = int(s["ypeak"]), int(s["xpeak"])
        if mask[max(j - 1, 0):j + 2, max(i - 1, 0):i + 2].any():
            n += 1
    return n


def run_real(args: argparse.Namespace) -> dict[str, Any] | None:
    data_dir = args.data
    if not data_dir.is_dir():
        print(f"\nreal frames: {data_dir} is absent, skipped")
        return None
    print(f"\nreal frames ({data_dir}); skipped: " + "; ".join(
        f"{k} ({v})" for k, v in SKIPPED_FRAMES.items()))
    print(f"{'frame':<38} {'gain':>5} {'sat':>6} | {'ours ev':>7} "
          f"{'px':>5} {'s':>5} | {'astro ev':>8} {'px':>5} {'s':>5} | "
          f"{'found':>9} | {'stars':>5} {'cores ours/astro':>16}")
    frames = []
    for name in REAL_FRAMES:
        path = data_dir / name
        if not path.exists():
            print(f"{name}: absent, skipped")
            continue
        raw, header = _read(path)
        data, note = _prepare(raw, header)
        gain = header_number(header, *GAIN_KEYS)
        if gain is None and header_number(header, "GAINA") is not None:
            gains = [header_number(header, k) for k in ("GAINA", "GAINB")]
            gain = float(np.mean([g for g in gains if g is not None]))
        rdnoise = header_number(header, *RDNOISE_KEYS, "RDNOISEA")
        satur = header_number(header, *SATURATION_KEYS)
        inputs = _pipeline_inputs(data)
        pipeline_sat = satur
        if pipeline_sat is None:
            pipeline_sat = measure_saturation(inputs["pix"], inputs["bad"])
        above_sky = (None if pipeline_sat is None
                     else pipeline_sat - inputs["sky"])
        result, wall, cpu = _timed(
            lambda inputs=inputs, gain=gain, rdnoise=rdnoise,
            above_sky=above_sky: find_cosmic_rays(
                inputs["sub"], inputs["rms"], inputs["bad"], gain=gain,
                read_noise=rdnoise, saturation=above_sky,
                event_sigclip=args.event_sigclip,
                **_psf_peaks(inputs, above_sky, args)),
            args.repeat)
        kwargs: dict[str, float] = {}
        if gain is not None:
            kwargs["gain"] = gain
        if rdnoise is not None:
            kwargs["readnoise"] = rdnoise
        if satur is not None:
            kwargs["satlevel"] = satur * (gain or 1.0)
        (ref, _), rwall, rcpu = _timed(
            lambda data=inputs["pix"], kwargs=kwargs:
            astroscrappy.detect_cosmics(data, **kwargs), 1)
        ref_labels, n_ref = _groups(ref)
        found = _found_groups(ref_labels, n_ref, result.mask)
        stars, sources = _stars(inputs["sub"], inputs["rms"], above_sky)
        on_source = np.zeros(n_ref + 1, dtype=bool)
        on_source[ref_labels[sources["ypeak"], sources["xpeak"]]] = True
        on_source = on_source[1:]
        frame = {
            "file": name, "shape": list(data.shape), "note": note,
            "gain": gain, "read_noise": rdnoise, "saturation": satur,
            "pipeline_saturation": pipeline_sat,
            "astroscrappy_kwargs": kwargs,
            "ours": {"events": result.n_events,
                     "pixels": int(result.mask.sum()),
                     "wall_seconds": wall, "cpu_seconds": cpu,
                     "star_cores_flagged": _cores_flagged(result.mask,
                                                          stars)},
            "astroscrappy": {"events": n_ref, "pixels": int(ref.sum()),
                             "wall_seconds": rwall, "cpu_seconds": rcpu,
                             "star_cores_flagged": _cores_flagged(ref,
                                                                  stars)},
            "astroscrappy_events_found": int(found.sum()),
            "astroscrappy_events_on_sources": int(on_source.sum()),
            "astroscrappy_events_on_sources_found": int(
                (on_source & found).sum()),
            "missed_astroscrappy_events": [
                {"y": int(sl[0].start), "x": int(sl[1].start),
                 "pixels": int(np.count_nonzero(ref_labels[sl] == k)),
                 "on_source_peak": bool(on_source[k - 1])}
                for k, (sl, f) in enumerate(
                    zip(ndimage.find_objects(ref_labels), found,
                        strict=True), 1) if not f],
            "star_cores": len(stars),
        }
        if name.startswith("decam_") and (data_dir / DECAM_DQ).exists():
            dq, _ = _read(data_dir / DECAM_DQ)
            cp_labels, n_cp = _groups(dq == DECAM_DQ_CR)
            frame["decam_cp_events"] = n_cp
            frame["decam_cp_found"] = {
                "ours": int(_found_groups(cp_labels, n_cp,
                                          result.mask).sum()),
                "astroscrappy": int(_found_groups(cp_labels, n_cp,
                                                  ref).sum())}
        frames.append(frame)
        o, a = frame["ours"], frame["astroscrappy"]
        print(f"{name[:38]:<38} {gain or 0:5.2f} "
              f"{(satur or 0) / 1000:5.1f}k | {o['events']:>7} "
              f"{o['pixels']:>5} {o['cpu_seconds']:5.2f} | "
              f"{a['events']:>8} {a['pixels']:>5} {a['cpu_seconds']:5.2f} "
              f"| {int(found.sum()):>4}/{n_ref:<4} | {len(stars):>5} "
              f"{o['star_cores_flagged']:>8}/{a['star_cores_flagged']}")
        if note:
            print(f"    ({note})")
        missed = frame["missed_astroscrappy_events"]
        if missed:
            listed = ", ".join(
                f"({m['y']}, {m['x']}, {m['pixels']}"
                f"{', on a source peak' if m['on_source_peak'] else ''})"
                for m in missed)
            print(f"    astroscrappy events missed (y, x, pixels): {listed}")
        if "decam_cp_events" in frame:
            print(f"    DECam pipeline CR events (DQ = 5): "
                  f"{frame['decam_cp_events']}; found by ours "
                  f"{frame['decam_cp_found']['ours']}, by astroscrappy "
                  f"{frame['decam_cp_found']['astroscrappy']}")
    if not frames:
        return None
    n_ref = sum(f["astroscrappy"]["events"] for f in frames)
    n_found = sum(f["astroscrappy_events_found"] for f in frames)
    cores_ours = sum(f["ours"]["star_cores_flagged"] for f in frames)
    cores_ref = sum(f["astroscrappy"]["star_cores_flagged"]
                    for f in frames)
    fraction = _ratio(n_found, n_ref)
    n_src = sum(f["astroscrappy_events_on_sources"] for f in frames)
    n_src_found = sum(f["astroscrappy_events_on_sources_found"]
                      for f in frames)
    fraction_cr = _ratio(n_found - n_src_found, n_ref - n_src)
    print(f"all frames: astroscrappy events found {n_found}/{n_ref} "
          f"({_pct(fraction).strip()}); {n_src} of its events are on the "
          f"peak of a source not sharper than a star; of the others "
          f"{n_found - n_src_found}/{n_ref - n_src} "
          f"({_pct(fraction_cr).strip()}) are found")
    print(f"star cores flagged: ours {cores_ours}, astroscrappy "
          f"{cores_ref} (of {sum(f['star_cores'] for f in frames)})")
    return {
        "frames": frames, "skipped": SKIPPED_FRAMES,
        "astroscrappy_events": n_ref,
        "astroscrappy_events_found": n_found,
        "astroscrappy_fraction_found": fraction,
        "astroscrappy_events_on_sources": n_src,
        "astroscrappy_fraction_found_off_sources": fraction_cr,
        "star_cores_flagged": {"ours": cores_ours,
                               "astroscrappy": cores_ref},
        "targets": {
            "astroscrappy_events": {
                "value": fraction, "target": TARGET_REFERENCE_EVENTS,
                "pass": fraction >= TARGET_REFERENCE_EVENTS},
            "star_cores": {"value": cores_ours, "target": cores_ref,
                           "pass": cores_ours <= cores_ref},
        },
    }


# ------------------------------------------------------------------ main


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Score and time qualityfits.cosmics against "
                    "astroscrappy at its defaults, on simulated CCDs and "
                    "on the real frames of ../shared/data.")
    parser.add_argument("--ccds", type=int, default=4,
                        help="simulated CCDs (default 4)")
    parser.add_argument("--seed", type=int, default=SEED,
                        help=f"seed of the first CCD (default {SEED})")
    parser.add_argument("--quick", action="store_true",
                        help="1024x2048 CCDs with the same densities; the "
                             "time target is scaled by area")
    parser.add_argument("--fwhm", type=float, default=None,
                        help="PSF FWHM of the simulated CCDs, px (default "
                             "4.0, the exposure benchmark's)")
    parser.add_argument("--stars", type=int, default=None,
                        help="stars per simulated CCD (default 400, the "
                             "exposure benchmark's)")
    parser.add_argument("--cr-hits", type=int, default=None,
                        help="cosmic-ray hits per simulated CCD, besides "
                             "the 30 tracks (default 300)")
    parser.add_argument("--event-sigclip", type=float, default=None,
                        help="event_sigclip of find_cosmic_rays (default: "
                             "none, every group kept as by L.A.Cosmic)")
    parser.add_argument("--no-psf-protection", action="store_true",
                        help="do not estimate the FWHM nor protect the "
                             "cores of PSF-like sources (the pipeline "
                             "before issue 15)")
    parser.add_argument("--repeat", type=int, default=3,
                        help="timed calls of ours per image, the fastest "
                             "is kept (default 3)")
    parser.add_argument("--skip-reference", action="store_true",
                        help="do not run astroscrappy on the simulated "
                             "CCDs (~17 s each)")
    parser.add_argument("--no-real", action="store_true",
                        help="skip the real frames")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA,
                        help="folder of the real frames (default "
                             "../shared/data)")
    parser.add_argument("--json", type=Path, default=None,
                        help="write every figure to this JSON file")
    parser.add_argument("--strict", action="store_true",
                        help="exit 1 when a target is missed")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.ccds < 1 or args.repeat < 1:
        parser.error("--ccds and --repeat must be >= 1")
    machine = _machine()
    print(f"machine: {machine['cpus']} cores ({machine['cpu_model']}), "
          f"load {' '.join(f'{x:.2f}' for x in machine['loadavg'])}; "
          f"astroscrappy {machine['astroscrappy']}, sep {machine['sep']}")
    simulated = run_simulated(args)
    real = None if args.no_real else run_real(args)
    targets = {f"simulated_{k}": v
               for k, v in simulated["targets"].items()}
    if real is not None:
        targets.update({f"real_{k}": v for k, v in real["targets"].items()})
    print("\ntargets:")
    for key, t in targets.items():
        print(f"  {key:<28} {t['value']:.4g} (target {t['target']:.4g}) "
              f"{'PASS' if t['pass'] else 'FAIL'}")
    if args.json is not None:
        figures = {"machine": machine,
                   "settings": {"ccds": args.ccds, "seed": args.seed,
                                "quick": args.quick, "fwhm": args.fwhm,
                                "stars": args.stars,
                                "cr_hits": args.cr_hits,
                                "event_sigclip": args.event_sigclip,
                                "repeat": args.repeat,
                                "skip_reference": args.skip_reference},
                   "simulated": simulated, "real": real,
                   "targets": targets}
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(figures, indent=1, default=str))
        print(f"\nfigures written to {args.json}")
    if args.strict and not all(t["pass"] for t in targets.values()):
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
