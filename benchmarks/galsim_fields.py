"""Fields drawn by GalSim, not by us: the pipeline against their truth.

``python benchmarks/galsim_fields.py [--cases NAME,..] [--seeds S,..]
[--json FILE]`` draws CCDs with GalSim (Rowe et al. 2015, the
weak-lensing community's image simulator): Kolmogorov seeing (GalSim's
``Kolmogorov``, alone or convolved with an obscured telescope's
``OpticalPSF``) or a ``Moffat``, sheared to a given ellipticity; stars
with power-law fluxes (dN/dF ~ F^-1.5); exponential and de Vaucouleurs
galaxies convolved with the same PSF; each drawn with GalSim's own
pixel integration; sky, Poisson and read noise (``CCDNoise``).
Nothing of `qualityfits.datasets` is used, so this measures the
pipeline on images built differently from the ones it was developed
on.

For each field it prints our ``FWHM_PIX`` against the pixel-free truth
(GalSim's ``calculateFWHM`` of the round PSF, times 1/sqrt(1 - g²), the
mean of the sheared axes), ``FWHM_CORR``, the ellipticity (A-B)/(A+B)
against the shear g, the sky in truth sigmas and the RMS in %, the
completeness of the stars of S/N > 20 (PSF-weighted S/N from the truth)
and the fraction of galaxies of half-light radius > 2 px called stars
(a detection within 1.5 px of a truth source, the nearest; a source
with one of the other kind within 2 FWHM and more than 30 % of its
flux is a blend and not counted).  Results:
``benchmarks/README.md``, "galsim_fields.py".  CPU-heavy (GalSim draws
~1500 sources per field): run it under ``nice -n 19``.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import galsim
import numpy as np
from astropy.io import fits
from scipy.spatial import cKDTree

from qualityfits.classify import SourceClass
from qualityfits.pipeline import assess_extension

#: Pixel scale of the drawn fields ["/px]: GalSim works in arcsec.
SCALE = 0.2
SKY, GAIN, READ_NOISE = 1000.0, 2.0, 5.0
MIN_SNR = 20.0
BIG_GALAXY = 2.0  # px
MATCH = 1.5  # px
#: A source within 2 FWHM of one of the other kind that has more than
#: this fraction of its flux is a blend and is not counted.
BLEND_FRACTION = 0.3


@dataclass(frozen=True)
class Case:
    """One kind of field."""

    psf: str  # kolmogorov, optical, moffat
    fwhm: float  # px, round PSF
    shear: float = 0.03
    n_stars: int = 400
    n_galaxies: int = 1200
    shape: tuple[int, int] = (1024, 1024)


CASES = {
    "kolmogorov": Case("kolmogorov", 4.0),
    "kolmogorov_1.8px": Case("kolmogorov", 1.8, shear=0.05),
    "kolmogorov_9px": Case("kolmogorov", 9.0, n_galaxies=800),
    "kolmogorov_e0.15": Case("kolmogorov", 4.0, shear=0.15),
    "kolmogorov_crowded": Case("kolmogorov", 3.5, n_stars=3000,
                               n_galaxies=800),
    "optical": Case("optical", 3.0),
    "moffat": Case("moffat", 3.5),
}


def make_psf(case: Case) -> tuple[Any, float]:
    """The PSF (sheared) and its pixel-free FWHM [px], the axes' mean."""
    fwhm = case.fwhm * SCALE
    if case.psf == "kolmogorov":
        round_psf = galsim.Kolmogorov(fwhm=fwhm)
    elif case.psf == "optical":
        # Seeing 85 % of the FWHM, an obscured 4 m mirror at 600 nm
        # (lambda/D 0.031") a little out of focus: round, so that its
        # FWHM is defined (coma has none).
        atmos = galsim.Kolmogorov(fwhm=0.85 * fwhm)
        optics = galsim.OpticalPSF(lam_over_diam=0.031, obscuration=0.3,
                                   defocus=0.3)
        round_psf = galsim.Convolve(atmos, optics)
    elif case.psf == "moffat":
        round_psf = galsim.Moffat(beta=2.8, fwhm=fwhm)
    else:
        raise SystemExit(f"unknown PSF {case.psf!r}")
    truth = round_psf.calculateFWHM(scale=0.01 * fwhm) / SCALE
    psf = round_psf.shear(g=case.shear, beta=25.0 * galsim.degrees)
    return psf, truth / math.sqrt(1.0 - case.shear**2)


def _effective_area(psf: Any) -> float:
    """1 / sum(phi²) of the pixel-sampled PSF [px²]."""
    img = psf.drawImage(nx=101, ny=101, scale=SCALE)
    phi = img.array / img.array.sum()
    return float(1.0 / np.sum(phi**2))


def draw_field(case: Case, seed: int) -> tuple[np.ndarray, dict[str, Any]]:
    """The image (float32, sky included) and its truth."""
    rng = np.random.default_rng(seed)
    ny, nx = case.shape
    image = galsim.ImageF(nx, ny, scale=SCALE)
    psf, fwhm = make_psf(case)
    area = _effective_area(psf)
    sky_var = SKY / GAIN + (READ_NOISE / GAIN) ** 2
    # Stars: dN/dF ~ F^-1.5 (a high-latitude field's slope) from S/N ~ 5
    # to 3e6 ADU (the image is float; no saturation).
    lo = 5.0 * math.sqrt(area * sky_var)
    u = rng.uniform(0.0, 1.0, case.n_stars)
    s_flux = lo / (1.0 - u * (1.0 - math.sqrt(lo / 3e6))) ** 2
    s_x = rng.uniform(10, nx - 10, case.n_stars)
    s_y = rng.uniform(10, ny - 10, case.n_stars)
    g_flux = lo * 2.0 / (1.0 - rng.uniform(0, 1, case.n_galaxies)
                         * (1.0 - 2.0 * lo / 3e5))
    g_x = rng.uniform(10, nx - 10, case.n_galaxies)
    g_y = rng.uniform(10, ny - 10, case.n_galaxies)
    g_re = np.exp(rng.normal(math.log(max(1.5, 0.6 * case.fwhm)), 0.5,
                             case.n_galaxies))  # px
    g_ell = rng.uniform(0.0, 0.6, case.n_galaxies)
    g_pa = rng.uniform(0.0, 180.0, case.n_galaxies)
    g_dev = rng.uniform(0, 1, case.n_galaxies) < 0.3
    for x, y, f in zip(s_x, s_y, s_flux, strict=True):
        _draw(image, psf.withFlux(float(f)), x, y)
    for x, y, f, re, e, pa, dev in zip(g_x, g_y, g_flux, g_re, g_ell,
                                       g_pa, g_dev, strict=True):
        prof = (galsim.DeVaucouleurs(half_light_radius=re * SCALE)
                if dev else galsim.Exponential(half_light_radius=re * SCALE))
        prof = prof.shear(e=float(e), beta=float(pa) * galsim.degrees)
        _draw(image, galsim.Convolve(prof.withFlux(float(f)), psf), x, y)
    image += SKY
    noise = galsim.CCDNoise(galsim.BaseDeviate(seed), gain=GAIN,
                            read_noise=READ_NOISE)
    image.addNoise(noise)
    snr = s_flux / np.sqrt(area * sky_var + s_flux / GAIN)
    truth = {
        "fwhm": fwhm, "ell": case.shear, "sky": SKY,
        "rms": math.sqrt(sky_var),
        "stars": (s_x, s_y, snr, s_flux),
        "galaxies": (g_x, g_y, g_re, g_flux),
    }
    return np.asarray(image.array, dtype=np.float32), truth


def _draw(image: Any, prof: Any, x: float, y: float) -> None:
    """Add ``prof`` centred at 0-based pixel (x, y), pixel-integrated."""
    stamp = prof.drawImage(scale=SCALE, center=galsim.PositionD(x + 1,
                                                                y + 1))
    bounds = stamp.bounds & image.bounds
    if bounds.isDefined():
        image[bounds] += stamp[bounds]


def _match(tx: np.ndarray, ty: np.ndarray, x: np.ndarray,
           y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    dist, idx = cKDTree(np.column_stack([x, y])).query(
        np.column_stack([tx, ty]))
    return dist <= MATCH, idx


def _alone(x: np.ndarray, y: np.ndarray, flux: np.ndarray,
           ox: np.ndarray, oy: np.ndarray, oflux: np.ndarray,
           radius: float) -> np.ndarray:
    """Sources with no source of the other kind within ``radius`` that
    has more than `BLEND_FRACTION` of their flux: a star on a galaxy (or
    the reverse) is a blend, which neither class describes."""
    tree = cKDTree(np.column_stack([ox, oy]))
    out = np.ones(x.size, dtype=bool)
    for i, near in enumerate(tree.query_ball_point(np.column_stack([x, y]),
                                                   radius)):
        if near and np.any(oflux[near] > BLEND_FRACTION * flux[i]):
            out[i] = False
    return out


def measure(case: Case, seed: int) -> dict[str, float]:
    """Run the pipeline on one field; its figures against the truth."""
    data, truth = draw_field(case, seed)
    header = fits.Header({"GAIN": GAIN, "RDNOISE": READ_NOISE,
                          "SATURATE": 1e9})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        rep = assess_extension(data, header, name="galsim")
    m = rep.metrics
    out = {
        "fwhm": m.get("FWHM_PIX", math.nan), "fwhm_truth": truth["fwhm"],
        "fwhm_corr": m.get("FWHM_CORR", math.nan),
        "fwhm_corr_err": m.get("FWHM_CORR_ERR", math.nan),
        "ell": m.get("ELLIPTICITY", math.nan), "ell_truth": truth["ell"],
        "sky_sigma": (m.get("SKY_MEAN", math.nan) - truth["sky"])
        / truth["rms"],
        "rms": m.get("SKY_RMS", math.nan) / truth["rms"] - 1.0,
        "psf_stars": m.get("NSTAR_FIT", 0),
        "completeness": math.nan, "gal_as_star": math.nan,
    }
    cat = rep.sources
    if cat is not None and len(cat):
        x = np.asarray(cat["X_IMAGE"], float) - 1.0
        y = np.asarray(cat["Y_IMAGE"], float) - 1.0
        is_star = np.asarray(cat["CLASS"]) == SourceClass.STAR.name.lower()
        sx, sy, snr, sf = truth["stars"]
        gx, gy, re, gf = truth["galaxies"]
        near = 2.0 * truth["fwhm"]
        bright = (snr > MIN_SNR) & _alone(sx, sy, sf, gx, gy, gf, near)
        found, idx = _match(sx[bright], sy[bright], x, y)
        if found.any():
            out["completeness"] = float(is_star[idx[found]].mean())
        big = (re > BIG_GALAXY) & _alone(gx, gy, gf, sx, sy, sf, near)
        found, idx = _match(gx[big], gy[big], x, y)
        if found.any():
            out["gal_as_star"] = float(is_star[idx[found]].mean())
    return out


def main(argv: list[str] | None = None) -> int:
    """Draw the fields, run the pipeline, print the table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cases", default=",".join(CASES))
    parser.add_argument("--seeds", default="1,2")
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    print(f"{'case':20} {'seed':>4} {'FWHM ours':>15} {'truth':>6} "
          f"{'corr':>13} {'ell':>14} {'sky':>7} {'rms':>6} "
          f"{'compl':>5} {'gal>*':>5} {'n':>4}")
    rows = []
    for name in args.cases.split(","):
        case = CASES[name]
        for seed in (int(s) for s in args.seeds.split(",")):
            r = measure(case, seed)
            rows.append({"case": name, "seed": seed, **asdict(case), **r})
            dev = 100 * (r["fwhm"] / r["fwhm_truth"] - 1)
            print(f"{name:20} {seed:4d} {r['fwhm']:7.3f} {dev:+6.2f}% "
                  f"{r['fwhm_truth']:6.3f} {r['fwhm_corr']:6.4f}"
                  f"±{r['fwhm_corr_err']:.4f} "
                  f"{r['ell']:6.4f} {r['ell'] - r['ell_truth']:+7.4f} "
                  f"{r['sky_sigma']:+6.2f}s {100 * r['rms']:+5.1f}% "
                  f"{r['completeness']:5.3f} {r['gal_as_star']:5.3f} "
                  f"{r['psf_stars']:4.0f}", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1),
                                   encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
