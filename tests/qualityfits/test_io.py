"""Reading images, flats and masks (`qualityfits.io`) through `assess`.

Every test writes small seeded simulations (512 x 512 px) to a temporary
directory and assesses the file it wrote: the formats (.fits, .fits.gz,
tile-compressed .fits.fz), multi-extension layouts, pixel types and
scaling, data sections, flat/mask matching and mask conventions, jobs
and progress.  The real CFHT Elixir bad-pixel mask checks the mask
conventions on the file they were written for.
"""

from __future__ import annotations

import gzip
import json
import math
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits
from numpy.testing import assert_allclose, assert_array_equal
from testkit import shared_file

import qualityfits
from qualityfits.config import QualityConfig
from qualityfits.datasets import SimulationParams, simulate_image
from qualityfits.errors import InvalidParameterError, ShapeMismatchError
from qualityfits.io import (
    ImageSource,
    mask_to_bad,
    match_extensions,
    read_matched,
    resolve_mask_convention,
)
from qualityfits.metrics import METRICS
from qualityfits.parameters import QualityParameters
from qualityfits.pipeline import STEPS

SMALL = SimulationParams(
    shape=(512, 512), n_stars=150, n_galaxies=200, n_cr_hits=20,
    n_cr_tracks=2,
)
SMALL_INT = SimulationParams(
    shape=(512, 512), n_stars=150, n_galaxies=200, n_cr_hits=20,
    n_cr_tracks=2, dtype="int16",
)


def metric_values(ext):
    return {m.name: ext.metrics[m.name] for m in METRICS}


def assert_same_metrics(one, two):
    """Identical metrics, NaN equal to NaN."""
    a, b = metric_values(one), metric_values(two)
    differ = {
        k: (a[k], b[k]) for k in a
        if not (a[k] == b[k] or (math.isnan(a[k]) and math.isnan(b[k])))
    }
    assert differ == {}


def named(data, name):
    """An image extension with a lower-case EXTNAME (name= upper-cases)."""
    hdu = fits.ImageHDU(data)
    hdu.header["EXTNAME"] = name
    return hdu


def write_single(path, image):
    fits.PrimaryHDU(image.data, image.header).writeto(path, overwrite=True)
    return path


def gzip_file(src, dst):
    with Path(src).open("rb") as fin, gzip.open(dst, "wb") as fout:
        shutil.copyfileobj(fin, fout)
    return dst


@pytest.fixture(scope="module")
def sim():
    return simulate_image(SMALL, seed=101)


@pytest.fixture(scope="module")
def sim_int():
    return simulate_image(SMALL_INT, seed=102)


@pytest.fixture(scope="module")
def mef3(tmp_path_factory):
    """Empty primary + three 512 x 512 CCDs (distinct seeds)."""
    path = tmp_path_factory.mktemp("mef") / "mef3.fits"
    hdus = [fits.PrimaryHDU()]
    hdus += [simulate_image(SMALL, seed=200 + k).to_hdu(name=f"ccd{k:02d}")
             for k in range(3)]
    fits.HDUList(hdus).writeto(path)
    return path


# -- formats -----------------------------------------------------------------
class TestFormats:
    def test_gz_and_lossless_fz_give_identical_metrics(self, tmp_path,
                                                       sim_int):
        plain = write_single(tmp_path / "x.fits", sim_int)
        gz = gzip_file(plain, tmp_path / "x.fits.gz")
        fz = tmp_path / "x.fits.fz"
        fits.HDUList([
            fits.PrimaryHDU(),
            fits.CompImageHDU(sim_int.data, sim_int.header,
                              compression_type="RICE_1"),
        ]).writeto(fz)
        reports = [qualityfits.assess(p, jobs=1) for p in (plain, gz, fz)]
        for rep in reports:
            assert len(rep.extensions) == 1
            assert rep.extensions[0].status == "ok"
            assert rep.extensions[0].shape == (512, 512)
        assert_same_metrics(reports[0].extensions[0],
                            reports[1].extensions[0])
        assert_same_metrics(reports[0].extensions[0],
                            reports[2].extensions[0])

    def test_fz_pixels_are_the_uint16_values(self, tmp_path, sim_int):
        fz = tmp_path / "x.fits.fz"
        fits.HDUList([
            fits.PrimaryHDU(),
            fits.CompImageHDU(sim_int.data, sim_int.header,
                              compression_type="RICE_1"),
        ]).writeto(fz)
        with ImageSource(fz) as src:
            assert [e.index for e in src.extensions] == [1]
            data = src.read(src.extensions[0])
        assert data.dtype == np.dtype(np.float32)
        assert_array_equal(data, sim_int.data.astype(np.float32))

    def test_quantised_float_fz_within_quantisation(self, tmp_path, sim):
        plain = write_single(tmp_path / "f.fits", sim)
        fz = tmp_path / "f.fits.fz"
        fits.HDUList([
            fits.PrimaryHDU(),
            fits.CompImageHDU(sim.data, sim.header, compression_type="RICE_1",
                              quantize_level=16),
        ]).writeto(fz)
        with fits.open(fz) as hdul:
            decoded = np.array(hdul[1].data)
        step = float(np.max(np.abs(decoded - sim.data)))
        # ~20 PSF stars, perhaps fewer than psf_min_stars once quantised:
        # the numbers are compared here, not whether they are withheld.
        config = QualityConfig(psf_min_stars=5)
        a = qualityfits.assess(plain, jobs=1, config=config).extensions[0]
        b = qualityfits.assess(fz, jobs=1, config=config).extensions[0]
        assert b.status == "ok"
        # the .fz file is read exactly as astropy decodes it ...
        assert_array_equal(read_only_extension(fz), decoded)
        same = tmp_path / "decoded.fits"
        fits.PrimaryHDU(decoded, sim.header).writeto(same)
        assert_same_metrics(b, qualityfits.assess(
            same, jobs=1, config=config).extensions[0])
        # ... and quantize_level 16 means errors below sigma/16
        assert 0 < step < a.metrics["SKY_RMS"] / 16
        assert abs(a.metrics["SKY_MEAN"] - b.metrics["SKY_MEAN"]) < step
        assert_allclose(b.metrics["SKY_RMS"], a.metrics["SKY_RMS"],
                        rtol=0.01)
        assert abs(b.metrics["NOBJ"] - a.metrics["NOBJ"]) <= (
            0.02 * a.metrics["NOBJ"])
        # The quantisation noise may change which marginal candidates
        # become PSF stars (~20 on this CCD): the PSF metrics agree
        # within 3 times the sampling error of a median over them.
        assert_allclose(b.metrics["FWHM_PIX"], a.metrics["FWHM_PIX"],
                        rtol=0.035)
        assert abs(b.metrics["ELLIPTICITY"] - a.metrics["ELLIPTICITY"]) < 5e-3
        assert abs(b.metrics["MAGLIM_5SIG"] - a.metrics["MAGLIM_5SIG"]) < 0.03

    def test_gz_multi_extension(self, tmp_path, mef3):
        gz = gzip_file(mef3, tmp_path / "mef3.fits.gz")
        plain = qualityfits.assess(mef3, jobs=1)
        packed = qualityfits.assess(gz, jobs=1)
        assert [e.name for e in packed.extensions] == [
            "ccd00", "ccd01", "ccd02"]
        for one, two in zip(plain.extensions, packed.extensions,
                            strict=True):
            assert_same_metrics(one, two)


# -- layouts -----------------------------------------------------------------
class TestLayout:
    def test_single_image_in_the_primary_hdu(self, tmp_path, sim):
        path = write_single(tmp_path / "one.fits", sim)
        with ImageSource(path) as src:
            assert [(e.index, e.name, e.shape) for e in src.extensions] == [
                (0, "PRIMARY", (512, 512))]
        rep = qualityfits.assess(path, jobs=1)
        assert [e.name for e in rep.extensions] == ["PRIMARY"]
        assert rep.extensions[0].ok

    def test_every_image_hdu_is_a_ccd_tables_skipped(self, tmp_path):
        one = simulate_image(SMALL, seed=301)
        two = simulate_image(SMALL, seed=302)
        table = fits.BinTableHDU.from_columns(
            [fits.Column(name="X", format="E", array=np.arange(5.0))],
            name="CATALOG")
        path = tmp_path / "mixed.fits"
        fits.HDUList([fits.PrimaryHDU(), one.to_hdu(name="left"), table,
                      two.to_hdu(name="right")]).writeto(path)
        with ImageSource(path) as src:
            assert [(e.index, e.name) for e in src.extensions] == [
                (1, "left"), (3, "right")]
        rep = qualityfits.assess(path, jobs=1)
        assert [(e.index, e.name, e.status) for e in rep.extensions] == [
            (1, "left", "ok"), (3, "right", "ok")]
        # each CCD is measured as it would be on its own
        for ext, image in zip(rep.extensions, (one, two), strict=True):
            alone = write_single(tmp_path / f"{ext.name}.fits", image)
            assert_same_metrics(
                ext, qualityfits.assess(alone, jobs=1).extensions[0])

    def test_primary_keywords_reach_the_extensions(self, tmp_path, sim):
        header = sim.header.copy()
        del header["PHOTZP"]
        primary = fits.Header()
        primary["PHOTZP"] = 27.5
        path = tmp_path / "inherit.fits"
        fits.HDUList([fits.PrimaryHDU(header=primary),
                      fits.ImageHDU(sim.data, header, name="ccd")]
                     ).writeto(path)
        ext = qualityfits.assess(path, jobs=1).extensions[0]
        assert ext.metrics["ZEROPOINT"] == 27.5

    def test_in_memory_hdulist(self, sim, tmp_path):
        path = write_single(tmp_path / "one.fits", sim)
        hdul = fits.HDUList([fits.PrimaryHDU(sim.data, sim.header)])
        assert_same_metrics(
            qualityfits.assess(hdul, jobs=1).extensions[0],
            qualityfits.assess(path, jobs=1).extensions[0])


# -- pixels: byte order, dtype, scaling --------------------------------------
def read_only_extension(image):
    with ImageSource(image) as src:
        assert len(src.extensions) == 1
        return src.read(src.extensions[0])


def assert_native_float32(data):
    assert data.dtype == np.dtype(np.float32)
    assert data.dtype.isnative
    assert data.flags.c_contiguous


class TestPixels:
    def test_big_endian_file_read_as_native_float32(self, tmp_path, sim):
        path = write_single(tmp_path / "be.fits", sim)
        with fits.open(path) as hdul:  # FITS is big-endian on disk
            assert hdul[0].data.dtype.byteorder == ">"
        data = read_only_extension(path)
        assert_native_float32(data)
        assert_array_equal(data, sim.data)

    @pytest.mark.parametrize("dtype", [">f4", ">f8", ">i2", "<f8"])
    def test_in_memory_arrays_read_as_native_float32(self, dtype):
        values = np.arange(12.0).reshape(3, 4).astype(dtype)[:, ::-1]
        data = read_only_extension(fits.HDUList([fits.PrimaryHDU(values)]))
        assert_native_float32(data)
        assert_array_equal(data, values.astype(np.float64))

    def test_uint16_via_bzero_32768_exact(self, tmp_path):
        values = np.array([[0, 1, 2, 32767], [32768, 32769, 65534, 65535]],
                          dtype=np.uint16)
        path = tmp_path / "u16.fits"
        fits.PrimaryHDU(values).writeto(path)
        header = fits.getheader(path)
        assert (header["BITPIX"], header["BZERO"]) == (16, 32768)
        data = read_only_extension(path)
        assert_native_float32(data)
        assert_array_equal(data, values)

    def test_uint32_via_bzero_2_31_exact(self, tmp_path):
        # exactly representable in float32, but not if BZERO is added
        # after a float32 conversion of the stored int32 values
        values = np.array([[0, 1, 2, 1000, 65535],
                           [2**24, 2**31 - 128, 2**31, 2**31 + 256,
                            2**32 - 256]], dtype=np.uint32)
        path = tmp_path / "u32.fits"
        fits.PrimaryHDU(values).writeto(path)
        header = fits.getheader(path)
        assert (header["BITPIX"], header["BZERO"]) == (32, 2**31)
        data = read_only_extension(path)
        assert_native_float32(data)
        assert_array_equal(data.astype(np.float64), values.astype(np.float64))

    def test_bscale_bzero_and_blank(self, tmp_path):
        stored = np.array([[0, 10, -32768, 200], [-2, 4, 6, 8]],
                          dtype=np.int16)
        hdu = fits.PrimaryHDU(stored)
        hdu.header["BSCALE"] = 0.5
        hdu.header["BZERO"] = 100.0
        hdu.header["BLANK"] = -32768
        path = tmp_path / "scaled.fits"
        hdu.writeto(path)
        with fits.open(path, do_not_scale_image_data=True) as hdul:
            assert_array_equal(hdul[0].data, stored)
        data = read_only_extension(path)
        # physical = BSCALE * stored + BZERO; BLANK -> NaN
        expected = np.where(stored == -32768, np.nan, 0.5 * stored + 100.0)
        assert_array_equal(data, expected)

    @pytest.mark.parametrize("dtype", [np.uint16, np.uint32])
    def test_unsigned_in_memory_hdulist_exact(self, tmp_path, dtype):
        values = np.array([[0, 1, 2, 1000], [30000, 40000, 50000, 65535]],
                          dtype=dtype)
        path = tmp_path / "u.fits"
        fits.PrimaryHDU(values).writeto(path)
        # astropy scales on reading and keeps BZERO in the header
        with fits.open(path) as hdul:
            data = read_only_extension(hdul)
        assert_array_equal(data, values)
        data = read_only_extension(fits.HDUList([fits.PrimaryHDU(values)]))
        assert_array_equal(data, values)

    def test_assess_opened_uint16_file_as_the_path(self, tmp_path, sim_int):
        path = write_single(tmp_path / "int.fits", sim_int)
        by_path = qualityfits.assess(path, jobs=1).extensions[0]
        with fits.open(path) as hdul:
            opened = qualityfits.assess(hdul, jobs=1).extensions[0]
        assert_same_metrics(by_path, opened)


# -- data sections -----------------------------------------------------------
PRE_X, PRE_Y = 40, 4  # prescan columns and rows before the data section


def raw_frame(image):
    """Embed a 512 x 512 image in a 520 x 560 frame with overscan."""
    rng = np.random.default_rng(7)
    raw = rng.normal(300.0, 5.0, (520, 560)).astype(np.float32)
    raw[PRE_Y:PRE_Y + 512, PRE_X:PRE_X + 512] = image.data
    header = image.header.copy()
    header["DATASEC"] = (f"[{PRE_X + 1}:{PRE_X + 512},"
                         f"{PRE_Y + 1}:{PRE_Y + 512}]")
    # the WCS of the raw frame describes the same sky
    header["CRPIX1"] += PRE_X
    header["CRPIX2"] += PRE_Y
    return raw, header


def crop(raw):
    return raw[PRE_Y:PRE_Y + 512, PRE_X:PRE_X + 512]


@pytest.fixture(scope="module")
def sections(tmp_path_factory, sim):
    """Raw image with DATASEC, its crop, and masks/flats both ways."""
    out = tmp_path_factory.mktemp("datasec")
    raw, header = raw_frame(sim)
    fits.PrimaryHDU(raw, header).writeto(out / "raw.fits")
    fits.PrimaryHDU(sim.data, sim.header).writeto(out / "crop.fits")
    mask = np.ones(raw.shape, dtype=np.int16)  # 1 good, 0 bad
    mask[:, :PRE_X] = 0
    mask[:, PRE_X + 512:] = 0
    mask[150:250, 200:300] = 0
    fits.PrimaryHDU(mask).writeto(out / "rawmask.fits")
    fits.PrimaryHDU(crop(mask)).writeto(out / "cropmask.fits")
    flat = np.ones(raw.shape, dtype=np.float32)
    flat[:, :PRE_X] = 0.0  # overscan: no light
    flat[300:400, 50:150] = 0.2  # a dead patch in the data section
    fits.PrimaryHDU(flat).writeto(out / "rawflat.fits")
    fits.PrimaryHDU(crop(flat)).writeto(out / "cropflat.fits")
    return out, raw, mask


class TestDataSection:
    def test_read_crops_to_the_data_section(self, sections):
        out, raw, _ = sections
        with ImageSource(out / "raw.fits") as src:
            ext = src.extensions[0]
            assert ext.shape == (520, 560)
            assert ext.datasec == (PRE_Y, PRE_Y + 512, PRE_X, PRE_X + 512)
            assert ext.data_shape == (512, 512)
            assert_array_equal(src.read(ext), crop(raw))
            assert_array_equal(src.read(ext, crop=False), raw)

    def test_data_section_is_assessed(self, sections):
        out, _, _ = sections
        raw = qualityfits.assess(out / "raw.fits", jobs=1).extensions[0]
        cropped = qualityfits.assess(out / "crop.fits", jobs=1).extensions[0]
        assert raw.shape == (512, 512)
        assert_same_metrics(raw, cropped)

    def test_raw_geometry_mask_cut_like_the_image(self, sections):
        out, _, mask = sections
        with ImageSource(out / "raw.fits") as img, ImageSource(
                out / "rawmask.fits", label="mask") as msk:
            pairs = match_extensions(img, msk)
            assert list(pairs) == [0]
            cut = read_matched(msk, pairs[0], img.extensions[0])
        assert_array_equal(cut, crop(mask))
        raw = qualityfits.assess(out / "raw.fits", mask=out / "rawmask.fits",
                                 jobs=1).extensions[0]
        cropped = qualityfits.assess(out / "crop.fits",
                                     mask=out / "cropmask.fits",
                                     jobs=1).extensions[0]
        plain = qualityfits.assess(out / "crop.fits", jobs=1).extensions[0]
        assert_same_metrics(raw, cropped)
        # the mask did something: no source left in the masked patch
        x = np.asarray(raw.sources["X_IMAGE"]) - 1 + PRE_X
        y = np.asarray(raw.sources["Y_IMAGE"]) - 1 + PRE_Y
        inside = (x >= 200) & (x < 300) & (y >= 150) & (y < 250)
        assert not inside.any()
        assert raw.metrics["NOBJ"] < plain.metrics["NOBJ"]

    def test_data_section_sized_mask_also_accepted(self, sections):
        out, _, _ = sections
        one = qualityfits.assess(out / "raw.fits", mask=out / "rawmask.fits",
                                 jobs=1).extensions[0]
        two = qualityfits.assess(out / "raw.fits", mask=out / "cropmask.fits",
                                 jobs=1).extensions[0]
        assert_same_metrics(one, two)

    def test_raw_geometry_flat_cut_like_the_image(self, sections):
        out, _, _ = sections
        raw = qualityfits.assess(out / "raw.fits", flat=out / "rawflat.fits",
                                 jobs=1).extensions[0]
        cropped = qualityfits.assess(out / "crop.fits",
                                     flat=out / "cropflat.fits",
                                     jobs=1).extensions[0]
        assert raw.ok
        assert_same_metrics(raw, cropped)

    def test_sky_positions_follow_the_crop(self, sections):
        # The raw header's WCS describes raw pixels; positions measured
        # in the data section must be shifted by DATASEC before use.
        out, _, _ = sections
        raw = qualityfits.assess(out / "raw.fits", jobs=1).extensions[0]
        cropped = qualityfits.assess(out / "crop.fits", jobs=1).extensions[0]
        assert_allclose(raw.sources["X_IMAGE"], cropped.sources["X_IMAGE"])
        assert_allclose(raw.sources["ALPHA_J2000"],
                        cropped.sources["ALPHA_J2000"], rtol=0, atol=1e-7)
        assert_allclose(raw.sources["DELTA_J2000"],
                        cropped.sources["DELTA_J2000"], rtol=0, atol=1e-7)


# -- flat / mask matching ----------------------------------------------------
class TestMatchExtensions:
    def test_pairs_in_file_order_tables_skipped(self, tmp_path, mef3):
        hdus = [fits.PrimaryHDU()]
        for k in range(3):
            hdus.append(named(np.full((512, 512), k, np.int16), f"m{k}"))
            if k == 0:
                hdus.append(fits.BinTableHDU.from_columns(
                    [fits.Column(name="A", format="J", array=[1, 2])]))
        path = tmp_path / "mask.fits"
        fits.HDUList(hdus).writeto(path)
        with ImageSource(mef3) as img, ImageSource(path, label="mask") as m:
            pairs = match_extensions(img, m)
            assert {i: e.name for i, e in pairs.items()} == {
                1: "m0", 2: "m1", 3: "m2"}

    def test_extension_count_mismatch(self, tmp_path, mef3):
        path = tmp_path / "two.fits"
        fits.HDUList([fits.PrimaryHDU(),
                      fits.ImageHDU(np.ones((512, 512), np.int16)),
                      fits.ImageHDU(np.ones((512, 512), np.int16))]
                     ).writeto(path)
        with (ImageSource(mef3) as img,
              ImageSource(path, label="mask") as m,
              pytest.raises(ShapeMismatchError) as info):
            match_extensions(img, m)
        message = str(info.value)
        assert "two.fits" in message
        assert "mef3.fits" in message
        assert "2 image extension" in message
        assert "has 3" in message

    def test_shape_mismatch_names_extension_and_shapes(self, tmp_path, mef3):
        path = tmp_path / "flat.fits"
        hdus = [fits.PrimaryHDU()]
        hdus += [named(np.ones(shape, np.float32), name)
                 for name, shape in (("f0", (512, 512)), ("f1", (256, 512)),
                                     ("f2", (512, 512)))]
        fits.HDUList(hdus).writeto(path)
        with (ImageSource(mef3) as img,
              ImageSource(path, label="flat") as f,
              pytest.raises(ShapeMismatchError) as info):
            match_extensions(img, f)
        message = str(info.value)
        assert "flat.fits" in message
        assert "f1" in message
        assert "256x512" in message
        assert "ccd01" in message
        assert "512x512" in message


# -- mask conventions --------------------------------------------------------
class TestMaskConventions:
    values = np.array([[0.0, 1.0, 2.0], [np.nan, 1.0, -3.0]],
                      dtype=np.float32)

    def test_zero_is_bad(self):
        assert_array_equal(mask_to_bad(self.values, "zero"),
                           [[True, False, False], [True, False, False]])

    def test_nonzero_is_bad(self):
        assert_array_equal(mask_to_bad(self.values, "nonzero"),
                           [[False, True, True], [True, True, True]])

    def test_auto_takes_the_file_minority_as_bad(self):
        good_is_one = np.ones((10, 10), np.float32)
        good_is_one[2, 3] = 0.0
        half_dead = np.ones((10, 10), np.float32)
        half_dead[:6] = 0.0  # one CCD mostly zeros: same file, same rule
        with ImageSource(fits.HDUList([
                fits.PrimaryHDU(), fits.ImageHDU(good_is_one),
                fits.ImageHDU(half_dead)])) as src:
            convention = resolve_mask_convention(src)
        assert convention == "zero"
        bad = mask_to_bad(good_is_one, convention)
        assert bad.sum() == 1
        assert bad[2, 3]
        assert mask_to_bad(half_dead, convention).sum() == 60
        flags = np.zeros((10, 10), np.float32)
        flags[4, 5] = 5.0  # a flag map: non-zero marks a bad pixel
        with ImageSource(fits.HDUList([fits.PrimaryHDU(flags)])) as src:
            convention = resolve_mask_convention(src)
        assert convention == "nonzero"
        bad = mask_to_bad(flags, convention)
        assert bad.sum() == 1
        assert bad[4, 5]
        with pytest.raises(InvalidParameterError, match="per file"):
            mask_to_bad(flags, "auto")

    def test_unknown_convention(self):
        with pytest.raises(InvalidParameterError, match="'odd'"):
            mask_to_bad(self.values, "odd", name="mask m.fits")
        with pytest.raises(InvalidParameterError, match="'odd'"):
            QualityParameters(mask_convention="odd")

    @pytest.mark.parametrize("convention", ["auto", "nonzero"])
    def test_flag_map_through_assess(self, tmp_path, sim, convention):
        image = write_single(tmp_path / "img.fits", sim)
        flags = np.zeros((512, 512), np.int32)
        flags[100:228, 100:228] = 4
        fits.PrimaryHDU(flags).writeto(tmp_path / "flags.fits")
        ext = qualityfits.assess(image, mask=tmp_path / "flags.fits",
                                 parameters=QualityParameters(
                                     mask_convention=convention),
                                 jobs=1).extensions[0]
        x = np.asarray(ext.sources["X_IMAGE"]) - 1
        y = np.asarray(ext.sources["Y_IMAGE"]) - 1
        assert ext.ok
        assert not ((x >= 100) & (x < 228) & (y >= 100) & (y < 228)).any()


# -- the real Elixir mask ----------------------------------------------------
ELIXIR = "megacam_elixir_badpix_2004B.mask.0.36.01.fits.gz"
# science area of a MegaCam CCD, 0-based slices of DATASEC [33:2080,1:4612]
SCIENCE = (slice(0, 4612), slice(32, 2080))


@pytest.fixture(scope="module")
def elixir(tmp_path_factory):
    """Per extension: layout, edges, and what "auto" makes of it."""
    path = shared_file(ELIXIR)
    rows = []
    with ImageSource(path, label="mask",
                     tmpdir=tmp_path_factory.mktemp("elixir")) as src:
        convention = resolve_mask_convention(src)
        for ext in src.extensions:
            values = src.read(ext, crop=False)
            bad = mask_to_bad(values, convention, name=ext.name)
            rows.append({
                "name": ext.name, "index": ext.index, "shape": ext.shape,
                "values": set(np.unique(values).tolist()),
                "edges_zero": bool(
                    (values[:, :32] == 0).all()
                    and (values[:, 2080:] == 0).all()
                    and (values[0] == 0).all()
                    and (values[4611:] == 0).all()),
                "auto_is_zero_bad": bool(np.array_equal(bad, values == 0)),
                "bad_fraction": float(bad[SCIENCE].mean()),
            })
    return rows


@pytest.mark.realdata
class TestElixirMask:
    def test_layout(self, elixir):
        assert [r["name"] for r in elixir] == [f"ccd{k:02d}"
                                               for k in range(36)]
        assert [r["index"] for r in elixir] == list(range(1, 37))
        assert {r["shape"] for r in elixir} == {(4644, 2112)}
        assert all(r["values"] == {0.0, 1.0} for r in elixir)
        assert all(r["edges_zero"] for r in elixir)

    def test_auto_picks_zero_is_bad_on_every_ccd(self, elixir):
        # 1 = good, 0 = bad on all 36 CCDs, including the two that are
        # half dead: one file has one convention.
        wrong = [r["name"] for r in elixir if not r["auto_is_zero_bad"]]
        assert wrong == []

    def test_bad_fractions_in_the_science_area(self, elixir):
        fractions = {r["name"]: r["bad_fraction"] for r in elixir}
        assert_allclose(np.median(list(fractions.values())), 0.0014,
                        atol=0.0001)
        assert 0.49 < fractions["ccd07"] < 0.51
        assert 0.49 < fractions["ccd11"] < 0.51
        others = [v for k, v in fractions.items()
                  if k not in ("ccd07", "ccd11")]
        assert max(others) < 0.015


# -- jobs and progress -------------------------------------------------------
def test_jobs_2_gives_the_jobs_1_report(mef3):
    one = qualityfits.assess(mef3, jobs=1)
    two = qualityfits.assess(mef3, jobs=2)
    assert [e.name for e in two.extensions] == [e.name for e in one.extensions]
    for a, b in zip(one.extensions, two.extensions, strict=True):
        assert a.status == b.status == "ok"
        assert_same_metrics(a, b)
        assert a.flags == b.flags
        assert len(a.sources) == len(b.sources)
        assert_array_equal(a.sources["FLUX_AUTO"], b.sources["FLUX_AUTO"])
    # NaN-free comparison: to_dict() turns NaN into None
    assert (one.exposure.to_dict()["metrics"]
            == two.exposure.to_dict()["metrics"])
    assert one.exposure.flags == two.exposure.flags


_START_METHODS = """
import json, sys, threading
import qualityfits
from qualityfits import parallel

used = []
pick = parallel._pool_context


def spy(preload):
    ctx = pick(preload)
    used.append(ctx.get_start_method())
    return ctx


parallel._pool_context = spy
if __name__ == "__main__":
    image = sys.argv[1]
    runs = [qualityfits.assess(image, jobs=2)]
    stop = threading.Event()
    other = threading.Thread(target=stop.wait)
    other.start()
    try:
        runs.append(qualityfits.assess(image, jobs=2))
    finally:
        stop.set()
        other.join()
    # A CCD assessed in this process starts astroscrappy's OpenMP pool.
    runs.append(qualityfits.assess(image, jobs=1))
    runs.append(qualityfits.assess(image, jobs=2))
    print(json.dumps({"used": used, "fwhm": [
        [e.metrics["FWHM_PIX"] for e in r.extensions] for r in runs]}))
"""


def test_workers_start_either_way(mef3, tmp_path):
    """Workers fork from a process without other threads, and come from
    the preloaded fork server when another thread runs -- a Python one,
    or the OpenMP pool of a CCD assessed in the process itself (forking
    either could deadlock); the reports are the same.  In a fresh
    interpreter: this one has assessed CCDs already."""
    script = tmp_path / "start_methods.py"
    script.write_text(_START_METHODS)
    result = subprocess.run([sys.executable, str(script), str(mef3)],
                            capture_output=True, text=True, timeout=600,
                            check=False)
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout.splitlines()[-1])
    assert out["used"] == ["fork", "forkserver", "forkserver"]
    first = out["fwhm"][0]
    assert all(f == first for f in out["fwhm"])


_FREEZE = """
import gc, json, os, sys
import qualityfits
from qualityfits import parallel, pipeline

work = pipeline._run_task


def spy(task, post):
    if parallel._IN_WORKER:
        with open(f"{sys.argv[2]}/{os.getpid()}-{task.ext.name}",
                  "w") as out:
            json.dump(gc.get_freeze_count(), out)
    return work(task, post)


pipeline._run_task = spy
if __name__ == "__main__":
    image = sys.argv[1]
    frozen = [gc.get_freeze_count()]
    two = qualityfits.assess(image, jobs=2)
    frozen.append(gc.get_freeze_count())
    one = qualityfits.assess(image, jobs=1)
    print(json.dumps({"frozen": frozen, "fwhm": [
        [e.metrics["FWHM_PIX"] for e in r.extensions] for r in (one, two)]}))
"""


def test_forked_workers_inherit_a_frozen_heap(mef3, tmp_path):
    """Before forking its workers, ``assess`` moves the objects alive
    (modules, the caller's) to the collector's permanent generation, as
    CPython advises before a fork, and back when the workers are gone
    (a caller assessing file after file keeps no dropped cycle); the
    report is the one of a run in the process itself.  In a fresh
    interpreter, where nothing is frozen yet and no CCD was assessed in
    the process (workers are forked)."""
    script = tmp_path / "freeze.py"
    script.write_text(_FREEZE)
    seen = tmp_path / "seen"
    seen.mkdir()
    result = subprocess.run(
        [sys.executable, str(script), str(mef3), str(seen)],
        capture_output=True, text=True, timeout=600, check=False)
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout.splitlines()[-1])
    assert out["frozen"] == [0, 0]
    in_workers = [json.loads(p.read_text()) for p in seen.iterdir()]
    assert len(in_workers) == 3
    assert all(n > 10_000 for n in in_workers)  # numpy, scipy, astropy
    assert out["fwhm"][0] == out["fwhm"][1]


_WORKER_THREADS = """
import json, os, sys
from threadpoolctl import threadpool_info
import qualityfits
from qualityfits import pipeline

work = pipeline._run_task


def spy(task, post):
    blas = sorted({lib["num_threads"] for lib in threadpool_info()
                   if lib["user_api"] == "blas"})
    threads = len(os.listdir("/proc/self/task"))
    with open(f"{sys.argv[2]}/{os.getpid()}-{task.ext.name}", "w") as out:
        json.dump({"blas": blas, "threads": threads}, out)
    return work(task, post)


pipeline._run_task = spy
if __name__ == "__main__":
    def blas():
        return sorted({lib["num_threads"] for lib in threadpool_info()
                       if lib["user_api"] == "blas"})

    before = blas()
    qualityfits.assess(sys.argv[1], jobs=2)
    print(json.dumps({"before": before, "after": blas(),
                      "pid": os.getpid()}))
"""


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(),
                    reason="counts threads in /proc")
def test_forked_workers_start_no_blas_threads(mef3, tmp_path):
    """Forked workers get their one BLAS thread from the parent: a
    limit set in the worker would start OpenBLAS's thread pools there
    again (spinning ~0.1 s each).  The parent's limits come back."""
    script = tmp_path / "threads.py"
    script.write_text(_WORKER_THREADS)
    seen = tmp_path / "seen"
    seen.mkdir()
    result = subprocess.run([sys.executable, str(script), str(mef3),
                             str(seen)], capture_output=True, text=True,
                            timeout=600, check=False)
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout.splitlines()[-1])
    assert out["after"] == out["before"]
    tasks = [json.loads(f.read_text()) for f in seen.iterdir()]
    assert len(tasks) == 3
    assert not any(f.name.startswith(f"{out['pid']}-")
                   for f in seen.iterdir())  # in workers
    assert all(t["blas"] == [1] for t in tasks)
    assert all(t["threads"] == 1 for t in tasks)


class SlowRecorder:
    """A progress callback that takes its time, as a terminal or a DB."""

    def __init__(self, delay=0.1):
        self.delay = delay
        self.events = []
        self.active = 0
        self.max_active = 0
        self._lock = threading.Lock()

    def __call__(self, event):
        with self._lock:
            self.active += 1
            self.max_active = max(self.max_active, self.active)
        time.sleep(self.delay)
        with self._lock:
            self.events.append(event)
            self.active -= 1

    def steps(self):
        out = {}
        for event in self.events:
            out.setdefault(event.extension, []).append(event.step)
        return out


@pytest.mark.parametrize("jobs", [1, 2])
def test_progress_steps_in_order_then_done(mef3, jobs):
    recorder = SlowRecorder()
    qualityfits.assess(mef3, jobs=jobs, progress=recorder)
    assert recorder.steps() == {
        name: [*STEPS, "done"] for name in ("ccd00", "ccd01", "ccd02")}
    for event in recorder.events:
        assert event.n_steps == len(STEPS)
        assert event.n_extensions == 3
        if event.step in STEPS:
            assert event.step_number == STEPS.index(event.step) + 1


def test_progress_callback_never_called_concurrently(mef3):
    recorder = SlowRecorder()
    qualityfits.assess(mef3, jobs=2, progress=recorder)
    assert len(recorder.events) == 3 * (len(STEPS) + 1)
    assert recorder.max_active == 1


def test_progress_of_a_failed_extension(tmp_path):
    path = tmp_path / "bad.fits"
    good = simulate_image(SMALL, seed=401)
    fits.HDUList([fits.PrimaryHDU(), good.to_hdu(name="good"),
                  named(np.full((512, 512), 3.0, np.float32), "flat")]
                 ).writeto(path)
    events = []
    qualityfits.assess(path, jobs=1, progress=events.append)
    steps = {}
    for event in events:
        steps.setdefault(event.extension, []).append(event.step)
    assert steps["good"] == [*STEPS, "done"]
    *started, last = steps["flat"]
    assert last == "failed"
    assert started == list(STEPS[:len(started)])
    assert started[:2] == ["read", "background"]
