"""benchmarks/external_frames.py: its table and its verdicts.

The external frames themselves are not shipped (the sweep reads them
from a folder the user fills, `--commands`): here the table is checked
(one row a file, a pinned commit, an open licence), and the script is
run on a folder holding a file built from the simulator under one of
the table's names, and on a frame of ../shared/data given one: a report,
a one-line refusal, exit 0.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
from astropy.io import fits
from testkit import shared_file

from qualityfits.datasets import SimulationParams, simulate_image

HERE = Path(__file__).resolve().parents[2] / "benchmarks"
SCRIPT = HERE / "external_frames.py"
sys.path.insert(0, str(HERE))
import external_frames  # noqa: E402

OPEN = re.compile(r"BSD|MIT|GPL|Apache|Unlicense|IRAF", re.IGNORECASE)


def test_the_table_pins_every_file_under_an_open_licence() -> None:
    rows = external_frames.frames()
    assert len(rows) >= 40
    names = [r["file"] for r in rows]
    assert len(set(names)) == len(names)
    for r in rows:
        assert re.fullmatch(r"[0-9a-f]{40}", r["commit"]), r
        assert re.fullmatch(r"[\w.-]+/[\w.-]+", r["repository"]), r
        assert OPEN.search(r["licence"]), r
        assert r["path"], r
        assert r["instrument"], r
        assert r["kind"], r


def test_the_commands_fetch_each_file_at_its_commit() -> None:
    rows = external_frames.frames()
    lines = external_frames.fetch_commands(rows, "DIR")
    shows = [line for line in lines if " show " in line]
    assert len(shows) == len(rows)
    for r in rows:
        assert (f"show {r['commit']}:'{r['path']}' > DIR/{r['file']}"
                in "\n".join(shows))


def test_a_run_on_a_folder(tmp_path: Path) -> None:
    rows = {r["file"]: r for r in external_frames.frames()}
    folder = tmp_path / "frames"
    folder.mkdir()
    # A simulated CCD under one name, a real bias under another.
    sim = simulate_image(SimulationParams(shape=(512, 512), n_stars=200,
                                          n_galaxies=100), seed=23)
    fits.PrimaryHDU(sim.data, sim.header).writeto(
        folder / "properimage_apogee_eso085-030_004.fits")
    shutil.copy(shared_file("ntt_susi_bias_raw.fits.gz"),
                folder / "huntsman_flat_0_g.fits")
    assert {"properimage_apogee_eso085-030_004.fits",
            "huntsman_flat_0_g.fits"} <= set(rows)
    out = tmp_path / "rows.json"
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), str(folder), "--json", str(out)],
        capture_output=True, text=True, timeout=600, check=False)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    result = {r["file"]: r for r in json.loads(out.read_text())}
    assert len(result) == 2
    ok = result["properimage_apogee_eso085-030_004.fits"]
    assert ok["outcome"] == "report (1/1 CCDs)"
    assert np.isclose(ok["fwhm"], 4.0, rtol=0.03)
    bias = result["huntsman_flat_0_g.fits"]
    assert bias["outcome"].startswith("refused (")
    assert "\n" not in bias["detail"]
    assert f"2 files of {len(rows)}" in proc.stdout
