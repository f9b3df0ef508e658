"""The product set: maps, tables, pictures, report page, manifest, archive.

A two-CCD simulated exposure with an overscan strip, a master flat with
known bad pixels and an Elixir-style mask (1 good, 0 bad) go through the
command line; every product is then read back and checked against what
was put in: the flag bits where the flat, the mask, the overscan and the
simulated cosmic rays are, the weights equal to the normalised flat, the
archive and the manifest complete, every link of the page resolving.
"""

from __future__ import annotations

import json
import tarfile
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits
from lxml import html as lxml_html
from scipy import ndimage
from testkit import shared_file

import qualityfits
import qualityfits.cli
from qualityfits.cli import main
from qualityfits.datasets import (
    SimulationParams,
    simulate_exposure,
    simulate_image,
)
from qualityfits.manifest import Manifest
from qualityfits.parameters import QualityParameters
from qualityfits.weights import (
    PixelFlag,
    bin_mean,
    flag_counts,
    flag_map,
    normalise_flat,
    weight_map,
)

OVERSCAN = 32
SHAPE = (1536, 1024)
BAD_COLUMN = 500  # data-section column of the flat's bad column
MASK_BLOCK = (slice(100, 150), slice(200, 260))  # 50 x 60 bad pixels


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """Image (with overscan), flat and mask files, and the truth."""
    work = tmp_path_factory.mktemp("products")
    params = SimulationParams(shape=SHAPE, n_stars=300, n_galaxies=600,
                              n_cr_hits=150, n_cr_tracks=15)
    hdul, sims = simulate_exposure(params, n_ccds=2, seed=11)
    ny, nx = SHAPE
    image = [fits.PrimaryHDU(header=hdul[0].header)]
    flats = [fits.PrimaryHDU()]
    masks = [fits.PrimaryHDU()]
    rng = np.random.default_rng(5)
    flat_values = []
    for hdu in hdul[1:]:
        raw = np.full((ny, nx + OVERSCAN), 300.0, np.float32)
        raw[:, OVERSCAN:] = hdu.data
        head = hdu.header.copy()
        head["DATASEC"] = f"[{OVERSCAN + 1}:{nx + OVERSCAN},1:{ny}]"
        head["CRPIX1"] = head["CRPIX1"] + OVERSCAN
        image.append(fits.ImageHDU(raw, header=head))
        flat = np.ones((ny, nx + OVERSCAN), np.float32)
        flat[:, OVERSCAN:] = 2.0 * (1 + 0.01 * rng.standard_normal((ny, nx)))
        flat[:, OVERSCAN + BAD_COLUMN] = 0.6  # 0.3 of the median
        flat[10:20, OVERSCAN + 10:OVERSCAN + 20] = -1.0
        flat_values.append(flat[:, OVERSCAN:])
        flats.append(fits.ImageHDU(flat, name=hdu.name))
        mask = np.ones((ny, nx + OVERSCAN), np.int16)
        mask[MASK_BLOCK[0], MASK_BLOCK[1].start + OVERSCAN:
             MASK_BLOCK[1].stop + OVERSCAN] = 0
        masks.append(fits.ImageHDU(mask, name=hdu.name))
    paths = {}
    for name, hdus in (("image", image), ("flat", flats), ("mask", masks)):
        paths[name] = work / f"{name}.fits"
        fits.HDUList(hdus).writeto(paths[name])
    return {"paths": paths, "sims": sims, "flats": flat_values,
            "work": work}


@pytest.fixture(scope="module")
def products(inputs):
    """Run the command line; return the output folder."""
    out = inputs["work"] / "out"
    p = inputs["paths"]
    status = main([str(p["image"]), "--flat", str(p["flat"]), "--mask",
                   str(p["mask"]), "-o", str(out), "--jobs", "2",
                   "--no-progress"])
    assert status == 0
    return out


def _data(path: Path) -> list[np.ndarray]:
    with fits.open(path) as hdul:
        return [np.asarray(h.data) for h in hdul[1:]]


def test_manifest_lists_every_product(products):
    listed = Manifest.read(products / "manifest.json").products
    ids = [p.id for p in listed]
    assert ids[0] == "summary"  # the VOTable: the result clients take
    assert len(set(ids)) == len(ids)
    for required in ("summary", "summary_fits", "catalogue",
                     "catalogue_fits", "weight", "flag", "crmask",
                     "report", "archive"):
        assert required in ids
    for p in listed:
        path = products / p.file
        assert path.is_file(), p.file
        assert path.stat().st_size == p.size, p.file
        assert p.description
    mimes = {p.id: p.mime for p in listed}
    assert mimes["summary"] == "application/x-votable+xml"
    assert mimes["weight"] == "application/fits"
    assert mimes["report"] == "text/html"
    assert mimes["archive"] == "application/gzip"
    assert sum(p.mime == "image/png" for p in listed) >= 12 + 2
    on_disk = {f.name for f in products.iterdir() if f.is_file()}
    # Nothing unlisted but the manifest itself; no leftover pieces.
    assert on_disk - {p.file for p in listed} == {"manifest.json"}
    assert not any(f.name.startswith(".") for f in products.iterdir())


def test_maps_follow_weightwatcher_semantics(products, inputs):
    flags = _data(products / "image_flag.fits.fz")
    weights = _data(products / "image_weight.fits.fz")
    cosmic = _data(products / "image_crmask.fits.fz")
    assert len(flags) == len(weights) == len(cosmic) == 2
    ny, nx = SHAPE
    for k in range(2):
        f, w, c = flags[k], weights[k], cosmic[k]
        assert f.shape == w.shape == c.shape == (ny, nx + OVERSCAN)
        assert f.dtype == np.uint8
        # Outside the data section: EDGE, weight 0.
        assert np.all(f[:, :OVERSCAN] == PixelFlag.EDGE)
        assert np.all(w[:, :OVERSCAN] == 0)
        d_f, d_w = f[:, OVERSCAN:], w[:, OVERSCAN:]
        # Weight 0 exactly where a flag is set.
        assert np.array_equal(d_w == 0, d_f != 0)
        # The flat's bad column and non-positive patch; the mask block.
        assert np.all(d_f[:, BAD_COLUMN] & PixelFlag.BAD_FLAT)
        assert np.all(d_f[10:20, 10:20] & PixelFlag.BAD_FLAT)
        assert np.all(d_f[MASK_BLOCK] & PixelFlag.USER_MASK)
        assert np.count_nonzero(d_f & PixelFlag.USER_MASK) == 50 * 60
        # Elsewhere the weight is the flat over its median (16-bit
        # scaled in steps of 1/4096 of the largest weight).
        good = d_f == 0
        norm, _, median = normalise_flat(inputs["flats"][k], 0.7, 1.3)
        assert 1.9 < median < 2.1
        step = d_w.max() / 4096
        np.testing.assert_allclose(d_w[good], norm[good], rtol=0,
                                   atol=0.51 * step)
        # The cosmic-ray mask is the COSMIC_RAY bit.
        assert np.array_equal(c[:, OVERSCAN:] != 0,
                              (d_f & PixelFlag.COSMIC_RAY) != 0)


def test_cosmic_ray_mask_finds_the_simulated_hits(products, inputs):
    for k, sim in enumerate(inputs["sims"]):
        found = _data(products / "image_crmask.fits.fz")[k][:, OVERSCAN:]
        truth = sim.cr_mask
        assert np.count_nonzero(found[truth]) / truth.sum() > 0.9
        # Flags away from every cosmic ray (more than 2 px: growing into
        # the faint wings is L.A.Cosmic's way) are rare: the noise peaks
        # that pass its 4.5-sigma test, ~17 per million pixels.
        near = ndimage.binary_dilation(truth, iterations=2)
        far = np.count_nonzero(found & ~near)
        assert far < 0.1 * truth.sum()
        assert far < 60e-6 * truth.size


def test_metrics_agree_with_the_maps(products):
    doc = json.loads((products / "image.summary.json").read_text())
    flags = _data(products / "image_flag.fits.fz")
    weights = _data(products / "image_weight.fits.fz")
    for ext, f, w in zip(doc["extensions"], flags, weights, strict=True):
        m = ext["metrics"]
        d_f, d_w = f[:, OVERSCAN:], w[:, OVERSCAN:]
        assert m["FRAC_W0"] == pytest.approx(np.mean(d_w == 0), abs=1e-9)
        assert m["W_MEAN"] == pytest.approx(np.mean(d_w), rel=1e-4)
        counts = flag_counts(d_f)
        for name, value in counts.items():
            assert m[name] == value, name
        assert m["NFLAG_USERMASK"] == 3000
        assert m["NCR"] > 100
        assert 0 < m["CR_FRAC"] < 0.01


def test_report_page_links_resolve(products):
    page = lxml_html.parse(str(products / "index.html")).getroot()
    links = page.xpath("//a/@href") + page.xpath("//img/@src")
    assert len(links) > 20
    for link in links:
        assert "://" not in link  # self-contained: no external resource
        assert (products / link).is_file(), link
    text = page.text_content()
    for name in ("ccd00", "ccd01", "QualityFITS report"):
        assert name in text
    # Every image has alternative text.
    assert all(img.get("alt") for img in page.xpath("//img"))


def test_archive_holds_every_product(products):
    listed = Manifest.read(products / "manifest.json").products
    with tarfile.open(products / "image_qf.tar.gz") as tar:
        members = {Path(m.name).name: m.size for m in tar.getmembers()}
    expected = {p.file: p.size for p in listed if p.id != "archive"}
    for name, size in expected.items():
        if name == "index.html":
            assert name in members
        else:
            assert members.get(name) == size, name
    assert "manifest.json" in members


def test_without_a_flat_weights_come_from_the_rms(inputs, tmp_path):
    out = tmp_path / "noflat"
    assert main([str(inputs["paths"]["image"]), "-o", str(out),
                 "--no-progress", "--jobs", "1"]) == 0
    with fits.open(out / "image_weight.fits.fz") as hdul:
        assert hdul[1].header["WGTSRC"] == "rms"
        w = hdul[1].data[:, OVERSCAN:]
    good = w > 0
    # (median RMS / RMS)^2 of a smooth map: close to 1 everywhere.
    assert 0.8 < np.median(w[good]) < 1.2
    page = (out / "index.html").read_text()
    assert "no flat" in page


# -- building blocks --
def test_flag_map_and_counts():
    a = np.zeros((4, 4), bool)
    a[0, 0] = True
    b = np.zeros((4, 4), bool)
    b[0, 0] = b[1, 1] = True
    flags = flag_map((4, 4), bad_flat=a, cosmic_ray=b, saturated=None)
    assert flags[0, 0] == PixelFlag.BAD_FLAT | PixelFlag.COSMIC_RAY
    assert flags[1, 1] == PixelFlag.COSMIC_RAY
    counts = flag_counts(flags)
    assert counts["NFLAG_BADFLAT"] == 1
    assert counts["NFLAG_COSMIC"] == 2
    assert counts["NFLAG_SATURATED"] == 0


def test_weight_map_from_rms_and_flat():
    rms = np.full((64, 64), 2.0, np.float32)
    rms[1] = 4.0
    flags = np.zeros((64, 64), np.uint8)
    flags[7, 7] = PixelFlag.SATURATED
    w = weight_map(flags, None, rms)
    assert w[2, 2] == pytest.approx(1.0)
    assert w[1, 2] == pytest.approx(0.25)  # twice the noise: 1/4
    assert w[7, 7] == 0
    flat = np.full((64, 64), 0.9, np.float32)
    assert weight_map(flags, flat, None)[2, 2] == pytest.approx(0.9)


def test_normalise_flat_flags_bad_and_nonpositive():
    flat = np.full((10, 10), 3.0, np.float32)
    flat[0, 0] = 0.0
    flat[1, 1] = np.nan
    flat[2, 2] = 3.0 * 1.5
    flat[3, 3] = -2.0
    norm, bad, median = normalise_flat(flat, 0.7, 1.3)
    assert median == 3.0
    assert bad[0, 0]
    assert bad[1, 1]
    assert bad[2, 2]
    assert bad[3, 3]
    assert bad.sum() == 4
    assert norm[5, 5] == pytest.approx(1.0)
    _, all_bad, none = normalise_flat(np.zeros((3, 3), np.float32), 0.7, 1.3)
    assert all_bad.all()
    assert np.isnan(none)


def test_bin_mean_ignores_unusable_pixels():
    values = np.arange(16, dtype=np.float32).reshape(4, 4)
    usable = np.ones((4, 4), bool)
    usable[0, 0] = False
    binned = bin_mean(values, 2, usable)
    assert binned.shape == (2, 2)
    assert binned[0, 0] == pytest.approx((1 + 4 + 5) / 3)
    assert binned[1, 1] == pytest.approx((10 + 11 + 14 + 15) / 4)
    usable[:2, :2] = False
    assert np.isnan(bin_mean(values, 2, usable)[0, 0])


# -- bad input --
def test_mask_that_masks_everything_fails_that_ccd(inputs, tmp_path):
    with fits.open(inputs["paths"]["mask"]) as hdul:
        hdul[2].data[:] = 0  # ccd01 all bad (the other keeps the
        hdul.writeto(tmp_path / "dead.fits")  # convention: 0 is bad)
    # Half the file is 0 now: say which value is bad.
    report = qualityfits.assess(inputs["paths"]["image"],
                                mask=tmp_path / "dead.fits", jobs=1,
                                parameters=QualityParameters(
                                    mask_convention="zero"))
    ok, dead = report.extensions
    assert ok.ok
    assert not dead.ok
    assert dead.error is not None
    assert "every pixel is masked by mask dead.fits" in dead.error.message
    assert "MISSING_CCD" in report.exposure.flags


def test_flat_with_another_extension_count(inputs, tmp_path, capsys):
    with fits.open(inputs["paths"]["flat"]) as hdul:
        fits.HDUList(hdul[:2]).writeto(tmp_path / "one.fits")
    status = main([str(inputs["paths"]["image"]), "--flat",
                   str(tmp_path / "one.fits"), "-o", str(tmp_path / "o"),
                   "--no-progress"])
    assert status == 2
    err = capsys.readouterr().err
    assert "one.fits has 1 image extension(s)" in err
    assert not (tmp_path / "o" / "manifest.json").exists()


def test_a_failed_run_leaves_no_map_pieces(inputs, tmp_path, capsys,
                                           monkeypatch):
    # The disk fills up once the workers have written their maps.
    def full(*_args, **_kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(qualityfits.cli, "write_products", full)
    out = tmp_path / "o"
    status = main([str(inputs["paths"]["image"]), "-o", str(out),
                   "--no-progress", "--jobs", "1"])
    assert status == 1
    assert "No space left on device" in capsys.readouterr().err
    assert list(out.iterdir()) == []


# -- the real Elixir mask --
@pytest.mark.slow
@pytest.mark.realdata
def test_real_megacam_mask_on_a_36_ccd_exposure(tmp_path):
    mask = shared_file("megacam_elixir_badpix_2004B.mask.0.36.01.fits.gz")
    # The mask has MegaCam's raw geometry (4644 x 2112 with pre- and
    # overscan, no DATASEC card): so has the image, its data section
    # [33:2080,1:4612] simulated CCD by CCD.
    params = SimulationParams(shape=(4612, 2048), n_stars=120,
                              n_galaxies=60, n_cr_hits=30, n_cr_tracks=3)
    image = tmp_path / "mosaic.fits"
    fits.PrimaryHDU().writeto(image)
    for k in range(36):
        sim = simulate_image(params, seed=300 + k)
        raw = np.full((4644, 2112), 1000, np.int16)
        raw[:4612, 32:2080] = np.clip(sim.data, -32768, 32767)
        head = sim.header.copy()
        head["EXTNAME"] = f"ccd{k:02d}"
        head["DATASEC"] = "[33:2080,1:4612]"
        fits.append(image, raw, head)
    report = qualityfits.assess(image, mask=mask, jobs=2)
    assert report.parameters["mask_convention"] == "zero"
    with fits.open(mask) as hdul:
        bad = [np.count_nonzero(h.data[:4612, 32:2080] == 0)
               for h in hdul[1:]]
    for ext, n_bad in zip(report.extensions, bad, strict=True):
        assert ext.ok, ext.error
        assert ext.metrics["NFLAG_USERMASK"] == n_bad, ext.name
        assert ext.metrics["FRAC_W0"] >= n_bad / (4612 * 2048)
    frac = {e.name: e.metrics["FRAC_W0"] for e in report.extensions}
    assert 0.49 < frac["ccd07"] < 0.52  # half-dead CCDs
    assert 0.49 < frac["ccd11"] < 0.52
