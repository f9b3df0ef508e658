"""PSF accuracy at the edges: undersampled and non-Moffat PSFs (issue 15).

``python benchmarks/psf_edges.py [--kinds K,..] [--fwhm F,..] [--seeds S,..]
[--stars N] [--skip-reference]`` draws 1024² fields of round stars
(power-law fluxes, flat sky 800, noise 12, gain 2), each pixel the mean
of the profile over 10 x 10 sub-pixel points, with a PSF profile the
pipeline may not model: ``moffatB`` (a Moffat of beta B, e.g.
``moffat1.7``), ``gauss``, ``airy`` (an Airy disc, FWHM 1.029
lambda/D), ``kolmogorov`` (long-exposure Kolmogorov seeing) or
``dgauss`` (a core Gaussian and a halo of twice its width).  It
prints, per field, our ``FWHM_PIX`` and PSFEx's
``FWHM_PixelFree_Mean`` (`terapix.run_reference`) against the
pixel-free truth, with the betas and star counts.  A field where either
side found no PSF star shows ``-``.  Results: ``benchmarks/README.md``,
"PSF at undersampling and non-Moffat shapes".
"""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
import warnings
from functools import cache
from pathlib import Path

import numpy as np
from astropy.io import fits
from numpy.typing import NDArray
from scipy.special import j0, j1

BENCHMARKS = Path(__file__).resolve().parent
if str(BENCHMARKS) not in sys.path:
    sys.path.insert(0, str(BENCHMARKS))

import terapix  # noqa: E402

from qualityfits.pipeline import assess_extension  # noqa: E402

SKY, NOISE, GAIN = 800.0, 12.0, 2.0
SHAPE = (1024, 1024)
SUB = 10


def profile(kind: str, fwhm: float, r2: NDArray[np.float64],
            beta: float = 3.0) -> NDArray[np.float64]:
    """Unnormalised PSF profile at squared radii ``r2`` [px²].

    ``kind``: ``moffat`` (of ``beta``), ``moffatB`` (a Moffat of beta B,
    e.g. ``moffat1.7``), ``gauss`` or ``airy`` (FWHM 1.029 lambda/D).
    """
    if kind.startswith("moffat"):
        beta = float(kind[6:] or beta)
        alpha = fwhm / (2 * math.sqrt(2 ** (1 / beta) - 1))
        return np.asarray((1 + r2 / alpha**2) ** -beta)
    if kind == "gauss":
        sigma = fwhm / (2 * math.sqrt(2 * math.log(2)))
        return np.exp(-0.5 * r2 / sigma**2)
    if kind == "airy":
        x = np.maximum(math.pi * np.sqrt(r2) * 1.029 / fwhm, 1e-8)
        return np.asarray((2 * j1(x) / x) ** 2)
    if kind in TABULATED:
        radius, values = _tabulated(kind)
        return np.asarray(np.interp(np.sqrt(r2) / fwhm, radius, values,
                                    right=0.0))
    raise SystemExit(f"unknown profile {kind!r}: moffatB, gauss, airy, "
                     + ", ".join(TABULATED))


#: Profiles tabulated in units of their FWHM: ``kolmogorov``, the
#: long-exposure seeing of Kolmogorov turbulence (optical transfer
#: function exp(-(k/k0)^(5/3)), the atmospheric PSF of GalSim's
#: ``Kolmogorov``), and ``dgauss``, a core and a halo Gaussian of twice
#: its width and a tenth of its peak (the SDSS photometric pipeline's
#: double-Gaussian PSF).
TABULATED = ("kolmogorov", "dgauss")


@cache
def _tabulated(kind: str) -> tuple[NDArray[np.float64],
                                   NDArray[np.float64]]:
    """Radii in units of the FWHM and the profile there (1 at r = 0)."""
    r = np.linspace(0.0, 20.0, 8001)
    if kind == "kolmogorov":
        k = np.linspace(0.0, 12.0, 6001)
        otf = np.exp(-(k ** (5.0 / 3.0))) * k
        values = np.concatenate([j0(np.outer(part, k)) @ otf
                                 for part in np.array_split(r, 16)])
    else:
        values = np.exp(-0.5 * r**2) + 0.1 * np.exp(-0.125 * r**2)
    values = values / values[0]
    half = int(np.argmax(values <= 0.5))
    fwhm = 2.0 * float(np.interp(0.5, values[half:half - 2:-1],
                                 r[half:half - 2:-1]))
    return r / fwhm, values


def field(kind: str, fwhm: float, n_stars: int, seed: int, *,
          shape: tuple[int, int] = SHAPE, beta: float = 3.0,
          ellipticity: float = 0.0, theta: float = 0.0,
          ) -> NDArray[np.float32]:
    """Sky, stars and noise (dN/dF ~ F^-2, flux 150 to 3e5 ADU).

    ``ellipticity`` (A-B)/(A+B) at ``theta`` degrees: the round profile
    of the same FWHM (the mean of the axes' FWHM) stretched by 1 + e
    and 1 - e along the axes.
    """
    rng = np.random.default_rng(seed)
    ny, nx = shape
    model = np.zeros(shape)
    half = max(8, math.ceil(6 * fwhm))
    sub = (np.arange(SUB) + 0.5) / SUB - 0.5
    cos_t = math.cos(math.radians(theta))
    sin_t = math.sin(math.radians(theta))
    u = rng.uniform(0, 1, n_stars)
    flux = 150.0 / (1 - u * (1 - 150.0 / 3e5))
    xs = rng.uniform(5, nx - 5, n_stars)
    ys = rng.uniform(5, ny - 5, n_stars)
    for x, y, f in zip(xs, ys, flux, strict=True):
        i0, j0 = round(x), round(y)
        jj, ii = np.mgrid[j0 - half:j0 + half + 1, i0 - half:i0 + half + 1]
        dy = jj[..., None, None] + sub[:, None] - y
        dx = ii[..., None, None] + sub[None, :] - x
        along = dx * cos_t + dy * sin_t
        across = dy * cos_t - dx * sin_t
        r2 = ((along / (1 + ellipticity)) ** 2
              + (across / (1 - ellipticity)) ** 2)
        stamp = profile(kind, fwhm, r2, beta).mean(axis=(2, 3))
        inside = (jj >= 0) & (jj < ny) & (ii >= 0) & (ii < nx)
        np.add.at(model, (jj[inside], ii[inside]), f * stamp[inside])
    data = SKY + model + rng.normal(0.0, 1.0, shape) * np.sqrt(
        NOISE**2 + model / GAIN)
    return np.asarray(data, dtype=np.float32)


def _dev(value: float | None, truth: float) -> str:
    if value is None or not math.isfinite(value):
        return "-"
    return f"{value:.3f} {100 * (value / truth - 1):+5.1f}%"


def main(argv: list[str] | None = None) -> int:
    """Run the fields and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--kinds", default="moffat1.7,moffat2.2,moffat3")
    parser.add_argument("--fwhm", default="1.0,1.2,1.4,1.6")
    parser.add_argument("--seeds", default="1,2")
    parser.add_argument("--stars", type=int, default=500)
    parser.add_argument("--skip-reference", action="store_true")
    args = parser.parse_args(argv)
    header = fits.Header({"GAIN": GAIN, "SATURATE": 1e7})
    print(f"{'profile':10} {'truth':>5} {'seed':>4}  {'ours':>14} "
          f"{'beta':>5} {'n':>4}  {'PSFEx':>14} {'beta':>5} {'n':>4}")
    for kind in args.kinds.split(","):
        for fwhm in (float(v) for v in args.fwhm.split(",")):
            for seed in (int(v) for v in args.seeds.split(",")):
                data = field(kind, fwhm, args.stars, seed)
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    report = assess_extension(data, header, name="sim")
                m = report.metrics if report.status == "ok" else {}
                ref: dict[str, float] = {}
                if not args.skip_reference:
                    with tempfile.TemporaryDirectory() as tmp:
                        path = Path(tmp) / "field.fits"
                        fits.PrimaryHDU(data, header=header).writeto(path)
                        run = terapix.run_reference(path,
                                                    workdir=Path(tmp))
                        ref = run.extensions[0].psfex
                print(f"{kind:10} {fwhm:5.2f} {seed:4d}  "
                      f"{_dev(m.get('FWHM_PIX'), fwhm):>14} "
                      f"{m.get('PSF_BETA', math.nan):5.2f} "
                      f"{m.get('NSTAR_FIT', 0):4.0f}  "
                      f"{_dev(ref.get('FWHM_PixelFree_Mean'), fwhm):>14} "
                      f"{ref.get('MoffatBeta_Mean', math.nan):5.2f} "
                      f"{ref.get('NStars_Accepted_Mean', 0):4.0f}",
                      flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
