"""benchmarks/variants.py runs and judges as its docstring says.

On the NTT frame of ../shared/data: the frame times 2^-13 and as a
one-plane cube measure the same (exact invariances), a one-row strip
is refused in one line, and the exit status is 0.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from testkit import shared_file

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "variants.py"

pytestmark = pytest.mark.realdata


def test_variants_of_a_real_frame(tmp_path: Path) -> None:
    shared_file("ntt_emmi_R_galaxies.fits.gz")
    out = tmp_path / "rows.json"
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--files", "ntt_emmi_R_galaxies.fits",
         "--variants", "x2^-13,cube1,strip,rot90", "--json", str(out)],
        capture_output=True, text=True, timeout=600, check=False)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    rows = {r["variant"]: r for r in json.loads(out.read_text())}
    assert set(rows) == {"as published", "x2^-13", "cube1", "strip",
                         "rot90"}
    assert rows["as published"]["outcome"] == "ok"
    for name in ("x2^-13", "cube1"):
        assert rows[name]["outcome"] == "ok"
        assert rows[name]["detail"] == "same"
        assert rows[name]["violation"] is False
    assert rows["strip"]["outcome"] == "refused (empty-image)"
    assert "too small to assess" in rows["strip"]["detail"]
    assert rows["rot90"]["kind"] == "near"
    assert "0 crashes, 0 violations" in proc.stdout
