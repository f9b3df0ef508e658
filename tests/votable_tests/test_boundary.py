"""votable is a leaf: it imports none of the project's other packages."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "votable"
OTHERS = {"qualityfits", "uws", "pbs_bridge"}


def test_no_module_names_another_package():
    for path in sorted(PACKAGE.glob("*.py")):
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                assert name.split(".")[0] not in OTHERS, (path.name, name)


def test_importing_it_loads_none_of_them():
    code = ("import sys, votable; print(sorted({m.split('.')[0] for m in "
            f"sys.modules}} & set({sorted(OTHERS)!r})))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True,
                         text=True, check=True, timeout=120)
    assert out.stdout.strip() == "[]"
