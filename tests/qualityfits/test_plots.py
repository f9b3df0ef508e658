"""The pictures: QA plots, mosaics, CCD previews, and the mosaic layout.

Reports under test come from real assessments of small simulated
images: a four-CCD exposure with a WCS whose third CCD is constant (so
it fails), and a single image without a WCS (placement "none").  The
mosaic placement is tested directly on synthetic layouts with flipped
and rotated CCDs, by where a marked corner pixel lands.
"""

from __future__ import annotations

import dataclasses
import math
import subprocess
import sys

import numpy as np
import pytest
from astropy.io import fits
from astropy.table import Table
from matplotlib.image import imread
from numpy.testing import assert_allclose, assert_array_equal

import qualityfits
from qualityfits import plots
from qualityfits.config import QualityConfig
from qualityfits.datasets import (
    SimulationParams,
    simulate_exposure,
    simulate_image,
)
from qualityfits.report import Preview

SMALL = SimulationParams(
    shape=(512, 256), n_stars=100, n_galaxies=120, n_cr_hits=10,
    n_cr_tracks=1,
)
FAILED = "ccd02"


def read_png(path):
    image = imread(path)
    assert image.dtype == np.float32
    assert image.ndim == 3
    assert image.shape[2] in (3, 4)
    return image


def assert_not_blank(image):
    rgb = image[..., :3]
    assert rgb.std() > 0.01
    colours = np.unique((rgb * 255).astype(np.uint8).reshape(-1, 3), axis=0)
    assert len(colours) > 20


@pytest.fixture(scope="module")
def mosaic_report(tmp_path_factory):
    """Four CCDs with a WCS, the third one constant (failed)."""
    hdus, _ = simulate_exposure(SMALL, n_ccds=4, seed=31)
    hdus[3].data = np.full(hdus[3].data.shape, 7.0, np.float32)
    path = tmp_path_factory.mktemp("plots") / "mosaic.fits"
    hdus.writeto(path)
    # 8-9 PSF stars per CCD: published anyway (psf_min_stars), so that
    # the PSF maps and model are drawn.
    return qualityfits.assess(path, jobs=1,
                              config=QualityConfig(psf_min_stars=5))


@pytest.fixture(scope="module")
def single_report(tmp_path_factory):
    """One image without a celestial WCS: placement "none"."""
    image = simulate_image(dataclasses.replace(SMALL, shape=(384, 384)),
                           seed=5)
    header = image.header.copy()
    for key in ("WCSAXES", "CTYPE1", "CTYPE2", "CUNIT1", "CUNIT2",
                "CRVAL1", "CRVAL2", "CRPIX1", "CRPIX2", "CD1_1", "CD1_2",
                "CD2_1", "CD2_2", "RADESYS", "EQUINOX"):
        header.remove(key, ignore_missing=True)
    path = tmp_path_factory.mktemp("plots") / "single.fits"
    fits.PrimaryHDU(image.data, header).writeto(path)
    return qualityfits.assess(path, jobs=1)


@pytest.fixture(scope="module")
def mosaic_plots(mosaic_report, tmp_path_factory):
    outdir = tmp_path_factory.mktemp("mosaic_plots")
    timings = {}
    written = plots.write_plots(mosaic_report, outdir, "mosaic",
                                ccd_previews=True, timings=timings)
    return outdir, written, timings


def test_fixtures(mosaic_report, single_report):
    statuses = {e.name: e.status for e in mosaic_report.extensions}
    assert statuses == {"ccd00": "ok", "ccd01": "ok", FAILED: "failed",
                        "ccd03": "ok"}
    assert mosaic_report.exposure.placement == "wcs"
    assert single_report.exposure.placement == "none"
    for report in (mosaic_report, single_report):
        assert all(e.preview is not None for e in report.extensions
                   if e.ok)


class TestWritePlots:
    def test_every_product_is_a_picture(self, mosaic_plots):
        outdir, written, _ = mosaic_plots
        by_id = {p.id: p for p in written}
        assert len(by_id) == len(written)
        assert set(plots.PLOT_IDS) <= set(by_id)
        for pid in plots.PLOT_IDS:
            plot = by_id[pid]
            assert plot.path.parent == outdir
            assert plot.description
            image = read_png(plot.path)
            height, width = image.shape[:2]
            assert 350 <= width <= 1400
            assert 300 <= height <= 1300
            assert_not_blank(image)

    def test_names_follow_the_original(self, mosaic_plots):
        _, written, _ = mosaic_plots
        names = {p.path.name for p in written}
        for suffix in ("bkg_histo", "bkg_m", "fwhm_histo", "psf_m", "ell",
                       "rhmag", "rhmag_star", "rhmag_gal", "star_histo",
                       "gal_histo", "m", "wmm", "psf"):
            assert f"mosaic_{suffix}.png" in names

    def test_thumbnails(self, mosaic_plots):
        outdir, written, _ = mosaic_plots
        for plot in written:
            if plot.id not in plots.PLOT_IDS:
                assert plot.thumbnail is None
                continue
            assert plot.thumbnail == outdir / "tn" / (
                plot.path.stem + "_tn.png")
            thumb = read_png(plot.thumbnail)
            full = read_png(plot.path)
            assert 100 <= thumb.shape[1] <= 300
            assert thumb.shape[1] < full.shape[1]
            assert_not_blank(thumb)

    def test_ccd_previews_skip_the_failed_ccd(self, mosaic_report,
                                              mosaic_plots):
        outdir, written, _ = mosaic_plots
        previews = {p.id: p for p in written if p.id.startswith("preview_")}
        assert set(previews) == {
            f"preview_{n}{s}" for n in ("ccd00", "ccd01", "ccd03")
            for s in ("", "_weight")}
        for ext in mosaic_report.extensions:
            if not ext.ok:
                continue
            plot = previews[f"preview_{ext.name}"]
            assert plot.path == plots.ccd_preview_path(outdir, "mosaic",
                                                       ext.name)
            image = read_png(plot.path)
            assert image.shape[:2] == ext.preview.image.shape
            assert_not_blank(image)
            weight = read_png(previews[f"preview_{ext.name}_weight"].path)
            assert weight.shape[:2] == ext.preview.weight.shape

    def test_timings(self, mosaic_plots):
        _, _, timings = mosaic_plots
        assert set(timings) == {*plots.PLOT_IDS, "ccd_previews"}
        assert all(t >= 0 for t in timings.values())

    def test_failed_ccd_is_outlined_in_the_mosaics(self, mosaic_report,
                                                   mosaic_plots, tmp_path):
        """Red dashed outline and "failed" label, gone without the CCD."""
        outdir, _, _ = mosaic_plots
        keep = [e.ok for e in mosaic_report.extensions]
        layout = mosaic_report.exposure.layout[np.array(keep)]
        without = dataclasses.replace(
            mosaic_report, extensions=tuple(
                e for e in mosaic_report.extensions if e.ok),
            exposure=dataclasses.replace(mosaic_report.exposure,
                                         layout=layout))
        plots.write_plots(without, tmp_path, "mosaic", thumbnails=False)

        def red_pixels(path):
            rgb = read_png(path)[..., :3]
            r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
            return int(((r > 0.6) & (r - g > 0.3) & (r - b > 0.3)).sum())

        for name in ("m", "wmm", "bkg_m"):
            failed = red_pixels(outdir / f"mosaic_{name}.png")
            assert failed > red_pixels(tmp_path / f"mosaic_{name}.png") + 150

    def test_single_ccd_without_wcs(self, single_report, tmp_path):
        written = plots.write_plots(single_report, tmp_path, "single",
                                    ccd_previews=True)
        ids = [p.id for p in written]
        assert ids == [*plots.PLOT_IDS, "preview_PRIMARY",
                       "preview_PRIMARY_weight"]
        for plot in written:
            assert_not_blank(read_png(plot.path))

    def test_nan_everywhere_does_not_crash(self, mosaic_report, tmp_path):
        """A CCD whose preview, maps, catalogue and counts are all NaN."""
        ext = mosaic_report.extensions[0]
        nan_preview = Preview(
            image=np.full_like(ext.preview.image, np.nan),
            weight=np.zeros_like(ext.preview.weight), binning=8,
            weight_source="rms")
        sources = ext.sources.copy()
        sources["MAG_AUTO"] = np.nan
        grid = dataclasses.replace(
            ext.psf_grid, fwhm=np.full_like(ext.psf_grid.fwhm, np.nan))
        background = dataclasses.replace(
            ext.background,
            mesh_back=np.full_like(ext.background.mesh_back, np.nan),
            hist_counts=np.zeros_like(ext.background.hist_counts))
        broken = dataclasses.replace(
            ext, preview=nan_preview, sources=sources, psf_grid=grid,
            background=background,
            metrics={**ext.metrics, "PIXSCALE": math.nan})
        cells = mosaic_report.exposure.mosaic_psf.copy()
        cells["ELLIPTICITY"][::2] = np.nan
        report = dataclasses.replace(
            mosaic_report,
            extensions=(broken, *mosaic_report.extensions[1:]),
            exposure=dataclasses.replace(mosaic_report.exposure,
                                         mosaic_psf=cells))
        written = plots.write_plots(report, tmp_path, "nan",
                                    thumbnails=False)
        assert [p.id for p in written] == list(plots.PLOT_IDS)
        for plot in written:
            assert_not_blank(read_png(plot.path))

    def test_no_preview_at_all(self, mosaic_report, tmp_path):
        report = dataclasses.replace(mosaic_report, extensions=tuple(
            dataclasses.replace(e, preview=None)
            for e in mosaic_report.extensions))
        written = plots.write_plots(report, tmp_path, "bare",
                                    ccd_previews=True, thumbnails=False)
        assert [p.id for p in written] == list(plots.PLOT_IDS)
        assert_not_blank(read_png(tmp_path / "bare_m.png"))

    def test_detsec_layout_with_a_flipped_ccd(self, mosaic_report,
                                              tmp_path):
        """Detector-pixel placement; the second CCD read out flipped."""
        layout = Table({
            "EXTNAME": ["ccd00", "ccd01", FAILED, "ccd03"],
            "NAXIS1": [256] * 4, "NAXIS2": [512] * 4,
            "X00": [0.5, 566.5, 600.5, 1156.5],
            "Y00": [0.5, 0.5, 0.5, 0.5],
            "X10": [256.5, 310.5, 856.5, 900.5],
            "Y10": [0.5, 0.5, 0.5, 0.5],
            "X01": [0.5, 566.5, 600.5, 1156.5],
            "Y01": [512.5, 512.5, 512.5, 512.5],
        })
        report = dataclasses.replace(
            mosaic_report, exposure=dataclasses.replace(
                mosaic_report.exposure, placement="detsec", layout=layout))
        written = plots.write_plots(report, tmp_path, "detsec",
                                    thumbnails=False)
        for plot in written:
            assert_not_blank(read_png(plot.path))


class TestCcdPreview:
    def preview(self):
        rng = np.random.default_rng(3)
        image = rng.normal(1000.0, 5.0, (40, 20)).astype(np.float32)
        image[0, 0] = 1e5  # bottom-left block (FITS order): a bright star
        image[-1, -1] = np.nan  # top-right block: no usable pixel
        weight = np.ones((40, 20), np.float32)
        weight[:, :10] = 0.5
        return Preview(image=image, weight=weight, binning=8,
                       weight_source="flat")

    def test_image_is_shown_north_up(self, tmp_path):
        path = tmp_path / "ccd.png"
        plots.write_ccd_preview(self.preview(), path)
        rgb = read_png(path)[..., :3]
        assert rgb.shape[:2] == (40, 20)
        # PNG row 0 is the top: FITS row 0 is the PNG's last row.
        assert_allclose(rgb[-1, 0], [1.0, 1.0, 1.0])
        assert_allclose(rgb[0, -1], np.array(plots.NO_DATA_RGB) / 255.0,
                        atol=1e-6)
        sky = rgb[5:-5, 5:-5, 0]
        assert 0.05 < np.median(sky) < 0.4
        assert sky.std() > 0.01

    def test_weight(self, tmp_path):
        path = tmp_path / "ccd_weight.png"
        plots.write_ccd_preview(self.preview(), path, kind="weight")
        grey = read_png(path)[..., 0]
        assert grey[:, :10].max() < grey[:, 10:].min()

    def test_bad_kind(self, tmp_path):
        with pytest.raises(ValueError, match="kind"):
            plots.write_ccd_preview(self.preview(), tmp_path / "x.png",
                                    kind="flags")

    def test_write_ccd_previews(self, tmp_path):
        written = plots.write_ccd_previews(self.preview(), tmp_path, "img",
                                           "CCD 7/a")
        assert [p.id for p in written] == ["preview_CCD_7_a",
                                           "preview_CCD_7_a_weight"]
        assert [p.path.name for p in written] == ["img_CCD_7_a.png",
                                                  "img_CCD_7_a_weight.png"]
        assert all(p.path.is_file() for p in written)


def layout_table(rows):
    names = ("EXTNAME", "NAXIS1", "NAXIS2", "X00", "Y00", "X10", "Y10",
             "X01", "Y01")
    return Table(rows=rows, names=names)


class TestPlacement:
    """Three CCDs of 100 x 200 pixels (x by y), binned 10 x 10.

    ``a`` as read out, ``b`` flipped along x, ``c`` rotated: its x axis
    runs up the mosaic and its y axis to the left.  Gaps of 10 pixels.
    """

    LAYOUT = (
        ("a", 100, 200, 0.5, 0.5, 100.5, 0.5, 0.5, 200.5),
        ("b", 100, 200, 210.5, 0.5, 110.5, 0.5, 210.5, 200.5),
        ("c", 200, 100, 320.5, 0.5, 320.5, 200.5, 220.5, 0.5),
    )

    def arrays(self):
        a = np.zeros((20, 10))
        b = np.zeros((20, 10))
        c = np.zeros((10, 20))
        a[0, 0] = b[0, 0] = c[0, 0] = 1.0  # the first pixel
        b[0, -1] = c[0, -1] = 2.0  # the end of the first row
        return [a, b, c]

    def test_orientations(self):
        places = plots.ccd_places(layout_table(self.LAYOUT))
        a, b, c = places
        assert (a.transpose, a.flip_rows, a.flip_cols) == (False, False,
                                                           False)
        assert (b.transpose, b.flip_rows, b.flip_cols) == (False, False,
                                                           True)
        assert (c.transpose, c.flip_rows, c.flip_cols) == (True, False,
                                                           True)
        assert a.box() == (0.5, 100.5, 0.5, 200.5)
        assert b.box() == (110.5, 210.5, 0.5, 200.5)
        assert c.box() == (220.5, 320.5, 0.5, 200.5)
        assert_allclose([p.pixel_size for p in places], 1.0)

    def test_marked_corners_land_where_the_layout_says(self):
        places = plots.ccd_places(layout_table(self.LAYOUT))
        mosaic = plots.assemble_mosaic(self.arrays(), places, binning=10)
        assert mosaic.block == 1
        assert mosaic.scale == 10
        assert mosaic.extent == (0.5, 320.5, 0.5, 200.5)
        data = mosaic.data
        assert data.shape == (20, 32)
        # a: as read out, first pixel bottom left
        assert data[0, 0] == 1.0
        # b: flipped, first pixel bottom right, end of first row bottom
        # left of its box (columns 11-20)
        assert data[0, 20] == 1.0
        assert data[0, 11] == 2.0
        # c: first pixel bottom right, its first row runs upwards
        assert data[0, 31] == 1.0
        assert data[19, 31] == 2.0
        # gaps: 10 pixels = one raster column between the CCDs
        assert not mosaic.inside[:, 10].any()
        assert np.isnan(data[:, 10]).all()
        assert mosaic.inside[:, :10].all()
        assert np.nansum(data) == 3 * 1.0 + 2 * 2.0

    def test_sky_frame_is_shown_east_left(self):
        places = plots.ccd_places(layout_table(self.LAYOUT), flip_x=True)
        mosaic = plots.assemble_mosaic(self.arrays(), places, binning=10)
        data = mosaic.data
        assert mosaic.extent == (-320.5, -0.5, 0.5, 200.5)
        # a's first pixel (mosaic x = 0.5) is now at the right edge
        assert data[0, 31] == 1.0
        # c (mosaic x 220.5-320.5) is leftmost; its first pixel on the
        # left, its first row running upwards
        assert data[0, 0] == 1.0
        assert data[19, 0] == 2.0

    def test_failed_ccd_is_left_empty(self):
        places = plots.ccd_places(layout_table(self.LAYOUT))
        arrays = self.arrays()
        arrays[1] = None
        mosaic = plots.assemble_mosaic(arrays, places, binning=10)
        assert mosaic.data.shape == (20, 32)  # its place is kept
        assert not mosaic.inside[:, 11:21].any()
        assert mosaic.inside[:, :10].all()
        assert mosaic.inside[:, 22:].all()

    def test_large_mosaics_are_binned_further(self):
        places = plots.ccd_places(layout_table(self.LAYOUT))
        arrays = [np.ones_like(a) for a in self.arrays()]
        arrays[0][:2, :2] = np.nan
        arrays[0][0, 0] = 5.0
        mosaic = plots.assemble_mosaic(arrays, places, binning=10,
                                       max_pixels=16)
        assert mosaic.block == 2
        assert max(mosaic.data.shape) <= 16
        # the mean of the finite values in the block
        assert mosaic.data[0, 0] == 5.0
        assert mosaic.data[1, 1] == 1.0

    def test_orient_is_a_view(self):
        places = plots.ccd_places(layout_table(self.LAYOUT))
        array = np.arange(200.0).reshape(10, 20)
        shown = plots.orient(array, places[2])
        assert shown.shape == (20, 10)
        assert np.shares_memory(shown, array)
        assert_array_equal(shown[:, -1], array[0])

    def test_length_mismatch(self):
        places = plots.ccd_places(layout_table(self.LAYOUT))
        with pytest.raises(ValueError, match="one array"):
            plots.assemble_mosaic([None], places, binning=10)


class TestStretch:
    def test_sky_and_sources(self):
        rng = np.random.default_rng(0)
        values = rng.normal(500.0, 10.0, 10_000)
        values[:20] = 50_000.0
        values[20:30] = np.nan
        stretch = plots.image_stretch(values)
        assert stretch.sky == pytest.approx(500.0, abs=1.0)
        assert stretch.noise == pytest.approx(10.0, rel=0.05)
        t = stretch(values)
        assert np.isnan(t[20:30]).all()
        assert_array_equal(t[:20], 1.0)
        assert 0.1 < stretch(np.array([500.0]))[0] < 0.4
        grid = np.linspace(0.0, 1.0, 11)
        assert_allclose(stretch(stretch.inverse(grid)), grid, atol=1e-12)

    @pytest.mark.parametrize("values", [
        np.full(100, np.nan), np.full(100, 3.0), np.array([1.0])])
    def test_degenerate(self, values):
        stretch = plots.image_stretch(values)
        assert stretch.high > stretch.low
        assert stretch.soft > 0

    def test_weight_levels(self):
        assert plots.weight_levels(np.zeros(10)) == (0.0, 1.0)
        low, high = plots.weight_levels(np.linspace(0.9, 1.1, 1000))
        assert low == 0.0
        assert high == pytest.approx(1.05 * 1.099, rel=1e-3)
        assert plots.weight_levels(np.r_[np.full(5, np.nan), 2.0]) == (
            0.0, 2.1)


def test_importing_the_module_does_not_load_matplotlib():
    code = ("import sys, qualityfits.plots; "
            "print('matplotlib' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True,
                         text=True, check=True)
    assert out.stdout.strip() == "False"


# -- the PSF FWHM map: colour scale and CCD names ----------------------------
class TestPsfMapScale:
    def test_a_seven_percent_spread_uses_the_minimum_span(self):
        values = 0.645 * np.array([0.94, 0.97, 1.0, 1.0, 1.03, 1.07])
        median, span = plots.psf_map_scale(values)
        assert median == pytest.approx(0.645)
        assert span == plots.PSF_MAP_MIN_SPAN == 10.0

    def test_a_larger_spread_is_rounded_up(self):
        values = np.array([4.0, 4.0, 4.0, 4.92, 3.5, np.nan])  # +23 %
        median, span = plots.psf_map_scale(values)
        assert median == 4.0
        assert span == 25.0
        assert plots.psf_map_scale([4.0, 4.8])[1] == 10.0  # exactly +-9 %
        assert plots.psf_map_scale([4.0, 5.0, 4.5])[1] == 15.0

    def test_nothing_to_show(self):
        median, span = plots.psf_map_scale([np.nan, np.inf])
        assert math.isnan(median)
        assert span == plots.PSF_MAP_MIN_SPAN

    def test_the_drawn_map_is_in_percent_of_the_median(self, mosaic_report):
        fig = plots._new_figure()
        rep = plots._prepare(mosaic_report, "m")
        plots._plot_psf_m(fig, rep)
        values = np.concatenate([
            np.asarray(e.psf_grid.fwhm, float).ravel()
            for e in mosaic_report.extensions if e.ok])
        median, span = plots.psf_map_scale(values)
        ax, cax = fig.axes
        assert cax.get_ylim() == pytest.approx((-span, span))
        assert "[%]" in cax.get_ylabel()
        assert "median" in ax.get_title()
        shown = np.concatenate([im.get_array().compressed()
                                for im in ax.get_images()])
        expected = (values[np.isfinite(values)] / median - 1.0) * 100.0
        assert_allclose(np.sort(shown), np.sort(expected), rtol=1e-6,
                        atol=1e-9)


def _mosaic_of(report, n_x, n_y, shape):
    """``n_x`` x ``n_y`` copies of the report's first CCD on a DETSEC grid.

    ``shape`` is each CCD's (ny, nx); gaps of 5 % between them.
    """
    ext = report.extensions[0]
    ny, nx = shape
    rows = []
    exts = []
    for k in range(n_x * n_y):
        name = f"ccd{k:02d}"
        exts.append(dataclasses.replace(ext, index=k + 1, name=name,
                                        shape=shape))
        x0 = (k % n_x) * 1.05 * nx + 0.5
        y0 = (k // n_x) * 1.05 * ny + 0.5
        rows.append((name, nx, ny, x0, y0, x0 + nx, y0, x0, y0 + ny))
    layout = layout_table(rows)
    return dataclasses.replace(
        report, extensions=tuple(exts), exposure=dataclasses.replace(
            report.exposure, placement="detsec", layout=layout))


@pytest.mark.parametrize(("n_x", "n_y"), [(9, 4), (1, 1)])
def test_ccd_names_fit_their_ccd_and_are_legible(mosaic_report, n_x, n_y):
    """On a MegaCam-like 36-CCD mosaic and on one CCD."""
    report = _mosaic_of(mosaic_report, n_x, n_y, (4612, 2048))
    fig = plots._new_figure()
    plots._plot_psf_m(fig, plots._prepare(report, "m"))
    fig.canvas.draw()
    ax = fig.axes[0]
    renderer = fig.canvas.get_renderer()
    labels = [t for t in ax.texts
              if (t.get_gid() or "").startswith("ccd-label-")]
    assert len(labels) == n_x * n_y
    # the CCD's width on the canvas, pixels
    (x0, _), (x1, _) = ax.transData.transform([(0.0, 0.0), (2048.0, 0.0)])
    cell = abs(x1 - x0)
    for text in labels:
        # 8 pt is 11 pixels at 100 dpi: readable without a magnifier
        assert text.get_fontsize() >= 8.0
        assert text.get_window_extent(renderer).width <= cell
    if n_x * n_y == 1:
        assert labels[0].get_fontsize() == plots.CCD_LABEL_MAX_PT
    else:
        # not the 6.5 pt of before: 40 % of the CCD's width at least
        assert labels[0].get_window_extent(renderer).width > 0.4 * cell


def test_ccd_label_size_limits():
    assert plots.ccd_label_size(1000.0, 2000.0, "ccd00") == (
        plots.CCD_LABEL_MAX_PT)
    assert plots.ccd_label_size(5.0, 10.0, "ccd00") == (
        plots.CCD_LABEL_MIN_PT)
    # in between, the name takes 85 % of the width at most
    size = plots.ccd_label_size(40.0, 90.0, "ccd00")
    assert plots.CCD_LABEL_MIN_PT < size < plots.CCD_LABEL_MAX_PT
    assert size * 0.7 * 5 <= 0.85 * 40.0 + 1e-9
