"""The seams: runners and policies as plug-ins, parameters declared once.

A runner or a policy written outside the project's packages, with
settings of its own, is loaded by ``module:Class`` and runs jobs
through the real service: no edit in ``uws``
(tests/uws_tests/pluginkit.py).  Every science parameter that
`qualityfits.parameters.PARAMETERS` declares is a UWS parameter, a
field of the web form, a typed value in the database, a value of the
worker's spec and a command-line option, with no other declaration.
"""

from __future__ import annotations

import math
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits
from lxml import etree
from uwskit import free_port, job_xml, settings_for, text_of

from pbs_bridge.config import SettingsError
from qualityfits.parameters import PARAMETERS, QualityParameters

# By the name the service loads it with (one module, one class object).
from tests.uws_tests.pluginkit import MODULE, NiceSettings, TokenSettings

ROOT = Path(__file__).resolve().parents[2]


def test_a_plugin_runner_reads_its_own_settings(tmp_path: Path):
    url = f"sqlite:///{tmp_path}/jobs.sqlite"
    runner = f"{MODULE}:NiceRunner"
    settings = settings_for(tmp_path, url, runner=runner, nice_level="5")
    assert settings.runner_settings == NiceSettings(
        max_running=1, ccd_jobs=1, nice_level=5)
    with pytest.raises(SettingsError, match=re.escape(
            "qfits.nice_level: 25 is above 19")):
        settings_for(tmp_path, url, runner=runner, nice_level="25")
    with pytest.raises(SettingsError, match=re.escape(
            "unknown settings: qfits.nice_level (not settings of the "
            "service, of runner local")):
        settings_for(tmp_path, url, nice_level="5")


def test_a_plugin_runner_runs_a_job(start_service, sample_image: Path):
    live = start_service(runner=f"{MODULE}:NiceRunner", nice_level="7")
    job_url = live.run_image(sample_image)
    assert live.wait_phase(job_url, {"COMPLETED", "ERROR"}) == "COMPLETED"
    job = job_xml(live, job_url)
    assert text_of(job, "phase") == "COMPLETED"
    assert live.service.runner.command[:3] == ["nice", "-n", "7"]


def _tokens(tmp_path: Path) -> Path:
    path = tmp_path / "tokens"
    path.write_text("t-alice alice\nt-bob bob\nt-ops ops operator\n")
    return path


def test_a_plugin_policy_decides_who_sees_what(start_service,
                                               tmp_path: Path):
    live = start_service(auth=f"{MODULE}:TokenPolicy",
                         token_file=str(_tokens(tmp_path)))
    assert live.settings.auth_settings == TokenSettings(
        token_file=tmp_path / "tokens")
    http = live.http

    def as_user(token: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {token}"}

    r = http.post(live.jobs, data={"runid": "a"}, allow_redirects=False)
    assert r.status_code == 401
    assert r.headers["WWW-Authenticate"] == 'Bearer realm="qfits"'
    created = {}
    for who in ("alice", "bob"):
        r = http.post(live.jobs, data={"runid": who},
                      headers=as_user(f"t-{who}"), allow_redirects=False)
        assert r.status_code == 303, r.text
        created[who] = r.headers["Location"]
    # Each user sees their own job only; the other's is forbidden.
    r = http.get(created["bob"], headers=as_user("t-alice"))
    assert r.status_code == 403
    mine = http.get(live.jobs, headers=as_user("t-alice")).text
    assert created["alice"].rsplit("/", 1)[1] in mine
    assert created["bob"].rsplit("/", 1)[1] not in mine
    # The operator's identity sees everyone's (Identity.sees_all).
    every = http.get(live.jobs, headers=as_user("t-ops")).text
    for url in created.values():
        assert url.rsplit("/", 1)[1] in every
    r = http.get(created["bob"], headers=as_user("t-ops"))
    assert r.status_code == 200
    assert text_of(etree.fromstring(r.content), "ownerId") == "bob"


# -- a science parameter is declared once -------------------------------------
def _valid_text(param) -> str:
    """A value inside the parameter's rule (not its default)."""
    if param.kind == "choice":
        return param.choices[-1]
    low = param.low if math.isfinite(param.low) else -10.0
    high = param.high if math.isfinite(param.high) else 10.0
    return repr(round(low + (high - low) / 4, 3))


def test_every_declared_parameter_reaches_the_worker(start_service,
                                                     sample_image: Path):
    """PARAMETERS drives the UWS parameters, the form, storage and spec."""
    live = start_service()
    given = {p.name: _valid_text(p) for p in PARAMETERS}
    expected = QualityParameters.from_text(given).to_json()
    page = live.http.get(f"{live.url}/").text
    for name in given:
        assert f'name="{name}"' in page, name  # a field of the web form
    with sample_image.open("rb") as fh:
        job_url = live.create(files={"image": fh},
                              **{k.upper(): v for k, v in given.items()})
    job_id = job_url.rsplit("/", 1)[1]
    shown = {p.get("id"): p.text for p in job_xml(live, job_url).iter(
        "{http://www.ivoa.net/xml/UWS/v1.0}parameter")}
    stored = {p.name: p.value for p in
              live.service.store.get(job_id).parameters}
    for name, value in expected.items():
        assert stored[name] == value  # typed: numbers are numbers
        assert shown[name] == str(value)
    r = live.http.post(f"{job_url}/phase", data={"PHASE": "RUN"},
                       allow_redirects=False)
    assert r.status_code == 303
    spec = live.service.folder(job_id).read_spec()
    assert spec.parameters == expected
    assert live.wait_phase(job_url, {"COMPLETED", "ERROR"}) == "COMPLETED"


def test_a_weight_map_is_a_file_input_like_the_flat(start_service,
                                                    tmp_path: Path,
                                                    sample_image: Path):
    """WEIGHT: uploaded, stored by reference, given to the worker."""
    live = start_service()
    with fits.open(sample_image) as hdul:
        shape = hdul[0].data.shape
    weight = tmp_path / "weight.fits"
    fits.PrimaryHDU(np.full(shape, 2.0, np.float32)).writeto(weight)
    page = live.http.get(f"{live.url}/").text
    assert re.search(r'<input id="weight" name="weight" type="file"',
                     page)
    with sample_image.open("rb") as fh, weight.open("rb") as wh:
        job_url = live.create(files={"image": fh, "weight": wh},
                              WEIGHT_TYPE="map_weight")
    job_id = job_url.rsplit("/", 1)[1]
    stored = {p.name: p.value for p in
              live.service.store.get(job_id).parameters}
    assert stored["weight"] == "inputs/weight/weight.fits"
    assert stored["weight_type"] == "MAP_WEIGHT"
    r = live.http.post(f"{job_url}/phase", data={"PHASE": "RUN"},
                       allow_redirects=False)
    assert r.status_code == 303
    spec = live.service.folder(job_id).read_spec()
    assert spec.weight == "inputs/weight/weight.fits"
    assert live.wait_phase(job_url, {"COMPLETED", "ERROR"}) == "COMPLETED"


def test_the_command_line_offers_every_declared_parameter():
    help_text = subprocess.run(
        [sys.executable, "-m", "qualityfits", "--help"], capture_output=True,
        text=True, check=True).stdout
    for param in PARAMETERS:
        assert param.option in help_text, param.name


# -- refusing to start --------------------------------------------------------
@pytest.mark.parametrize(("change", "words"), [
    (None, ("the job database is empty (no schema revision); this "
            "service needs revision")),
    ("qfits.pbs_queue = long\n", "unknown settings: qfits.pbs_queue"),
], ids=["database-not-migrated", "setting-of-another-runner"])
def test_pserve_refuses_to_start_in_one_line(tmp_path: Path, change, words):
    """No traceback: what is wrong and what to do, then exit status 1."""
    ini = tmp_path / "development.ini"
    text = (ROOT / "development.ini").read_text()
    if change is not None:
        text = text.replace("qfits.auth = anonymous\n",
                            f"qfits.auth = anonymous\n{change}")
    ini.write_text(text)
    done = subprocess.run(
        [str(Path(sys.executable).parent / "pserve"), str(ini),
         f"http_port={free_port()}"], cwd=tmp_path, capture_output=True,
        text=True, timeout=120, check=False)
    assert done.returncode == 1
    assert "Traceback" not in done.stderr
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("qualityfits-uws: cannot start: "), done.stderr
    assert words in last
    if change is None:
        assert "alembic -c development.ini upgrade head" in last
