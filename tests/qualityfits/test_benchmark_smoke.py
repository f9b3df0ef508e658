"""The exposure benchmark (benchmarks/bench_exposure.py) runs end to end.

``--quick`` builds a 4-CCD mosaic of 1024 x 2048 pixels, times
``qualityfits.assess`` and SExtractor + PSFEx on it in child processes,
and writes the figures as JSON.  This checks that the benchmark works -
every figure is there, positive, and the ratio is computed - never how
fast anything is: timings on a shared machine are not test material.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
from testkit import require_tool

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / (
    "bench_exposure.py")

pytestmark = [pytest.mark.slow, pytest.mark.reference]


def _positive(value: object) -> bool:
    return (isinstance(value, int | float) and not isinstance(value, bool)
            and math.isfinite(value) and value > 0)


def test_quick_benchmark_writes_figures(tmp_path: Path) -> None:
    require_tool("source-extractor")
    require_tool("psfex")
    out = tmp_path / "figures.json"
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--quick", "--jobs", "2",
         "--workdir", str(tmp_path / "work"), "--json", str(out)],
        capture_output=True, text=True, timeout=900, check=False,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "ratio ref/ours" in proc.stdout
    figures = json.loads(out.read_text())

    assert figures["all_extensions_ok"] is True
    assert figures["exposure"]["n_ccds"] == 4
    assert figures["exposure"]["params"]["shape"] == [2048, 1024]
    ours, ref = figures["ours"], figures["reference"]
    for side in (ours, ref):
        for key in ("wall_seconds", "cpu_seconds", "peak_rss_tree_bytes",
                    "peak_pss_tree_bytes", "peak_rss_single_bytes"):
            assert _positive(side[key]), (key, side[key])
        # The tree sum holds the largest process.
        assert side["peak_rss_tree_bytes"] >= side["peak_rss_single_bytes"]
    assert _positive(ref["programs_wall_seconds"])
    assert _positive(ref["programs_cpu_seconds"])
    for key in ("wall", "cpu", "wall_tree", "cpu_tree"):
        assert _positive(figures["ratios"][key]), key
    assert figures["ratios"]["wall"] == pytest.approx(
        ref["programs_wall_seconds"] / ours["wall_seconds"])
    assert set(figures["targets"]) >= {"wall", "speedup", "peak_rss"}
    assert figures["targets"]["applicable"] is False  # not 36 full CCDs

    (run,) = figures["rounds"]
    inside = run["ours"]["inside"]
    assert [e["status"] for e in inside["extensions"]] == ["ok"] * 4
    for ext in inside["extensions"]:
        assert set(ext["timings"]) >= {"read", "background", "psf"}
    assert inside["exposure_metrics"]["NSTAR_PSF"]["median"] > 0
    # The pool workers were seen by the sampler, not just the parent.
    assert run["ours"]["memory"]["roles"]["worker"]["count"] == 2
    assert len(run["reference"]["inside"]["steps"]) == 3

    # A second run reuses the cached exposure instead of rebuilding it.
    again = subprocess.run(
        [sys.executable, str(SCRIPT), "--quick", "--jobs", "1",
         "--skip-reference", "--workdir", str(tmp_path / "work"),
         "--json", str(out)],
        capture_output=True, text=True, timeout=900, check=False,
    )
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    figures = json.loads(out.read_text())
    assert figures["exposure"]["reused"] is True
    assert figures["reference"] is None
    assert figures["ratios"]["wall"] is None
