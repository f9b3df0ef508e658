"""docs/extending.md names files and objects that exist.

The page tells the next engineer where to add a metric, a product, a
parameter, a runner or a policy: every path it names must be a file or
folder of the project, and every dotted name an object that imports.
"""

from __future__ import annotations

import importlib
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TEXT = (ROOT / "docs" / "extending.md").read_text()
PACKAGES = ("qualityfits", "votable", "uws", "pbs_bridge")


def test_every_path_exists():
    paths = set(re.findall(r"`((?:qualityfits|votable|uws|pbs_bridge|"
                           r"tests|docs)/[\w./]*)`", TEXT))
    assert len(paths) > 10
    missing = sorted(p for p in paths if not (ROOT / p).exists())
    assert missing == []


def test_every_dotted_name_imports():
    names = set(re.findall(r"`((?:qualityfits|uws|pbs_bridge)(?:\.\w+)+)",
                           TEXT))
    assert len(names) > 5
    for name in sorted(names):
        module, attr = name, None
        while True:
            try:
                found = importlib.import_module(module)
                break
            except ModuleNotFoundError:
                module, _, tail = module.rpartition(".")
                attr = tail if attr is None else f"{tail}.{attr}"
        for part in (attr or "").split("."):
            if part:
                found = getattr(found, part)
