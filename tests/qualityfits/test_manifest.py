"""manifest.json: the round trip, and each refusal of Manifest.read."""

from __future__ import annotations

import json
import stat

import pytest

from qualityfits.manifest import (
    FORMAT_VERSION,
    Manifest,
    ManifestError,
    Product,
)

MANIFEST = Manifest(
    image="expo≠sure.fits.fz",
    qualityfits="0.9.0",
    n_extensions=3,
    failed_extensions=("ccd01",),
    flags=("MISSING_CCD", "POOR_SEEING"),
    products=(
        Product("summary", "expo_summary.vot", "application/x-votable+xml",
                12345, "Statistics per CCD and for the exposure (VOTable)"),
        Product("archive", "expo_qf.tar.gz", "application/gzip", 0,
                "Every product in one archive (tar.gz)"),
    ),
)


def _doc():
    return MANIFEST.to_json()


def test_round_trip_through_the_file(tmp_path):
    path = MANIFEST.write(tmp_path / "manifest.json")
    assert path == tmp_path / "manifest.json"
    assert Manifest.read(path) == MANIFEST
    # nothing else left in the folder (the temporary file is renamed)
    assert [p.name for p in tmp_path.iterdir()] == ["manifest.json"]
    assert stat.S_IMODE(path.stat().st_mode) & 0o044  # readable by others


def test_file_layout(tmp_path):
    path = MANIFEST.write(tmp_path / "manifest.json")
    doc = json.loads(path.read_text(encoding="utf-8"))
    assert doc["version"] == FORMAT_VERSION == 2
    assert doc["qualityfits"] == "0.9.0"
    assert doc["image"] == "expo≠sure.fits.fz"
    assert doc["failed_extensions"] == ["ccd01"]
    # what the service reads from each product
    assert doc["products"][0] == {
        "id": "summary", "file": "expo_summary.vot",
        "mime": "application/x-votable+xml", "size": 12345,
        "description": "Statistics per CCD and for the exposure (VOTable)"}


def test_overwrite_replaces(tmp_path):
    path = tmp_path / "manifest.json"
    path.write_text("old")
    MANIFEST.write(path)
    assert Manifest.read(path) == MANIFEST


def test_product_lookup():
    assert MANIFEST.product("archive") is MANIFEST.products[1]
    assert MANIFEST.product("nothing") is None


def _refused(tmp_path, content):
    path = tmp_path / "manifest.json"
    path.write_bytes(content if isinstance(content, bytes)
                     else json.dumps(content).encode())
    with pytest.raises(ManifestError) as info:
        Manifest.read(path)
    message = str(info.value)
    assert message.startswith(f"{path}: ")
    return message.removeprefix(f"{path}: ")


def test_not_json(tmp_path):
    assert _refused(tmp_path, b"{not json").startswith("not JSON: ")
    assert _refused(tmp_path, b"\xff\xfe").startswith("not JSON: ")


def test_not_an_object(tmp_path):
    assert _refused(tmp_path, [1, 2]) == "a JSON object expected, got list"


def test_version_1_file(tmp_path):
    # the old file: the qualityfits version under "version"
    doc = _doc()
    del doc["qualityfits"]
    doc["version"] = "0.9.0"
    assert _refused(tmp_path, doc) == (
        "format version '0.9.0', this qualityfits reads version 2")


@pytest.mark.parametrize("version", [1, 3, True, 2.5])
def test_wrong_version(tmp_path, version):
    doc = _doc() | {"version": version}
    assert _refused(tmp_path, doc) == (
        f"format version {version!r}, this qualityfits reads version 2")


def test_no_version(tmp_path):
    doc = _doc()
    del doc["version"]
    assert _refused(tmp_path, doc).startswith("no format version")


@pytest.mark.parametrize("key", ["image", "qualityfits", "n_extensions",
                                 "failed_extensions", "flags", "products"])
def test_missing_key(tmp_path, key):
    doc = _doc()
    del doc[key]
    assert _refused(tmp_path, doc) == f"missing {key}"


@pytest.mark.parametrize("key", ["id", "file", "mime", "size",
                                 "description"])
def test_missing_product_key(tmp_path, key):
    doc = _doc()
    del doc["products"][1][key]
    assert _refused(tmp_path, doc) == f"products[1]: missing {key}"


@pytest.mark.parametrize(("change", "message"), [
    ({"n_extensions": "3"}, "n_extensions must be an integer, got '3'"),
    ({"n_extensions": -1}, "n_extensions must be >= 0, got -1"),
    ({"flags": "POOR_SEEING"},
     "flags must be a list, got 'POOR_SEEING'"),
    ({"failed_extensions": [1]},
     "failed_extensions must be a list of strings, got [1]"),
    ({"image": None}, "image must be a string, got None"),
    ({"products": {}}, "products must be a list, got {}"),
])
def test_wrong_types(tmp_path, change, message):
    assert _refused(tmp_path, _doc() | change) == message


@pytest.mark.parametrize(("change", "message"), [
    ({"size": "12"}, "products[0]: size must be an integer, got '12'"),
    ({"size": True}, "products[0]: size must be an integer, got True"),
    ({"size": -5}, "products[0]: size must be >= 0, got -5"),
    ({"mime": 3}, "products[0]: mime must be a string, got 3"),
])
def test_wrong_product_types(tmp_path, change, message):
    doc = _doc()
    doc["products"][0] |= change
    assert _refused(tmp_path, doc) == message


def test_product_not_an_object(tmp_path):
    doc = _doc()
    doc["products"][0] = "summary"
    assert _refused(tmp_path, doc) == (
        "products[0]: an object expected, got 'summary'")


def test_error_is_a_value_error():
    assert issubclass(ManifestError, ValueError)


def test_a_missing_file_is_an_os_error(tmp_path):
    with pytest.raises(FileNotFoundError):
        Manifest.read(tmp_path / "manifest.json")
