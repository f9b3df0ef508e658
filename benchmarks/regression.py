"""Real-data and hard-simulation regression harness (issue 15, item 6).

``python benchmarks/regression.py [--quick] [--json FILE] [--workdir DIR]``
runs our pipeline (``qualityfits.assess`` with its defaults, cosmic rays
on, one process) and the TERAPIX reference chain of ``terapix.py``
(SExtractor + PSFEx) on

1. every FITS file of ``../shared/data`` (the project's view of
   ``/work/shared/data``), and
2. a set of seeded hard simulations written by ``qualityfits-simulate``'s
   `qualityfits.datasets.write_exposure` into the work folder: an
   ordinary field, a crowded one (12 000 stars per 2048²), an
   undersampled PSF (FWHM 1.7 px), a large PSF (9.5 px), a strongly
   elliptical PSF (0.15), an HST ``_flt``-style SCI/ERR/DQ file and a
   NOIRLab Community-Pipeline trio (image, weight, data quality),

and prints ONE table, a row per image extension: ours vs PSFEx vs truth
(where known) for the pixel-free FWHM, the ellipticity, the sky mean and
RMS, the stars at S/N > 20 (counts, and for simulations the completeness
and the galaxies called stars).  ``--quick`` runs the science frames
only and one 1024² CCD per simulated case (about 1-2 minutes on two
cores); the full run does every file and two 2048² CCDs per case
(several minutes).  ``--json FILE`` (``-`` for standard output) writes
every figure, and the notes, as JSON.

What the columns mean
---------------------
``FWHM``
    ours ``FWHM_PIX`` (pixel-free Moffat FWHM), PSFEx
    ``FWHM_PixelFree_Mean``, truth the simulation's ``SIMFWHM`` (the
    FWHM before pixel sampling, constant over a CCD here).  For a
    simulation the deviation from the truth follows in percent.
``ell``
    ours ``ELLIPTICITY``, PSFEx ``Ellipticity_Mean``, both (A-B)/(A+B)
    of the FWHMs, truth ``SIMELLIP``; deviation ``ours - truth``.
``sky``, ``rms``
    ours ``SKY_MEAN``/``SKY_RMS``, SExtractor ``Background_Mean``/
    ``_StDev``, truth the simulated sky level and its pixel noise; the
    deviation of the sky is in units of the truth sigma, of the RMS in
    percent.
``N*>20``
    stars at S/N > 20: for a simulation the truth count (S/N of optimal
    PSF photometry, as in `qualityfits.datasets`); ours ``CLASS ==
    "star"`` and ``SNR > 20`` (FLUX_AUTO / FLUXERR_AUTO); SExtractor
    ``CLASS_STAR > 0.9`` and ``SNR_WIN > 20``.
``compl``
    simulations only: of the truth stars with S/N > 20 that a side
    detected (a source within 1.5 px) and that dominate that detection's
    light (below), the fraction it calls a star (ours ``CLASS ==
    "star"``, SExtractor ``CLASS_STAR > 0.9``).  The detected fraction
    (of all S/N > 20 stars) is in the JSON (``found``) and in the note
    when below 0.98.
``gal>*``
    simulations only: of the truth galaxies with r_e > 2 px that a side
    detected and that dominate that detection's light, the fraction it
    calls a star.  The JSON keeps the positional figure, every detected
    galaxy counted, as ``gal_as_star_any``.

    *Dominate*: hold at least half (`DOMINANT`) of the noise-free truth
    light inside a circle of 1.25 FWHM (`APERTURE_FWHM`, the stamp our
    S is measured on) around the source's true centre
    (`mark_dominant`; one minus the HSC pipeline's blendedness, with
    the truth profiles).  Positional matching alone counted a star
    sitting on a faint galaxy as "a galaxy called a star"; the
    detection there is the star's.  Likewise a faint star on a bright
    galaxy is left out of the completeness.
``CR@core``
    simulations only, ours only: the fraction of star cores our
    cosmic-ray mask flags -- unsaturated truth stars with S/N > 20 whose
    3 x 3 core (around the pixel nearest the true centre) holds a pixel
    of our cosmic-ray map (``maps_dir``), out of those with no true
    cosmic ray near the core (no hit centre within 4 px, no track
    within 3 px of its segment); then our ``STAR_CR_FRAC``, which
    claims to measure the same.

Inputs that do not fit
----------------------
* Weight maps (the NTT ``.weight`` file, the CP ``oow`` files) are not
  run alone: the all-ones NTT WeightWatcher map is given to our pipeline
  as ``weight``, the CP ``oow`` inverse-variance weight as ``weight``
  (MAP_WEIGHT) with the CP ``ood`` data-quality file as ``mask``
  (non-zero = bad); the simulated CP trio likewise.  The HST-style
  ``_flt`` file is given alone: our pipeline finds its ERR and DQ planes
  (extension roles).  The reference is run without weights.
* Non-science frames (the raw flat, the bias, the MegaCam bad-pixel
  mask) are run through our pipeline only, to record its verdict (a
  refusal, an error, or numbers it should not have published); the
  reference is not run on them.  ``--quick`` leaves them out.
* A file our pipeline refuses or fails on is a row saying so (the
  message, never a traceback); so is a reference failure.
* A FITS file of the folder this module does not know is run as a
  science frame.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import subprocess
import sys
import tempfile
import time
import traceback
import warnings
from dataclasses import asdict, dataclass, field, replace
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

import numpy as np
from astropy.io import fits
from astropy.table import Table
from astropy.utils.exceptions import AstropyWarning
from scipy.optimize import nnls
from scipy.spatial import cKDTree

BENCHMARKS = Path(__file__).resolve().parent
if str(BENCHMARKS) not in sys.path:
    sys.path.insert(0, str(BENCHMARKS))

import terapix  # noqa: E402

import qualityfits  # noqa: E402
from qualityfits.datasets import (  # noqa: E402
    SimulationParams,
    cp_file_names,
    write_exposure,
)
from qualityfits.errors import InternalError  # noqa: E402

MaskConvention = Literal["auto", "zero", "nonzero"]

#: ``../shared/data`` beside the project.
SHARED_DATA = BENCHMARKS.parent.parent / "shared" / "data"
MATCH_RADIUS = 1.5  # px, truth to detections
MIN_SNR = 20.0
CLASS_STAR_CUT = 0.9
BIG_GALAXY = 2.0  # r_e, px
#: Radius of the aperture a truth source's dominance is judged in [FWHM].
APERTURE_FWHM = 1.25
#: Share of the truth light in that aperture a source must hold to count.
DOMINANT = 0.5
#: Default work folder: simulations, truth files, reference outputs.
WORKDIR = Path(tempfile.gettempdir()) / "qualityfits-regression"

# -------------------------------------------------------------- the cases


@dataclass(frozen=True)
class RealFile:
    """How the harness treats one file of the shared data folder."""

    kind: str  # "science", "auxiliary" or "non-science"
    note: str
    mask: str | None = None  # companion file given as our mask
    mask_convention: MaskConvention = "auto"
    weight: str | None = None  # companion file given as our weight


REAL_FILES: dict[str, RealFile] = {
    "ntt_emmi_R_galaxies.fits.gz": RealFile(
        "science", "NTT weight map (all 1) given as weight",
        weight="ntt_emmi_R_galaxies.weight.fits.gz"),
    "ntt_emmi_R_galaxies.weight.fits.gz": RealFile(
        "auxiliary", "WeightWatcher weight of the NTT frame: given as "
        "its weight"),
    "kpno_m51_B_devpix.fits.gz": RealFile(
        "science", "galaxy M51 fills the frame"),
    "saao1m_ste3_raw_a8280271.fits.gz": RealFile(
        "science", "raw: overscan columns still in"),
    "megacam_1616687p_ccd10_cutout.fits.gz": RealFile(
        "science", "251x251 cutout"),
    "megacam_1616681p_ccd21_cutout.fits.gz": RealFile(
        "science", "101x151 cutout"),
    "decam_c4d_170316_062107_ooi_z_ls9.N2.fits.gz": RealFile(
        "science", "CP ood given as mask (non-zero = bad), oow as weight; "
        "CP header FWHM 3.69 px (SExtractor FWHM_IMAGE, "
        "pixel-convolved)",
        mask="decam_c4d_170316_062107_ood_z_ls9.N2.fits.gz",
        mask_convention="nonzero",
        weight="decam_c4d_170316_062107_oow_z_ls9.N2.fits.gz"),
    "decam_c4d_170316_062107_oow_z_ls9.N2.fits.gz": RealFile(
        "auxiliary", "CP inverse-variance weight of the ooi: given as "
        "its weight"),
    "decam_c4d_170316_062107_ood_z_ls9.N2.fits.gz": RealFile(
        "auxiliary", "CP data quality of the ooi: given as its mask"),
    "spitzer_irac_ch2_glimpse_example.fits.gz": RealFile(
        "science", "crowded, undersampled (~1.4 px), no cosmic rays"),
    "not_alfosc_flat_raw.fits.gz": RealFile(
        "non-science", "raw twilight/dome flat (IMAGETYP FLAT)"),
    "ntt_susi_bias_raw.fits.gz": RealFile(
        "non-science", "raw bias, no sources"),
    "megacam_elixir_badpix_2004B.mask.0.36.01.fits.gz": RealFile(
        "non-science", "bad-pixel mask, 36 extensions of 0/1"),
}


@dataclass(frozen=True)
class SimCase:
    """A hard simulation: parameters for a 2048² CCD (counts scale)."""

    name: str
    params: SimulationParams
    note: str


def _sim(**changes: Any) -> SimulationParams:
    base: dict[str, Any] = {
        "shape": (2048, 2048), "fwhm": 4.0, "beta": 3.0,
        "ellipticity": 0.05, "theta": 30.0, "sky": 1000.0,
        "n_stars": 600, "n_galaxies": 1500, "n_cr_hits": 300,
        "n_cr_tracks": 30,
    }
    base.update(changes)
    return SimulationParams(**base)


SIM_CASES: tuple[SimCase, ...] = (
    SimCase("ordinary", _sim(), "FWHM 4, e 0.05, 600 stars"),
    SimCase("crowded", _sim(n_stars=12_000),
            "12 000 stars per 2048²"),
    SimCase("undersampled", _sim(fwhm=1.7), "FWHM 1.7 px"),
    SimCase("large_psf", _sim(fwhm=9.5), "FWHM 9.5 px"),
    SimCase("elliptical", _sim(ellipticity=0.15, theta=-35.0),
            "ellipticity 0.15"),
    SimCase("hst_flt", _sim(fwhm=1.8, gain=1.0, read_noise=3.0, sky=200.0,
                            n_bad_columns=8, layout="hst_flt"),
            "SCI/ERR/DQ MEF, FWHM 1.8, 8 bad columns; our pipeline "
            "assesses SCI with its ERR and DQ"),
    SimCase("cp_trio", _sim(fwhm=3.7, ellipticity=0.04, n_bad_columns=4,
                            layout="cp"),
            "CP trio: ood given as mask, oow as weight"),
)


def _scaled(params: SimulationParams,
            shape: tuple[int, int]) -> SimulationParams:
    """The same density of sources and cosmic rays on another shape."""
    area = shape[0] * shape[1] / (params.shape[0] * params.shape[1])
    return replace(
        params, shape=shape,
        n_stars=round(params.n_stars * area),
        n_galaxies=round(params.n_galaxies * area),
        n_cr_hits=round(params.n_cr_hits * area),
        n_cr_tracks=round(params.n_cr_tracks * area),
        n_bad_columns=round(params.n_bad_columns * shape[1]
                            / params.shape[1]),
    )


# ------------------------------------------------------------ the rows


@dataclass
class Side:
    """One side's figures for one extension (NaN: not measured)."""

    fwhm: float = math.nan
    ell: float = math.nan
    sky: float = math.nan
    rms: float = math.nan
    n_star: float = math.nan
    completeness: float = math.nan
    found: float = math.nan
    gal_as_star: float = math.nan
    gal_as_star_any: float = math.nan  # positional match alone
    psf_stars: float = math.nan
    sky_masked: float = math.nan  # ours only: SKY_MEAN_MASKED
    cr_cores: float = math.nan  # ours only: star cores in the CR map
    star_cr_frac: float = math.nan  # ours only: STAR_CR_FRAC


@dataclass
class Row:
    """One line of the table: an image extension, or a file's verdict."""

    source: str  # "data" or "sim"
    image: str
    extension: str
    ours: Side = field(default_factory=Side)
    ref: Side = field(default_factory=Side)
    truth: Side = field(default_factory=Side)
    sky_sigma: float = math.nan  # truth sky noise (simulations)
    notes: list[str] = field(default_factory=list)
    seconds_ours: float = math.nan
    seconds_ref: float = math.nan


def _f(value: Any) -> float:
    try:
        out = float(value)
    except (TypeError, ValueError):
        return math.nan
    return out


def _column(table: Table | None, name: str) -> np.ndarray:
    if table is None or name not in table.colnames:
        return np.zeros(0)
    return np.asarray(table[name], dtype=np.float64)


def _nearest(tx: np.ndarray, ty: np.ndarray, x: np.ndarray,
             y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For each truth position: found within MATCH_RADIUS, index."""
    if len(x) == 0 or len(tx) == 0:
        return np.zeros(len(tx), dtype=bool), np.zeros(len(tx), dtype=int)
    d, i = cKDTree(np.column_stack([x, y])).query(np.column_stack([tx, ty]))
    return d < MATCH_RADIUS, i


@dataclass(frozen=True)
class TruthPsf:
    """The simulated PSF, as the dominance of a truth source needs it."""

    fwhm: float
    beta: float
    ellipticity: float
    theta: float  # degrees


def _moffat(dx: np.ndarray, dy: np.ndarray, flux: np.ndarray,
            fwhm: np.ndarray, psf: TruthPsf) -> np.ndarray:
    """Pixel-free elliptical Moffat (as `datasets.moffat_profile`)."""
    alpha = fwhm / (2.0 * math.sqrt(2.0 ** (1.0 / psf.beta) - 1.0))
    a, b = alpha * (1 + psf.ellipticity), alpha * (1 - psf.ellipticity)
    c, s = math.cos(math.radians(psf.theta)), math.sin(
        math.radians(psf.theta))
    u, v = dx * c + dy * s, -dx * s + dy * c
    r2 = (u / a) ** 2 + (v / b) ** 2
    return flux * (psf.beta - 1) / (np.pi * a * b) * (1 + r2) ** -psf.beta


#: Radii [scale lengths] on which the Gaussian mixtures are fitted.
_MIX_R = np.concatenate([np.linspace(0.0, 2.0, 200, endpoint=False),
                         np.geomspace(2.0, 60.0, 400)])


def _mixture(profile: np.ndarray, variances: np.ndarray) -> np.ndarray:
    """Amplitudes of circular Gaussians fitting a unit-flux profile.

    Non-negative least squares over `_MIX_R`, weighted by the radius
    (the light, not the peak, matters); normalised to unit flux.
    """
    r = _MIX_R
    basis = np.exp(-r[:, None] ** 2 / (2 * variances[None, :])) / (
        2 * np.pi * variances[None, :])
    w = np.sqrt(r + 0.05)
    amp, _ = nnls(basis * w[:, None], profile * w)
    # Components below 0.1 % of the flux cost time and change nothing.
    amp[amp < 1e-3] = 0.0
    return np.asarray(amp / amp.sum())


#: Variances of the mixture of an exponential disc of unit scale length.
_EXP_VAR = np.geomspace(0.003, 40.0, 10)
_EXP_AMP = _mixture(np.exp(-_MIX_R) / (2 * np.pi), _EXP_VAR)
#: Variances of the mixture of a Moffat of unit alpha.
_MOFFAT_VAR = np.geomspace(0.02, 400.0, 10)


@lru_cache(maxsize=8)
def _moffat_amp(beta: float) -> np.ndarray:
    return _mixture((beta - 1) / np.pi * (1 + _MIX_R**2) ** -beta,
                    _MOFFAT_VAR)


def _covariance(va: np.ndarray, vb: np.ndarray,
                angle_deg: np.ndarray | float) -> tuple[np.ndarray, ...]:
    """(xx, xy, yy) of a covariance with axis variances va, vb."""
    c, s = np.cos(np.radians(angle_deg)), np.sin(np.radians(angle_deg))
    return (va * c * c + vb * s * s, (va - vb) * c * s,
            va * s * s + vb * c * c)


def _galaxy(dx: np.ndarray, dy: np.ndarray, flux: np.ndarray,
            r_e: np.ndarray, q: np.ndarray, angle: np.ndarray,
            psf: TruthPsf) -> np.ndarray:
    """A PSF-convolved exponential disc (pixel-free).

    Both the disc (scale h = r_e / 1.678) and the Moffat PSF are written
    as mixtures of Gaussians (`_mixture`, fitted by non-negative least
    squares), whose convolutions are Gaussians: the fluxes in apertures
    of 1.25 FWHM agree with the simulator's own rendering (sub-sampled)
    within 0.002 of the galaxy's flux at FWHM 1.8-9.5 px
    (``tests/qualityfits/test_regression_matching.py``).
    """
    h2 = (r_e / 1.678) ** 2
    alpha = psf.fwhm / (2.0 * math.sqrt(2.0 ** (1.0 / psf.beta) - 1.0))
    pa2 = (alpha * (1 + psf.ellipticity)) ** 2
    pb2 = (alpha * (1 - psf.ellipticity)) ** 2
    out = np.zeros(np.broadcast(dx, flux).shape)
    for ak, vk in zip(_EXP_AMP, _EXP_VAR, strict=True):
        if ak == 0:
            continue
        gxx, gxy, gyy = _covariance(vk * h2, vk * h2 * q * q, angle)
        for ml, vl in zip(_moffat_amp(psf.beta), _MOFFAT_VAR, strict=True):
            if ml == 0:
                continue
            pxx, pxy, pyy = _covariance(vl * pa2, vl * pb2, psf.theta)
            cxx, cxy, cyy = gxx + pxx, gxy + pxy, gyy + pyy
            det = cxx * cyy - cxy * cxy
            quad = (cyy * dx * dx - 2 * cxy * dx * dy + cxx * dy * dy) / det
            out += ak * ml / (2 * np.pi * np.sqrt(det)) * np.exp(-0.5 * quad)
    return flux * out


def mark_dominant(truth: dict[str, Table], psf: TruthPsf) -> None:
    """Add ``own_frac`` to the truth stars and galaxies, in place.

    ``own_frac`` is a source's share of the truth light (every star and
    galaxy, noise-free) inside a circular aperture of radius
    `APERTURE_FWHM` FWHM around its true centre -- the light a
    classifier sees when it measures the source (our S uses stamps of
    half-size 1.25 FWHM).  A source *dominates* its detection when
    ``own_frac`` >= `DOMINANT`: the complement of the blendedness of
    the HSC pipeline (Bosch et al. 2018, PASJ 70, S5), with the truth
    profiles in place of the deblender's.  A star sitting on a faint
    galaxy therefore dominates its detection and the galaxy does not:
    the detection is the star's, whatever it is called.  Computed for
    the sources the figures count (stars of S/N > `MIN_SNR`, galaxies
    of r_e > `BIG_GALAXY`), NaN for the others.
    """
    radius = APERTURE_FWHM * psf.fwhm
    step = radius / 10.0
    g = np.arange(-radius + step / 2, radius, step)
    gx, gy = np.meshgrid(g, g)
    inside = np.hypot(gx, gy) <= radius
    px, py = gx[inside], gy[inside]
    area = step * step
    stars, gals = truth["stars"], truth["galaxies"]
    n_star = len(stars)
    xs = np.concatenate([np.asarray(stars["x"], float),
                         np.asarray(gals["x"], float)])
    ys = np.concatenate([np.asarray(stars["y"], float),
                         np.asarray(gals["y"], float)])
    flux = np.concatenate([np.asarray(stars["flux"], float),
                           np.asarray(gals["flux"], float)])
    fwhm = (np.asarray(stars["fwhm"], float) if "fwhm" in stars.colnames
            else np.full(n_star, psf.fwhm))
    r_e = np.asarray(gals["r_e"], float)
    q = np.asarray(gals["q"], float)
    angle = np.asarray(gals["theta"], float)
    # Only the sources the figures count need their share.
    centres = np.flatnonzero(np.concatenate([
        np.asarray(stars["snr"], float) > MIN_SNR, r_e > BIG_GALAXY]))
    own = np.zeros(len(xs))
    other = np.zeros(len(xs))
    cxy = np.column_stack([xs[centres], ys[centres]])
    for kind in ("star", "galaxy"):
        lo_, hi_ = (0, n_star) if kind == "star" else (n_star, len(xs))
        if hi_ == lo_ or centres.size == 0:
            continue
        reach = radius + 6.0 * psf.fwhm + (
            5.0 * float(np.max(r_e)) if kind == "galaxy" else 0.0)
        tree = cKDTree(np.column_stack([xs[lo_:hi_], ys[lo_:hi_]]))
        near = tree.query_ball_point(cxy, reach)
        c = np.repeat(centres, [len(n) for n in near])
        j = np.concatenate([np.asarray(n, dtype=np.intp) for n in near]
                           ) + lo_ if c.size else np.zeros(0, np.intp)
        chunk = max(1, 2_000_000 // len(px))
        for start in range(0, c.size, chunk):
            cc, jj = c[start:start + chunk], j[start:start + chunk]
            dx = (xs[cc] - xs[jj])[:, None] + px[None, :]
            dy = (ys[cc] - ys[jj])[:, None] + py[None, :]
            if kind == "star":
                light = _moffat(dx, dy, flux[jj][:, None],
                                fwhm[jj][:, None], psf)
            else:
                k = jj - n_star
                light = _galaxy(dx, dy, flux[jj][:, None],
                                r_e[k][:, None], q[k][:, None],
                                angle[k][:, None], psf)
            total = light.sum(axis=1) * area
            self_ = cc == jj
            np.add.at(own, cc[self_], total[self_])
            np.add.at(other, cc[~self_], total[~self_])
    frac = np.full(len(xs), np.nan)
    frac[centres] = own[centres] / (own[centres] + other[centres])
    stars["own_frac"] = frac[:n_star]
    gals["own_frac"] = frac[n_star:]


def classify_truth(side: Side, truth: dict[str, Table], x: np.ndarray,
                   y: np.ndarray, is_star: np.ndarray) -> None:
    """Completeness and galaxies-as-stars of one side against truth.

    A truth source is detected when a detection lies within
    `MATCH_RADIUS` of it; it counts only where it dominates that
    detection's light (``own_frac`` >= `DOMINANT`, `mark_dominant`;
    every source counts if the truth has no ``own_frac``).
    ``gal_as_star_any`` keeps the positional definition alone.
    """
    stars, gals = truth["stars"], truth["galaxies"]

    def dominant(table: Table) -> np.ndarray:
        if "own_frac" not in table.colnames:
            return np.ones(len(table), dtype=bool)
        return np.asarray(table["own_frac"], float) >= DOMINANT

    bright = np.asarray(stars["snr"]) > MIN_SNR
    found, idx = _nearest(np.asarray(stars["x"])[bright],
                          np.asarray(stars["y"])[bright], x, y)
    if bright.sum():
        side.found = float(found.mean())
    counted = found & dominant(stars)[bright]
    if counted.sum():
        side.completeness = float(is_star[idx[counted]].mean())
    big = np.asarray(gals["r_e"]) > BIG_GALAXY
    found, idx = _nearest(np.asarray(gals["x"])[big],
                          np.asarray(gals["y"])[big], x, y)
    if found.sum():
        side.gal_as_star_any = float(is_star[idx[found]].mean())
    counted = found & dominant(gals)[big]
    if counted.sum():
        side.gal_as_star = float(is_star[idx[counted]].mean())


def _ours_side(ext: Any, truth: dict[str, Table] | None) -> Side:
    m = ext.metrics
    side = Side(fwhm=_f(m.get("FWHM_PIX")), ell=_f(m.get("ELLIPTICITY")),
                sky=_f(m.get("SKY_MEAN")), rms=_f(m.get("SKY_RMS")),
                psf_stars=_f(m.get("NSTAR_PSF")),
                sky_masked=_f(m.get("SKY_MEAN_MASKED")),
                star_cr_frac=_f(m.get("STAR_CR_FRAC")))
    src = ext.sources
    if src is not None and len(src):
        cls = np.asarray(src["CLASS"]).astype(str)
        snr = _column(src, "SNR")
        with np.errstate(invalid="ignore"):
            side.n_star = float(np.sum((cls == "star") & (snr > MIN_SNR)))
        if truth is not None:
            classify_truth(side, truth, _column(src, "X_IMAGE") - 1,
                            _column(src, "Y_IMAGE") - 1, cls == "star")
    elif src is not None:
        side.n_star = 0.0
    return side


def _ref_side(ref: terapix.ReferenceExtension,
              truth: dict[str, Table] | None) -> Side:
    p = ref.psfex
    side = Side(fwhm=_f(p.get("FWHM_PixelFree_Mean")),
                ell=_f(p.get("Ellipticity_Mean")),
                sky=_f(ref.background_mean), rms=_f(ref.background_stdev),
                psf_stars=_f(p.get("NStars_Accepted_Mean")))
    cat = ref.catalogue
    cs = _column(cat, "CLASS_STAR")
    with np.errstate(invalid="ignore"):
        side.n_star = float(np.sum((cs > CLASS_STAR_CUT)
                                   & (_column(cat, "SNR_WIN") > MIN_SNR)))
    if truth is not None:
        classify_truth(side, truth, _column(cat, "X_IMAGE") - 1,
                        _column(cat, "Y_IMAGE") - 1, cs > CLASS_STAR_CUT)
    return side


def _near_true_cosmic(x: np.ndarray, y: np.ndarray,
                      events: Table) -> np.ndarray:
    """Whether each position is near a true cosmic ray (hit or track)."""
    near = np.zeros(len(x), dtype=bool)
    for ev in events:
        dx, dy = x - float(ev["x"]), y - float(ev["y"])
        if str(ev["kind"]).strip() == "track":
            ang = math.radians(float(ev["angle"]))
            along = np.clip(dx * math.cos(ang) + dy * math.sin(ang),
                            -float(ev["length"]) / 2,
                            float(ev["length"]) / 2)
            dist = np.hypot(dx - along * math.cos(ang),
                            dy - along * math.sin(ang))
            near |= dist <= 3.0
        else:
            near |= np.hypot(dx, dy) <= 4.0
    return near


def cosmic_cores(cosmic: np.ndarray, truth: dict[str, Table]) -> float:
    """Fraction of clean star cores our cosmic-ray map flags."""
    stars = truth["stars"]
    ok = (np.asarray(stars["snr"]) > MIN_SNR) & ~np.asarray(
        stars["saturated"], dtype=bool)
    x = np.asarray(stars["x"])[ok]
    y = np.asarray(stars["y"])[ok]
    clean = ~_near_true_cosmic(x, y, truth["cosmics"])
    x, y = x[clean], y[clean]
    if len(x) == 0:
        return math.nan
    ny, nx = cosmic.shape
    i = np.clip(np.rint(x).astype(int), 1, nx - 2)
    j = np.clip(np.rint(y).astype(int), 1, ny - 2)
    hit = np.zeros(len(x), dtype=bool)
    for dj in (-1, 0, 1):
        for di in (-1, 0, 1):
            hit |= cosmic[j + dj, i + di]
    return float(hit.mean())


def _message(exc: BaseException) -> str:
    """One line: the exception's type and message, no traceback."""
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}"[:300]


# ------------------------------------------------------------ running


def run_ours(
    image: Path, *, mask: Path | None = None,
    mask_convention: MaskConvention = "auto",
    weight: Path | None = None,
    maps_dir: Path | None = None,
) -> tuple[Any, str, float]:
    """(report or None, message, seconds) of our pipeline's defaults."""
    start = time.perf_counter()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", AstropyWarning)
            kwargs: dict[str, Any] = {"jobs": 1}
            if maps_dir is not None:
                kwargs["maps_dir"] = maps_dir
            if mask is not None:
                kwargs["mask"] = mask
                kwargs["parameters"] = qualityfits.QualityParameters(
                    mask_convention=mask_convention)
            if weight is not None:
                kwargs["weight"] = weight
            report = qualityfits.assess(image, **kwargs)
    except InternalError as exc:
        return None, f"internal error: {_message(exc)}", (
            time.perf_counter() - start)
    except qualityfits.QualityFitsError as exc:
        return None, f"refused: {_message(exc)}", (time.perf_counter()
                                                   - start)
    except Exception as exc:  # noqa: BLE001 -- a row, not a traceback
        where = traceback.extract_tb(exc.__traceback__)[-1]
        return None, (f"internal error: {_message(exc)} "
                      f"({Path(where.filename).name}:{where.lineno})"), (
            time.perf_counter() - start)
    return report, "", time.perf_counter() - start


def run_ref(image: Path, workdir: Path) -> tuple[Any, str, float]:
    """(reference run or None, message, seconds)."""
    start = time.perf_counter()
    try:
        ref = terapix.run_reference(image, workdir=workdir)
    except Exception as exc:  # noqa: BLE001 -- a row, not a traceback
        return None, f"reference failed: {_message(exc)}", (
            time.perf_counter() - start)
    return ref, "", time.perf_counter() - start


def _rows_for(source: str, label: str, image: Path, *, run_reference: bool,
              workdir: Path, mask: Path | None = None,
              mask_convention: MaskConvention = "auto",
              weight: Path | None = None,
              truth: dict[str, Table] | None = None,
              truth_side: Side | None = None, sky_sigma: float = math.nan,
              truth_hdu: int | None = None,
              notes: tuple[str, ...] = ()) -> list[Row]:
    """Run both sides on ``image`` and give its rows."""
    maps = workdir / "maps" if truth is not None else None
    ours, our_msg, t_ours = run_ours(image, mask=mask,
                                     mask_convention=mask_convention,
                                     weight=weight, maps_dir=maps)
    ref, ref_msg, t_ref = (run_ref(image, workdir) if run_reference
                           else (None, "", math.nan))
    refs = {e.index: e for e in ref.extensions} if ref is not None else {}
    rows: list[Row] = []
    exts = list(ours.extensions) if ours is not None else []
    if not exts:
        row = Row(source, label, "-", seconds_ours=t_ours,
                  seconds_ref=t_ref, notes=[*notes])
        row.notes.append(our_msg or "our pipeline returned no extension")
        if ref_msg:
            row.notes.append(ref_msg)
        if refs:
            first = next(iter(refs.values()))
            row.extension = first.name
            row.ref = _ref_side(first, None)
        return [row]
    for ext in exts:
        is_truth = truth is not None and (truth_hdu is None
                                          or ext.index == truth_hdu)
        t = truth if is_truth else None
        row = Row(source, label, ext.name, seconds_ours=t_ours,
                  seconds_ref=t_ref, notes=[*notes])
        if is_truth and truth_side is not None:
            row.truth = replace(truth_side)
            row.sky_sigma = sky_sigma
        elif truth is not None:
            row.notes.append("auxiliary plane assessed as a CCD")
        if ext.ok:
            row.ours = _ours_side(ext, t)
            cosmic_file = (maps / "cosmic" / f"{ext.index:04d}.fits"
                           if maps is not None else None)
            if t is not None and cosmic_file and cosmic_file.exists():
                with fits.open(cosmic_file) as hdus:
                    cosmic = np.asarray(hdus[1].data) != 0
                row.ours.cr_cores = cosmic_cores(cosmic, t)
        else:
            error = getattr(ext.error, "message", ext.error)
            error = " ".join(str(error).split())[:200]
            row.notes.append(f"ours failed: {error}")
        flags = [f for f in getattr(ext, "flags", ()) if f]
        if flags:
            row.notes.append("flags " + ",".join(str(f) for f in flags))
        row.notes.extend(" ".join(str(n).split())[:200]
                         for n in getattr(ext, "notes", ())
                         if "withheld" in str(n))
        rext = refs.get(ext.index)
        if rext is not None:
            row.ref = _ref_side(rext, t)
            n_ref = _f(rext.psfex.get("NStars_Accepted_Mean"))
            if not n_ref > 0:
                row.notes.append("PSFEx accepted no star")
        if ref_msg:
            row.notes.append(ref_msg)
        if is_truth and row.ours.found < 0.98:
            row.notes.append(f"ours found {row.ours.found:.2f} of the "
                             f"S/N>{MIN_SNR:g} stars")
        rows.append(row)
    return rows


def real_rows(*, quick: bool, workdir: Path,
              log: Any = None) -> list[Row]:
    """Rows of every FITS file of the shared data folder."""
    rows: list[Row] = []
    files = sorted(p for p in SHARED_DATA.iterdir()
                   if p.is_file() and ".fits" in p.name)
    for path in files:
        entry = REAL_FILES.get(path.name, RealFile(
            "science", "not described in this harness"))
        if entry.kind == "auxiliary":
            rows.append(Row("data", path.name, "-",
                            notes=[f"not run: {entry.note}"]))
            continue
        if entry.kind == "non-science" and quick:
            rows.append(Row("data", path.name, "-", notes=[
                f"not run in --quick: {entry.note}"]))
            continue
        if log:
            log(f"{path.name} ...")
        mask = SHARED_DATA / entry.mask if entry.mask else None
        weight = SHARED_DATA / entry.weight if entry.weight else None
        notes = (entry.note,) if entry.kind == "science" else (
            f"not a science frame ({entry.note}); reference not run",)
        rows.extend(_rows_for(
            "data", path.name, path,
            run_reference=entry.kind == "science",
            workdir=workdir / path.name.split(".")[0], mask=mask,
            mask_convention=entry.mask_convention, weight=weight,
            notes=notes))
    return rows


def _read_truth(path: Path, ccd: str) -> dict[str, Table]:
    out = {}
    with fits.open(path) as hdus:
        for kind, hdu in (("stars", "STARS"), ("galaxies", "GALAXIES"),
                          ("cosmics", "COSMICS")):
            table = Table(hdus[hdu].data)
            out[kind] = table[np.asarray(table["ccd"]).astype(str) == ccd]
    return out


def sim_rows(*, quick: bool, workdir: Path, log: Any = None) -> list[Row]:
    """Simulate the hard cases into ``workdir`` and give their rows."""
    rows: list[Row] = []
    shape = (1024, 1024) if quick else (2048, 2048)
    seeds = (1,) if quick else (1, 2)
    folder = workdir / "sims"
    folder.mkdir(parents=True, exist_ok=True)
    for case in SIM_CASES:
        params = _scaled(case.params, shape)
        for seed in seeds:
            label = f"{case.name} s{seed}"
            stem = f"{case.name}_{shape[0]}_s{seed}"
            image = folder / (f"{stem}_ooi.fits" if params.layout == "cp"
                              else f"{stem}.fits")
            truth_file = folder / f"{stem}_truth.fits"
            if log:
                log(f"{label}: simulating {image.name} ...")
            write_exposure(image, params, n_ccds=1, seed=1000 + seed,
                           truth=truth_file)
            ccd = "ccd00" if params.layout == "cp" else "image"
            truth = _read_truth(truth_file, ccd)
            mark_dominant(truth, TruthPsf(
                params.fwhm, params.beta, params.ellipticity,
                params.theta))
            bright = np.asarray(truth["stars"]["snr"]) > MIN_SNR
            truth_side = Side(fwhm=params.fwhm, ell=params.ellipticity,
                              sky=params.sky, rms=params.sky_rms,
                              n_star=float(bright.sum()))
            cp = params.layout == "cp"
            mask = cp_file_names(image)[2] if cp else None
            weight = cp_file_names(image)[1] if cp else None
            if log:
                log(f"{label}: running both sides ...")
            rows.extend(_rows_for(
                "sim", label, image, run_reference=True,
                workdir=workdir / "terapix" / stem, mask=mask,
                mask_convention="nonzero", weight=weight, truth=truth,
                truth_side=truth_side, sky_sigma=params.sky_rms,
                truth_hdu=1 if params.layout in ("hst_flt", "cp") else 0,
                notes=(case.note,)))
    return rows


# ------------------------------------------------------------- output


def _num(value: float, digits: int = 3) -> str:
    if not math.isfinite(value):
        return "-"
    if abs(value) >= 1e4:
        return f"{value:.0f}"
    if abs(value) >= 100:
        return f"{value:.1f}"
    return f"{value:.{digits}f}"


def _dev(row: Row, what: str, value: float) -> str:
    """The deviation of a value from the truth, in the column's unit."""
    truth = getattr(row.truth, what)
    if not (math.isfinite(value) and math.isfinite(truth)):
        return ""
    if what in ("fwhm", "rms"):
        return f" {100 * (value / truth - 1):+.1f}%"
    if what == "ell":
        return f" {value - truth:+.3f}"
    if what == "sky" and math.isfinite(row.sky_sigma):
        return f" {(value - truth) / row.sky_sigma:+.2f}s"
    return ""


def _cell(row: Row, side: Side, what: str, digits: int = 3) -> str:
    value = getattr(side, what)
    return _num(value, digits) + _dev(row, what, value)


COLUMNS = (
    ("image [ext]", 46),
    ("FWHM ours", 14), ("FWHM PSFEx", 14), ("truth", 5),
    ("ell ours", 13), ("ell PSFEx", 13), ("truth", 5),
    ("sky ours", 14), ("sky SEx", 14), ("truth", 6),
    ("rms ours", 13), ("rms SEx", 13), ("truth", 5),
    ("N*>20 tru/our/SEx", 17),
    ("compl our/SEx", 13), ("gal>* our/SEx", 13),
    ("CR@core/FRAC", 12),
)


def format_table(rows: list[Row]) -> str:
    """The one table, with its notes numbered under it."""
    head = " ".join(f"{name:<{w}}" for name, w in COLUMNS) + " note"
    lines = [head, "-" * len(head)]
    notes: dict[str, int] = {}
    for row in rows:
        label = row.image if row.extension == "-" else (
            f"{row.image} [{row.extension}]")
        label = label.replace(".fits.gz", "")
        counts = "/".join(
            "-" if not math.isfinite(v) else f"{v:.0f}"
            for v in (row.truth.n_star, row.ours.n_star, row.ref.n_star))
        compl = "/".join(_num(v, 2) for v in (row.ours.completeness,
                                               row.ref.completeness))
        gal = "/".join(_num(v, 3) for v in (row.ours.gal_as_star,
                                             row.ref.gal_as_star))
        cr = "/".join(_num(v, 3) for v in (row.ours.cr_cores,
                                            row.ours.star_cr_frac))
        cells = [
            label,
            _cell(row, row.ours, "fwhm"), _cell(row, row.ref, "fwhm"),
            _num(row.truth.fwhm, 2),
            _cell(row, row.ours, "ell"), _cell(row, row.ref, "ell"),
            _num(row.truth.ell, 2),
            _cell(row, row.ours, "sky", 1), _cell(row, row.ref, "sky", 1),
            _num(row.truth.sky, 0),
            _cell(row, row.ours, "rms", 2), _cell(row, row.ref, "rms", 2),
            _num(row.truth.rms, 1),
            counts, compl, gal, cr,
        ]
        refs = []
        for note in row.notes:
            if note not in notes:
                notes[note] = len(notes) + 1
            refs.append(str(notes[note]))
        lines.append(" ".join(f"{c:<{w}}" for c, (_, w) in zip(
            cells, COLUMNS, strict=True)) + " " + ",".join(refs))
    lines.append("")
    lines.append("notes:")
    lines.extend(f"  {k:>2}. {text}" for text, k in notes.items())
    return "\n".join(lines)


LEGEND = (
    "FWHM: pixel-free, px (ours FWHM_PIX, PSFEx FWHM_PixelFree_Mean); "
    "ell: (A-B)/(A+B); sky, rms: ADU (SEx = SExtractor background); "
    "after a simulated value its deviation from the truth (% for FWHM "
    "and rms, absolute for ell, truth sigmas 's' for the sky). N*>20: "
    "stars with S/N > 20 (truth / ours CLASS=star / SExtractor "
    "CLASS_STAR>0.9); compl: detected S/N>20 truth stars called stars; "
    "gal>*: detected galaxies r_e>2 px called stars (both: truth sources "
    "holding >= 50 % of the truth light within 1.25 FWHM); CR@core/FRAC: "
    "clean S/N>20 star cores in our cosmic-ray map / our STAR_CR_FRAC. "
    "'-': not measured."
)


def _jsonable(rows: list[Row]) -> list[dict[str, Any]]:
    def clean(value: Any) -> Any:
        if isinstance(value, float) and not math.isfinite(value):
            return None
        if isinstance(value, dict):
            return {k: clean(v) for k, v in value.items()}
        if isinstance(value, list):
            return [clean(v) for v in value]
        return value
    return [clean(asdict(row)) for row in rows]


def _revision() -> str:
    """The project's commit, and whether qualityfits/ has local changes."""
    root = BENCHMARKS.parent
    try:
        head = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "--short", "HEAD"],
            capture_output=True, text=True, check=True).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain", "--",
             "qualityfits"],
            capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head + (" + uncommitted changes in qualityfits/" if dirty
                   else "")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Our pipeline vs SExtractor + PSFEx vs truth on the "
                    "shared real frames and the hard simulations.")
    parser.add_argument("--quick", action="store_true",
                        help="science frames only, one 1024² CCD per "
                             "simulated case")
    parser.add_argument("--json", metavar="FILE",
                        help="also write every figure as JSON ('-': "
                             "standard output, instead of the table)")
    parser.add_argument("--workdir", type=Path,
                        default=WORKDIR,
                        help=f"simulations and reference outputs "
                             f"(default {WORKDIR})")
    parser.add_argument("--no-data", action="store_true",
                        help="leave out ../shared/data")
    parser.add_argument("--no-sims", action="store_true",
                        help="leave out the simulations")
    args = parser.parse_args(argv)
    if not terapix.tools_available():
        print("source-extractor/psfex not found", file=sys.stderr)
        return 2
    to_stdout = args.json == "-"

    def log(text: str) -> None:
        print(text, file=sys.stderr, flush=True)

    # Our pipeline logs a failed extension with its traceback; the rows
    # carry the message instead.
    logging.getLogger("qualityfits").setLevel(logging.CRITICAL)
    start = time.perf_counter()
    rows: list[Row] = []
    if not args.no_data:
        rows += real_rows(quick=args.quick, workdir=args.workdir, log=log)
    if not args.no_sims:
        rows += sim_rows(quick=args.quick, workdir=args.workdir, log=log)
    elapsed = time.perf_counter() - start
    revision = _revision()
    if args.json:
        payload = {"quick": args.quick, "seconds": elapsed,
                   "revision": revision, "rows": _jsonable(rows)}
        text = json.dumps(payload, indent=1)
        if to_stdout:
            print(text)
        else:
            Path(args.json).write_text(text + "\n")
    if not to_stdout:
        print(format_table(rows))
        print()
        print(LEGEND)
        print(f"total wall time {elapsed:.0f} s; revision {revision}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
