"""pyproject.toml names every package and every data file.

Packages are declared one by one (no discovery) so that setuptools
prints no warning; this test keeps the list true when a folder or a
data file is added.
"""

from __future__ import annotations

import fnmatch
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TOP = ("qualityfits", "votable", "uws", "pbs_bridge")


def _setuptools() -> dict:
    with (ROOT / "pyproject.toml").open("rb") as fh:
        return tomllib.load(fh)["tool"]["setuptools"]


def _folders() -> list[Path]:
    return [p for top in TOP for p in [ROOT / top, *(ROOT / top).rglob("*")]
            if p.is_dir() and p.name != "__pycache__"]


def test_every_folder_is_a_declared_package():
    declared = set(_setuptools()["packages"])
    found = {".".join(p.relative_to(ROOT).parts) for p in _folders()}
    assert declared == found


def test_every_data_file_is_declared():
    data = _setuptools()["package-data"]
    missing = []
    for folder in _folders():
        package = ".".join(folder.relative_to(ROOT).parts)
        for path in folder.iterdir():
            if path.is_dir() or path.suffix in {".py", ".pyc"}:
                continue
            patterns = data.get(package, [])
            if not any(fnmatch.fnmatch(path.name, p) for p in patterns):
                missing.append(f"{package}: {path.name}")
    assert missing == []
