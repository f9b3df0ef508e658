"""Tests of the image simulator, the truth of the accuracy tests."""

from __future__ import annotations

import math
import re
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits
from astropy.wcs import WCS
from numpy.testing import assert_allclose, assert_array_equal
from scipy import integrate, optimize
from scipy.signal import fftconvolve

from qualityfits import datasets
from qualityfits.datasets import (
    SimulationParams,
    main,
    moffat_profile,
    render_psf_stamp,
    simulate_exposure,
    simulate_image,
    write_exposure,
    write_sample,
)

SMALL = SimulationParams(
    shape=(96, 128),
    n_stars=30,
    n_galaxies=60,
    n_cr_hits=20,
    n_cr_tracks=3,
)


def quiet(**changes):
    """Small parameters without sources or cosmic rays."""
    values = {
        "shape": (64, 80),
        "n_stars": 0,
        "n_galaxies": 0,
        "n_cr_hits": 0,
        "n_cr_tracks": 0,
    }
    values.update(changes)
    return SimulationParams(**values)


def pixel_grid(shape):
    ny, nx = shape
    return np.meshgrid(np.arange(nx), np.arange(ny))


class TestDeterminism:
    def test_same_seed_same_image(self):
        one = simulate_image(SMALL, seed=11)
        two = simulate_image(SMALL, seed=11)
        assert_array_equal(one.data, two.data)
        assert_array_equal(one.cr_mask, two.cr_mask)
        for name in ("stars", "galaxies", "cr_events"):
            table, again = getattr(one, name), getattr(two, name)
            assert table.colnames == again.colnames
            for column in table.colnames:
                assert_array_equal(table[column], again[column])
        assert one.header.tostring() == two.header.tostring()

    def test_other_seed_other_image(self):
        one = simulate_image(SMALL, seed=11)
        two = simulate_image(SMALL, seed=12)
        assert not np.array_equal(one.data, two.data)
        assert not np.array_equal(one.stars["x"], two.stars["x"])

    def test_bad_seed(self):
        with pytest.raises(ValueError, match="seed"):
            simulate_image(SMALL, seed=-1)


class TestPsf:
    @pytest.mark.parametrize(
        ("ellipticity", "theta"), [(0.0, 0.0), (0.2, 35.0)]
    )
    def test_gauss_legendre_order_6_is_converged(self, ellipticity, theta):
        kwargs = {
            "x": 12.3,
            "y": 11.8,
            "fwhm": 2.5,
            "beta": 4.5,
            "ellipticity": ellipticity,
            "theta": theta,
        }
        six = render_psf_stamp((25, 25), gl_order=6, **kwargs)
        sixteen = render_psf_stamp((25, 25), gl_order=16, **kwargs)
        y, x = np.mgrid[:25, :25]
        core = np.hypot(x - 12.3, y - 11.8) <= 3 * 2.5
        assert np.max(np.abs(six[core] / sixteen[core] - 1)) < 1e-4

    def test_pixel_values_are_pixel_integrals(self):
        kwargs = {
            "fwhm": 3.0,
            "beta": 2.5,
            "ellipticity": 0.15,
            "theta": 60.0,
        }
        stamp = render_psf_stamp((15, 15), x=7.2, y=6.6, flux=1000.0, **kwargs)
        for j, i in [(7, 7), (6, 7), (8, 9), (3, 11)]:
            value, _ = integrate.dblquad(
                lambda yy, xx: moffat_profile(
                    xx, yy, x0=7.2, y0=6.6, flux=1000.0, **kwargs
                ),
                i - 0.5,
                i + 0.5,
                j - 0.5,
                j + 0.5,
                epsabs=1e-10,
                epsrel=1e-10,
            )
            assert stamp[j, i] == pytest.approx(value, rel=1e-6)

    def test_stamp_holds_the_flux_centred_on_x_y(self):
        stamp = render_psf_stamp(
            (101, 121),
            x=60.3,
            y=49.6,
            fwhm=4.0,
            beta=3.0,
            flux=5000.0,
            ellipticity=0.1,
            theta=20.0,
        )
        assert stamp.sum() == pytest.approx(5000.0, rel=5e-3)
        y, x = np.mgrid[:101, :121]
        assert (stamp * x).sum() / stamp.sum() == pytest.approx(60.3, abs=2e-3)
        assert (stamp * y).sum() / stamp.sum() == pytest.approx(49.6, abs=2e-3)
        assert np.unravel_index(np.argmax(stamp), stamp.shape) == (50, 60)

    @pytest.mark.parametrize("beta", [2.0, 3.0, 4.5])
    @pytest.mark.parametrize("flux", [1e3, 1e6])
    def test_simulated_stamps_hold_the_flux(self, beta, flux):
        a, b = datasets._moffat_alphas(np.array([4.0]), beta, 0.1)
        half = datasets._star_half_sizes(
            np.array([flux]), a, b, beta=beta, core_half=12, threshold=0.025
        )
        stamp = datasets._star_stamps(
            np.array([0.2]),
            np.array([-0.4]),
            a,
            b,
            beta=beta,
            theta=10.0,
            half=int(half[0]),
            core_half=12,
            order=6,
        )[0]
        assert 1 - 2e-3 <= stamp.sum() < 1
        edge = np.concatenate([stamp[0], stamp[-1], stamp[:, 0], stamp[:, -1]])
        assert edge.max() * flux < 0.025

    @pytest.mark.parametrize(
        ("fwhm", "beta", "ellipticity", "theta"),
        [
            (2.5, 4.5, 0.0, 0.0),
            (4.0, 3.0, 0.1, 30.0),
            (6.0, 2.0, 0.3, 120.0),
        ],
    )
    def test_pre_pixel_fwhm_and_ellipticity(
        self, fwhm, beta, ellipticity, theta
    ):
        peak = moffat_profile(
            0.0,
            0.0,
            fwhm=fwhm,
            beta=beta,
            ellipticity=ellipticity,
            theta=theta,
        )

        def half_width(angle):
            c, s = math.cos(math.radians(angle)), math.sin(math.radians(angle))

            def excess(r):
                value = moffat_profile(
                    r * c,
                    r * s,
                    fwhm=fwhm,
                    beta=beta,
                    ellipticity=ellipticity,
                    theta=theta,
                )
                return float(value - peak / 2)

            return optimize.brentq(excess, 0.0, 10 * fwhm, xtol=1e-13)

        major = 2 * half_width(theta)
        minor = 2 * half_width(theta + 90)
        assert (major + minor) / 2 == pytest.approx(fwhm, rel=1e-9)
        assert (major - minor) / (major + minor) == pytest.approx(
            ellipticity, abs=1e-9
        )
        # the major axis is the widest direction
        assert major >= 2 * half_width(theta + 40) - 1e-9

    def test_orientation_counter_clockwise_from_x(self):
        stamp = render_psf_stamp(
            (61, 61),
            x=30.0,
            y=30.0,
            fwhm=5.0,
            beta=4.0,
            ellipticity=0.3,
            theta=30.0,
        )
        y, x = np.mgrid[:61, :61] - 30.0
        mxx = (stamp * x * x).sum()
        myy = (stamp * y * y).sum()
        mxy = (stamp * x * y).sum()
        angle = 0.5 * math.degrees(math.atan2(2 * mxy, mxx - myy))
        assert angle == pytest.approx(30.0, abs=0.1)


class TestGalaxies:
    def test_point_like_galaxy_is_the_star(self):
        size, dx, dy = 64, 0.3, -0.2
        a, b = datasets._moffat_alphas(np.array([2.5]), 4.5, 0.2)
        galaxy = datasets._galaxy_batch(
            size,
            dx0=np.array([dx]),
            dy0=np.array([dy]),
            scale=np.array([1e-4]),
            q=np.array([1.0]),
            angle=np.array([0.0]),
            a=a,
            b=b,
            beta=4.5,
            theta=70.0,
        )[0]
        star = render_psf_stamp(
            (size, size),
            x=size // 2 + dx,
            y=size // 2 + dy,
            fwhm=2.5,
            beta=4.5,
            ellipticity=0.2,
            theta=70.0,
            gl_order=8,
        )
        assert galaxy.sum() == pytest.approx(1.0, rel=1e-12)
        assert np.max(np.abs(galaxy - star)) < 1e-4 * star.max()

    def test_extended_galaxy_matches_brute_force(self):
        size, m = 48, 8
        dx, dy, r_e, q, angle = 0.3, -0.2, 3.0, 0.5, 30.0
        fwhm, beta, ellipticity, theta = 3.0, 3.0, 0.1, 70.0
        scale = r_e / 1.678
        a, b = datasets._moffat_alphas(np.array([fwhm]), beta, ellipticity)
        stamp = datasets._galaxy_batch(
            size,
            dx0=np.array([dx]),
            dy0=np.array([dy]),
            scale=np.array([scale]),
            q=np.array([q]),
            angle=np.array([angle]),
            a=a,
            b=b,
            beta=beta,
            theta=theta,
        )[0]
        # the disc on a fine grid, convolved with the PSF, summed per pixel
        u = (np.arange(size * m) + 0.5) / m - 0.5 - size // 2
        x, y = np.meshgrid(u - dx, u - dy)
        c, s = math.cos(math.radians(angle)), math.sin(math.radians(angle))
        r = np.hypot(x * c + y * s, (-x * s + y * c) / q)
        disc = np.exp(-r / scale) / (2 * np.pi * scale**2 * q * m * m)
        k = np.arange(-size * m // 2, size * m // 2 + 1) / m
        psf = (
            moffat_profile(
                *np.meshgrid(k, k),
                fwhm=fwhm,
                beta=beta,
                ellipticity=ellipticity,
                theta=theta,
            )
            / m**2
        )
        fine = fftconvolve(disc, psf, mode="same")
        brute = fine.reshape(size, m, size, m).sum(axis=(1, 3))
        assert np.max(np.abs(stamp - brute)) < 1e-3 * stamp.max()

    def test_truth_columns(self):
        image = simulate_image(SMALL, seed=3)
        galaxies = image.galaxies
        assert len(galaxies) == SMALL.n_galaxies
        lo, hi = SMALL.r_e_range
        assert np.all((galaxies["r_e"] >= lo) & (galaxies["r_e"] <= hi))
        assert np.all((galaxies["q"] >= 0.3) & (galaxies["q"] <= 1))
        assert_allclose(
            galaxies["mag"], 30.0 - 2.5 * np.log10(galaxies["flux"])
        )
        # a galaxy is never easier to measure than a star of equal flux
        sigma2 = image.sky_rms**2
        point = galaxies["flux"] / np.sqrt(
            galaxies["flux"] / SMALL.gain + image.psf_area * sigma2
        )
        assert np.all(galaxies["snr"] <= point * 1.01)
        assert np.all(galaxies["snr"] > 0.5)
        assert np.any(galaxies["snr"] < 5)
        assert np.any(galaxies["snr"] > 50)


class TestStars:
    def test_noiseless_stars_are_the_rendered_psf(self):
        params = quiet(
            shape=(72, 90),
            n_stars=6,
            fwhm=3.0,
            fwhm_variation=0.3,
            beta=3.5,
            ellipticity=0.12,
            theta=40.0,
            sky=50.0,
        )
        image = datasets._simulate(params, seed=5, noise=False)
        expected = image.sky_at(*pixel_grid(params.shape))
        for star in image.stars:
            assert star["fwhm"] == pytest.approx(
                float(image.fwhm_at(star["x"], star["y"]))
            )
            expected += render_psf_stamp(
                params.shape,
                x=star["x"],
                y=star["y"],
                fwhm=star["fwhm"],
                beta=3.5,
                ellipticity=0.12,
                theta=40.0,
                flux=star["flux"],
            )
        unclipped = image.data < params.saturation
        difference = np.abs(image.data - expected)[unclipped]
        tolerance = 1e-4 * expected[unclipped] + 0.01
        assert np.all(difference < tolerance)

    def test_truth_columns_and_snr(self):
        image = simulate_image(SMALL, seed=4)
        stars = image.stars
        assert len(stars) == SMALL.n_stars
        assert stars.colnames == [
            "x",
            "y",
            "flux",
            "mag",
            "fwhm",
            "snr",
            "peak",
            "saturated",
        ]
        ny, nx = SMALL.shape
        assert np.all((stars["x"] >= -0.5) & (stars["x"] < nx - 0.5))
        assert np.all((stars["y"] >= -0.5) & (stars["y"] < ny - 0.5))
        assert_allclose(stars["mag"], 30.0 - 2.5 * np.log10(stars["flux"]))
        for star in stars[:5]:
            stamp = render_psf_stamp(
                (81, 81),
                x=40 + star["x"] - round(star["x"]),
                y=40 + star["y"] - round(star["y"]),
                fwhm=star["fwhm"],
                beta=SMALL.beta,
            )
            area = 1 / np.sum(stamp**2)
            sigma2 = (
                float(image.sky_at(star["x"], star["y"])) / 1.6
                + (5.0 / 1.6) ** 2
            )
            snr = star["flux"] / math.sqrt(star["flux"] / 1.6 + area * sigma2)
            assert star["snr"] == pytest.approx(snr, rel=1e-4)

    def test_psf_area(self):
        image = simulate_image(quiet(fwhm=3.3, beta=2.8), seed=1)
        stamp = render_psf_stamp((121, 121), x=60, y=60, fwhm=3.3, beta=2.8)
        assert image.psf_area == pytest.approx(1 / np.sum(stamp**2), rel=1e-6)
        assert image.header["SIMPSFA"] == pytest.approx(image.psf_area)

    def test_flux_range(self):
        params = quiet(shape=(64, 64), n_stars=4000)
        stars = simulate_image(params, seed=8).stars
        assert np.min(stars["snr"]) == pytest.approx(5.0, rel=0.05)
        fraction = np.mean(stars["saturated"])
        assert 0.005 < fraction < 0.05
        # dN/dF ∝ F^-1.5 between the faintest and the brightest star
        flux = np.asarray(stars["flux"])
        lo, hi = flux.min(), flux.max()
        assert 5000 < hi / lo < 20000
        for factor, tolerance in ((4, 0.05), (100, 0.15)):
            expected = ((factor * lo) ** -0.5 - hi**-0.5) / (
                lo**-0.5 - hi**-0.5
            )
            assert np.mean(flux > factor * lo) == pytest.approx(
                expected, rel=tolerance
            )

    def test_saturated_stars_are_clipped(self):
        params = quiet(shape=(256, 256), n_stars=300)
        image = simulate_image(params, seed=9)
        saturation = params.saturation
        assert image.data.max() == saturation
        margin = 10 * math.sqrt(saturation / params.gain)
        stars = image.stars
        bright = stars[stars["peak"] > saturation / 10]
        flagged = clean = 0
        for star in stars:
            others = np.hypot(bright["x"] - star["x"], bright["y"] - star["y"])
            isolated = not np.any((others > 0) & (others < 40))
            j, i = round(star["y"]), round(star["x"])
            around = image.data[max(j - 1, 0) : j + 2, max(i - 1, 0) : i + 2]
            level = star["peak"] + float(image.sky_at(i, j))
            assert star["saturated"] == (level >= saturation)
            if level > saturation + margin:
                assert around.max() == saturation
                flagged += 1
            elif level < saturation - margin and isolated:
                assert image.data[j, i] < saturation
                clean += 1
        assert flagged > 0
        assert clean > 0


class TestSky:
    def test_sky_mean_is_the_mean_of_the_sky_map(self):
        params = quiet(sky=800.0, sky_gradient=0.3)
        image = datasets._simulate(params, seed=2, noise=False)
        sky_map = image.sky_at(*pixel_grid(params.shape))
        assert image.sky_mean == pytest.approx(sky_map.mean(), rel=1e-12)
        assert image.sky_mean == pytest.approx(800.0, rel=1e-12)
        assert_allclose(image.data, sky_map, rtol=1e-6)
        # the ramp spans the requested fraction exactly
        assert (sky_map.max() - sky_map.min()) / 800.0 == pytest.approx(0.3)

    def test_fwhm_ramp_spans_the_variation(self):
        params = quiet(fwhm=4.0, fwhm_variation=0.2)
        image = simulate_image(params, seed=6)
        fwhm = image.fwhm_at(*pixel_grid(params.shape))
        assert (fwhm.max() - fwhm.min()) / 4.0 == pytest.approx(0.2)
        assert fwhm.mean() == pytest.approx(4.0)
        assert image.header["SIMFWHM"] == 4.0

    def test_sky_rms_is_the_noise(self):
        params = quiet(shape=(256, 256), sky=1500.0, gain=2.0, read_noise=8.0)
        image = simulate_image(params, seed=7)
        expected = math.sqrt(1500.0 / 2.0 + (8.0 / 2.0) ** 2)
        assert image.sky_rms == pytest.approx(expected)
        assert np.std(image.data) == pytest.approx(expected, rel=0.01)
        assert np.mean(image.data) == pytest.approx(
            image.sky_mean, abs=0.1 * expected
        )


class TestOutput:
    def test_int16_is_uint16_and_clipped(self, tmp_path):
        params = SimulationParams(
            shape=(96, 96),
            n_stars=100,
            n_galaxies=20,
            dtype="int16",
            sky=20.0,
            read_noise=30.0,
        )
        image = simulate_image(params, seed=10)
        assert image.data.dtype == np.uint16
        assert image.data.min() == 0
        assert image.data.max() == 60000
        floats = simulate_image(replace(params, dtype="float32"), seed=10).data
        expected = np.clip(floats, 0, None)
        assert np.max(np.abs(image.data - expected)) <= 0.5 + 1e-2
        path = tmp_path / "int16.fits"
        image.to_hdu(name="ccd00").writeto(path)
        with fits.open(path) as hdus:
            assert hdus[1].header["BITPIX"] == 16
            assert hdus[1].header["BZERO"] == 32768
            assert_array_equal(hdus[1].data, image.data)

    def test_header(self):
        image = simulate_image(SMALL, seed=1)
        header = image.header
        for key in (
            "GAIN",
            "RDNOISE",
            "SATURATE",
            "EXPTIME",
            "PHOTZP",
            "PIXSCAL1",
            "PIXSCAL2",
            "SIMFWHM",
            "SIMFWVAR",
            "SIMBETA",
            "SIMELLIP",
            "SIMTHETA",
            "SIMSKY",
            "SIMSEED",
        ):
            assert key in header
            assert header.comments[key]
        assert header["FILTER"] == "r"
        assert header["BUNIT"] == "adu"
        assert header["OBJECT"] == "QualityFITS simulation"
        assert header["SIMSEED"] == 1
        wcs = WCS(header)
        ra0, dec0 = wcs.pixel_to_world_values(0, 0)
        ra1, _ = wcs.pixel_to_world_values(1, 0)
        _, dec1 = wcs.pixel_to_world_values(0, 1)
        assert (dec1 - dec0) * 3600 == pytest.approx(0.187, rel=1e-4)
        assert ra1 < ra0  # east left
        centre = wcs.pixel_to_world_values(
            (SMALL.shape[1] - 1) / 2, (SMALL.shape[0] - 1) / 2
        )
        assert_allclose(centre, (SMALL.ra, SMALL.dec), atol=1e-12)


class TestCosmicRays:
    def test_mask_and_events(self):
        params = quiet(shape=(128, 128), n_cr_hits=40, n_cr_tracks=6)
        image = datasets._simulate(params, seed=12, noise=False)
        events = image.cr_events
        assert len(events) == 46
        assert sorted(set(events["kind"])) == ["hit", "track"]
        assert image.cr_mask.any()
        deposit = image.data - image.sky_at(*pixel_grid(params.shape))
        threshold = 0.5 * image.sky_rms
        assert_array_equal(image.cr_mask, deposit > threshold)
        assert deposit.sum() == pytest.approx(events["flux"].sum(), rel=1e-5)
        for event in events:
            if event["npix"] == 0:
                continue
            j, i = round(event["y"]), round(event["x"])
            assert image.cr_mask[
                max(j - 1, 0) : j + 2, max(i - 1, 0) : i + 2
            ].any()
        hits = events[events["kind"] == "hit"]
        assert np.all(hits["npix"] <= 4)
        tracks = events[events["kind"] == "track"]
        assert np.all((tracks["length"] >= 5) & (tracks["length"] <= 60))

    def test_cosmic_rays_are_sharp_in_noisy_images(self):
        image = simulate_image(SMALL, seed=13)
        assert image.cr_mask.sum() > 20
        sky = image.sky_at(*pixel_grid(SMALL.shape))
        # most masked pixels stand well above the noise
        excess = (image.data - sky)[image.cr_mask] / image.sky_rms
        assert np.median(excess) > 5


class TestExposure:
    def test_layout_and_wcs(self):
        params = SimulationParams(
            shape=(45, 20),
            n_stars=2,
            n_galaxies=2,
            n_cr_hits=1,
            n_cr_tracks=0,
        )
        hdus, images = simulate_exposure(params, seed=21)
        assert len(hdus) == 37
        assert hdus[0].data is None
        assert hdus[0].header["NEXTEND"] == 36
        assert hdus[0].header["INSTRUME"] == "QualityFITS-sim"
        names = [hdu.name for hdu in hdus[1:]]
        assert names == [f"ccd{k:02d}" for k in range(36)]
        boxes = []
        for hdu in hdus[1:]:
            x1, x2, y1, y2 = map(int, re.findall(r"\d+", hdu.header["DETSEC"]))
            assert (x2 - x1 + 1, y2 - y1 + 1) == (20, 45)
            boxes.append((x1, x2, y1, y2))
        for k, a in enumerate(boxes):
            for b in boxes[k + 1 :]:
                assert (
                    a[1] < b[0] or b[1] < a[0] or a[3] < b[2] or (b[3] < a[2])
                )
        detsize = re.findall(r"\d+", hdus[1].header["DETSIZE"])
        width, height = int(detsize[1]), int(detsize[3])
        assert max(b[1] for b in boxes) == width
        assert max(b[3] for b in boxes) == height
        # 9 columns and 4 rows
        assert len({b[0] for b in boxes}) == 9
        assert len({b[2] for b in boxes}) == 4
        # one projection: the centre of every CCD lands, in the frame of
        # ccd00, where the DETSEC offsets put it
        reference = WCS(hdus[1].header)
        for hdu, box in zip(hdus[1:], boxes, strict=True):
            world = WCS(hdu.header).pixel_to_world_values(9.5, 22.0)
            x, y = reference.world_to_pixel_values(*world)
            assert x == pytest.approx(box[0] - boxes[0][0] + 9.5, abs=1e-6)
            assert y == pytest.approx(box[2] - boxes[0][2] + 22.0, abs=1e-6)
        # the tangent point is the centre of the mosaic
        centre = ((width + 1) / 2, (height + 1) / 2)
        for hdu, box in zip(hdus[1:], boxes, strict=True):
            world = WCS(hdu.header).pixel_to_world_values(
                centre[0] - box[0], centre[1] - box[2]
            )
            assert_allclose(world, (params.ra, params.dec), atol=1e-10)
        # neighbours: RA falls along a row (east left), Dec rises upwards
        centres = [
            WCS(h.header).pixel_to_world_values(9.5, 22.0) for h in hdus[1:]
        ]
        assert centres[1][0] < centres[0][0]
        assert centres[9][1] > centres[0][1]
        # the PSF varies smoothly over the focal plane
        fwhm = np.array([image.params.fwhm for image in images])
        assert np.all(np.abs(fwhm / 4.0 - 1) <= 0.05 + 1e-12)
        corner, middle = fwhm[0], fwhm[13]
        assert corner > middle
        seeds = {image.seed for image in images}
        assert len(seeds) == 36
        assert_array_equal(hdus[5].data, images[4].data)

    def test_write_exposure_streams_the_same_file(self, tmp_path):
        params = SimulationParams(
            shape=(40, 32),
            n_stars=5,
            n_galaxies=5,
            n_cr_hits=2,
            n_cr_tracks=1,
            dtype="int16",
        )
        hdus, _ = simulate_exposure(params, n_ccds=4, seed=5)
        serial = write_exposure(tmp_path / "a.fits", params, n_ccds=4, seed=5)
        pooled = write_exposure(
            tmp_path / "b.fits", params, n_ccds=4, seed=5, jobs=2
        )
        for path in (serial, pooled):
            with fits.open(path) as written:
                assert len(written) == 5
                for k in range(1, 5):
                    assert written[k].header["BITPIX"] == 16
                    assert written[k].name == hdus[k].name
                    assert_array_equal(written[k].data, hdus[k].data)
                    assert (
                        written[k].header["DETSEC"]
                        == (hdus[k].header["DETSEC"])
                    )

    def test_write_sample(self, tmp_path):
        path = write_sample(tmp_path / "sample.fits", shape=(64, 32))
        with fits.open(path) as hdus:
            assert len(hdus) == 5
            assert hdus[1].data.shape == (64, 32)
            assert hdus[1].header["SIMSEED"] != hdus[2].header["SIMSEED"]


class TestCommandLine:
    def test_single_image(self, tmp_path, capsys):
        out = tmp_path / "one.fits"
        status = main(
            [
                str(out),
                "--shape",
                "48",
                "64",
                "--stars",
                "5",
                "--galaxies",
                "5",
                "--seed",
                "3",
                "--fwhm",
                "3.5",
            ]
        )
        assert status == 0
        assert str(out) in capsys.readouterr().out
        with fits.open(out) as hdus:
            assert len(hdus) == 1
            assert hdus[0].data.shape == (48, 64)
            assert hdus[0].header["SIMFWHM"] == 3.5
            assert hdus[0].header["SIMSEED"] == 3

    def test_mosaic(self, tmp_path, capsys):
        out = tmp_path / "mef.fits"
        status = main(
            [
                str(out),
                "--ccds",
                "2",
                "--shape",
                "32",
                "32",
                "--dtype",
                "int16",
                "--stars",
                "3",
                "--galaxies",
                "3",
            ]
        )
        assert status == 0
        assert "2 CCDs" in capsys.readouterr().out
        with fits.open(out) as hdus:
            assert [hdu.name for hdu in hdus] == ["PRIMARY", "ccd00", "ccd01"]
            assert hdus[1].data.dtype == np.uint16

    def test_invalid_parameter(self, tmp_path, capsys):
        status = main([str(tmp_path / "x.fits"), "--fwhm", "-1"])
        assert status == 2
        assert "fwhm" in capsys.readouterr().err


class TestValidation:
    @pytest.mark.parametrize(
        ("changes", "name"),
        [
            ({"shape": (8, 64)}, "shape"),
            ({"shape": (64,)}, "shape"),
            ({"fwhm": 0.0}, "fwhm"),
            ({"fwhm_variation": -0.1}, "fwhm_variation"),
            ({"beta": 1.0}, "beta"),
            ({"ellipticity": 0.9}, "ellipticity"),
            ({"sky": -1.0}, "sky"),
            ({"sky_gradient": 2.0}, "sky_gradient"),
            ({"gain": 0.0}, "gain"),
            ({"read_noise": float("nan")}, "read_noise"),
            ({"saturation": 100.0}, "saturation"),
            ({"n_stars": -1}, "n_stars"),
            ({"n_galaxies": 1.5}, "n_galaxies"),
            ({"n_cr_hits": True}, "n_cr_hits"),
            ({"r_e_range": (3.0, 1.0)}, "r_e_range"),
            ({"gl_order": 0}, "gl_order"),
            ({"dtype": "float64"}, "dtype"),
            ({"dtype": "int16", "saturation": 70000.0}, "saturation"),
            ({"pixscale": 0.0}, "pixscale"),
            ({"dec": 91.0}, "dec"),
            ({"layout": "hst"}, "layout"),
            ({"shape": (16, 16), "n_bad_columns": 17}, "n_bad_columns"),
        ],
    )
    def test_bad_values(self, changes, name):
        with pytest.raises(ValueError, match=name):
            SimulationParams(**changes)

    def test_saturation_too_low_for_the_noise(self):
        params = quiet(sky=10000.0, saturation=10500.0, read_noise=1e4)
        with pytest.raises(ValueError, match="saturation"):
            simulate_image(params, seed=1)

    def test_parameters_are_frozen(self):
        with pytest.raises(AttributeError):
            SMALL.fwhm = 3.0


SHARED_DATA = Path(__file__).resolve().parents[3] / "shared" / "data"
CP_IMAGE = SHARED_DATA / "decam_c4d_170316_062107_ooi_z_ls9.N2.fits.gz"


class TestHardCases:
    """What the hard simulations of issue 15 need: crowding, undersampled
    and large PSFs, strong ellipticity, the HST ``_flt`` and NOIRLab CP
    layouts."""

    @pytest.mark.parametrize(
        ("fwhm", "ellipticity", "theta"),
        [(4.0, 0.0, 0.0), (1.7, 0.15, 30.0), (9.5, 0.15, -60.0)],
    )
    def test_crowded_field_is_the_sum_of_every_star(
        self, fwhm, ellipticity, theta
    ):
        # 12 000 stars per 2048 x 2048 pixels, on 160 x 160
        shape = (160, 160)
        n_stars = round(12_000 * shape[0] * shape[1] / 2048**2)
        params = quiet(
            shape=shape,
            n_stars=n_stars,
            fwhm=fwhm,
            beta=3.0,
            ellipticity=ellipticity,
            theta=theta,
            sky=200.0,
        )
        image = datasets._simulate(params, seed=21, noise=False)
        stars = image.stars
        assert len(stars) == n_stars == 73
        assert_allclose(stars["fwhm"], fwhm)
        expected = image.sky_at(*pixel_grid(shape))
        for star in stars:
            expected += render_psf_stamp(
                shape,
                x=star["x"],
                y=star["y"],
                fwhm=fwhm,
                beta=3.0,
                ellipticity=ellipticity,
                theta=theta,
                flux=star["flux"],
            )
        unclipped = image.data < params.saturation
        difference = np.abs(image.data - expected)[unclipped]
        assert np.all(difference < 1e-4 * expected[unclipped] + 0.01)
        # crowded indeed: the typical neighbour is within 3 FWHM of 4 px
        xy = np.column_stack([stars["x"], stars["y"]])
        d = np.sort(np.hypot(*(xy[:, None] - xy[None, :]).T), axis=0)[1]
        assert np.median(d) < 12.0

    @pytest.mark.parametrize(
        ("fwhm", "ellipticity", "beta", "theta"),
        [
            (1.6, 0.0, 4.5, 0.0),
            (1.7, 0.15, 3.5, 25.0),
            (9.5, 0.15, 3.5, 110.0),
            (10.0, 0.0, 4.5, 0.0),
        ],
    )
    def test_pixel_integrated_second_moments(
        self, fwhm, ellipticity, beta, theta
    ):
        """The truth FWHM is that of the profile before the pixels: the
        pixel values' second moments are the Moffat's plus 1/12 px² along
        x and y (the pixel box), at 1.6 px as at 10 px."""
        alpha = fwhm / (2 * math.sqrt(2 ** (1 / beta) - 1))
        half = math.ceil(25 * alpha)
        x0, y0 = half + 0.3, half - 0.2
        stamp = render_psf_stamp(
            (2 * half + 1, 2 * half + 1),
            x=x0,
            y=y0,
            fwhm=fwhm,
            beta=beta,
            ellipticity=ellipticity,
            theta=theta,
        )
        y, x = np.mgrid[: 2 * half + 1, : 2 * half + 1]
        dx, dy = x - x0, y - y0
        total = stamp.sum()
        moments = np.array(
            [
                [(stamp * dx * dx).sum(), (stamp * dx * dy).sum()],
                [(stamp * dx * dy).sum(), (stamp * dy * dy).sum()],
            ]
        ) / total
        a, b = alpha * (1 + ellipticity), alpha * (1 - ellipticity)
        c, s = math.cos(math.radians(theta)), math.sin(math.radians(theta))
        rot = np.array([[c, -s], [s, c]])
        pixel_free = rot @ np.diag([a * a, b * b]) @ rot.T / (2 * (beta - 2))
        assert_allclose(
            moments, pixel_free + np.eye(2) / 12, atol=2e-3 * a * a
        )
        assert total == pytest.approx(1.0, rel=2e-3)

    def test_truth_file_lists_every_star(self, tmp_path, capsys):
        out, truth = tmp_path / "crowd.fits", tmp_path / "truth.fits"
        args = [str(out), "--shape", "128", "128", "--stars", "47",
                "--galaxies", "10", "--fwhm", "1.8", "--ellipticity",
                "0.15", "--theta", "20", "--cr-hits", "5", "--cr-tracks",
                "1", "--seed", "4", "--ccds", "2", "--truth", str(truth)]
        assert main(args) == 0
        assert str(truth) in capsys.readouterr().out
        params = SimulationParams(
            shape=(128, 128), n_stars=47, n_galaxies=10, fwhm=1.8,
            ellipticity=0.15, theta=20.0, n_cr_hits=5, n_cr_tracks=1,
        )
        _, images = simulate_exposure(params, n_ccds=2, seed=4)
        with fits.open(truth) as hdus:
            assert [h.name for h in hdus[1:]] == [
                "STARS", "GALAXIES", "COSMICS"]
            stars = hdus["STARS"].data
            assert len(stars) == 94
            assert len(hdus["GALAXIES"].data) == 20
            for k, image in enumerate(images):
                mine = stars[stars["ccd"] == f"ccd{k:02d}"]
                assert_array_equal(mine["x"], image.stars["x"])
                assert_array_equal(mine["flux"], image.stars["flux"])
                assert_allclose(mine["fwhm"], image.stars["fwhm"])
            cosmics = hdus["COSMICS"].data
            assert len(cosmics) == sum(len(i.cr_events) for i in images)

    def test_bad_columns(self):
        params = quiet(shape=(64, 80), n_bad_columns=5, sky=400.0)
        image = simulate_image(params, seed=3)
        clean = simulate_image(replace(params, n_bad_columns=0), seed=3)
        columns = list(image.bad_columns)
        assert len(set(columns)) == 5
        assert columns == sorted(columns)
        good = np.setdiff1d(np.arange(80), columns)
        # the rest of the image is the same with or without bad columns
        assert_array_equal(image.data[:, good], clean.data[:, good])
        for k, column in enumerate(columns):
            if k % 2 == 0:
                assert np.all(image.data[:, column] == 0)
            else:
                raised = image.data[:, column] - clean.data[:, column]
                assert_allclose(raised, 50 * params.sky_rms, rtol=1e-5)

    def test_hst_flt_layout(self, tmp_path):
        params = SimulationParams(
            shape=(96, 112), n_stars=40, n_galaxies=30, n_cr_hits=15,
            n_cr_tracks=2, fwhm=1.8, n_bad_columns=3, layout="hst_flt",
            sky_gradient=0.2, saturation=20000.0,
        )
        path = write_exposure(tmp_path / "x_flt.fits", params, n_ccds=2,
                              seed=8)
        _, images = simulate_exposure(params, n_ccds=2, seed=8)
        with fits.open(path) as hdus:
            assert hdus[0].data is None
            assert hdus[0].header["FILETYPE"] == "SCI"
            names = [(h.name, h.ver) for h in hdus[1:]]
            assert names == [("SCI", 1), ("ERR", 1), ("DQ", 1),
                             ("SCI", 2), ("ERR", 2), ("DQ", 2)]
            for k, image in enumerate(images):
                sci = hdus["SCI", k + 1]
                err = hdus["ERR", k + 1].data
                dq = hdus["DQ", k + 1].data
                assert_array_equal(sci.data, image.data)
                assert sci.header["SIMFWHM"] == pytest.approx(
                    image.params.fwhm)
                assert WCS(hdus["DQ", k + 1].header).has_celestial
                assert dq.dtype.kind == "i"
                assert dq.dtype.itemsize == 2
                bad = np.zeros(dq.shape, dtype=bool)
                bad[:, list(image.bad_columns)] = True
                assert_array_equal((dq & 4) != 0, bad)
                assert_array_equal((dq & 4096) != 0, image.cr_mask)
                assert_array_equal((dq & 256) != 0,
                                   image.data >= params.saturation)
                assert image.cr_mask.any()
                assert (image.data >= params.saturation).any()
                assert set(np.unique(dq)) <= {
                    0, 4, 256, 4096, 4 | 256, 4 | 4096, 256 | 4096,
                    4 | 256 | 4096}
                # ERR is the noise of the noiseless image: at least the
                # sky's, higher on the stars
                sky = image.sky_at(*pixel_grid(params.shape))
                floor = np.sqrt(sky / params.gain
                                + (params.read_noise / params.gain) ** 2)
                assert np.all(err >= floor * (1 - 1e-6))
                peaks = [(round(s["y"]), round(s["x"]))
                         for s in image.stars if s["peak"] > 5000]
                assert peaks
                for j, i in peaks:
                    assert err[j, i] > 2 * floor[j, i]

    def test_err_is_the_pixel_sigma(self):
        params = quiet(shape=(256, 256), sky=900.0, sky_gradient=0.8,
                       gain=2.0, read_noise=6.0, layout="hst_flt")
        image = simulate_image(params, seed=12)
        sky = image.sky_at(*pixel_grid(params.shape))
        assert_allclose(image.sigma, np.sqrt(sky / 2.0 + 9.0), rtol=1e-6)
        pulls = (image.data - sky) / image.sigma
        assert np.std(pulls) == pytest.approx(1.0, abs=0.01)
        plain = simulate_image(replace(params, layout="plain"), seed=12)
        assert plain.sigma is None
        assert_array_equal(plain.data, image.data)

    def test_cp_trio(self, tmp_path):
        params = SimulationParams(
            shape=(80, 96), n_stars=30, n_galaxies=20, n_cr_hits=10,
            n_cr_tracks=1, fwhm=3.7, ellipticity=0.04, n_bad_columns=2,
            layout="cp", saturation=30000.0,
        )
        path = tmp_path / "c4d_sim_ooi_z.fits"
        assert write_exposure(path, params, n_ccds=1, seed=5) == path
        image = simulate_image(params, seed=5)
        names = datasets.cp_file_names(path)
        assert [n.name for n in names] == [
            "c4d_sim_ooi_z.fits", "c4d_sim_oow_z.fits", "c4d_sim_ood_z.fits"]
        planes = []
        for name, kind in zip(names, ("image", "wtmap", "dqmask"),
                              strict=True):
            with fits.open(name) as hdus:
                assert len(hdus) == 2
                assert hdus[0].data is None
                assert hdus[0].header["PROCTYPE"] == "InstCal"
                assert hdus[0].header["PRODTYPE"] == kind
                header = hdus[1].header
                assert hdus[1].header["EXTNAME"] == "ccd00"
                assert header["FWHM"] == pytest.approx(3.7)
                assert header["ELLIPTIC"] == pytest.approx(0.08 / 1.04)
                assert header["AVSKY"] == pytest.approx(image.sky_mean)
                planes.append(hdus[1].data.copy())
        data, weight, dq = planes
        assert_array_equal(data, image.data)
        assert dq.dtype.kind == "i"
        assert dq.dtype.itemsize == 4
        assert set(np.unique(dq)) <= {0, 1, 3, 5}
        bad = np.zeros(dq.shape, dtype=bool)
        bad[:, list(image.bad_columns)] = True
        assert_array_equal(dq == 1, bad)
        assert_array_equal(dq == 3, image.saturated & ~bad)
        assert_array_equal(dq == 5, image.cr_mask & ~image.saturated & ~bad)
        # weight 0 exactly where flagged, as in the CP's own files
        assert_array_equal(weight == 0, dq != 0)
        good = dq == 0
        assert_allclose(weight[good], 1 / image.sigma[good] ** 2, rtol=1e-6)

    @pytest.mark.skipif(not CP_IMAGE.exists(), reason="no shared data")
    def test_cp_keywords_are_the_real_ones(self, tmp_path):
        path = write_exposure(
            tmp_path / "s_ooi.fits", replace(SMALL, layout="cp"), n_ccds=1,
            seed=1)
        with fits.open(CP_IMAGE) as real, fits.open(path) as ours:
            for key in ("PROCTYPE", "PRODTYPE", "OBSTYPE", "EXPTIME"):
                assert key in real[0].header
                assert key in ours[0].header
            for key in ("FWHM", "ELLIPTIC", "AVSKY", "AVSIG", "GAINA",
                        "GAINB", "RDNOISEA", "RDNOISEB", "SATURATA",
                        "SATURATB", "SATURATE", "WTMAP", "BPM", "DETPOS"):
                assert key in real[1].header, key
                assert key in ours[1].header, key

    def test_cp_file_names(self):
        assert [p.name for p in datasets.cp_file_names(
            Path("d/c4d_1_ooi_z_ls9.fits.fz"))] == [
            "c4d_1_ooi_z_ls9.fits.fz", "c4d_1_oow_z_ls9.fits.fz",
            "c4d_1_ood_z_ls9.fits.fz"]
        assert [p.name for p in datasets.cp_file_names(
            Path("sim.fits.gz"))] == [
            "sim.fits.gz", "sim_oow.fits.gz", "sim_ood.fits.gz"]

    def test_plain_layout_has_no_sigma(self):
        with pytest.raises(ValueError, match="sigma"):
            simulate_image(SMALL, seed=1).hst_hdus()

    def test_cli_layouts(self, tmp_path, capsys):
        out = tmp_path / "x.fits"
        assert main([str(out), "--shape", "32", "40", "--stars", "3",
                     "--galaxies", "3", "--layout", "cp",
                     "--bad-columns", "2"]) == 0
        text = capsys.readouterr().out
        assert "x_oow.fits" in text
        assert "x_ood.fits" in text
        assert (tmp_path / "x_ood.fits").exists()
        assert main([str(out), "--shape", "32", "40", "--layout",
                     "hst_flt"]) == 0
        with fits.open(out) as hdus:
            assert [h.name for h in hdus] == ["PRIMARY", "SCI", "ERR", "DQ"]
        assert main([str(out), "--layout", "hst_flt", "--bad-columns",
                     "99999", "--shape", "32", "40"]) == 2
        assert "n_bad_columns" in capsys.readouterr().err
