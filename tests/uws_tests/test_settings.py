"""The settings object: every key parsed, documented, checked."""

from __future__ import annotations

import re
import subprocess
import sys
from dataclasses import fields
from pathlib import Path

import pytest
from paste.deploy.loadwsgi import appconfig

from pbs_bridge.local import LocalSettings
from pbs_bridge.pbs import PbsSettings
from uws.auth import BasicSettings, HeaderSettings
from uws.settings import (
    Settings,
    SettingsError,
    parse_duration,
    parse_size,
)

ROOT = Path(__file__).resolve().parents[2]


def _ini(**values: str) -> dict[str, str]:
    base = {"qfits.database_url": "sqlite:///x.sqlite",
            "qfits.job_dir": "var/jobs"}
    base.update({f"qfits.{k}": v for k, v in values.items()})
    return base


def test_development_ini_gives_the_embedded_defaults():
    conf = appconfig(f"config:{ROOT / 'development.ini'}")
    settings = Settings.from_ini(dict(conf))
    assert settings.database_url == f"sqlite:///{ROOT}/var/jobs.sqlite"
    assert settings.runner == "local"
    assert settings.auth == "anonymous"
    assert settings.upload_limit == 800 * 10**6
    assert settings.base_url == ""  # links follow the request's port
    assert settings.execution_duration == 3600
    assert settings.destruction == 7 * 86400


@pytest.mark.parametrize(("text", "seconds"), [
    ("3600", 3600), ("90s", 90), ("30m", 1800), ("2h", 7200),
    ("7d", 604800), ("1.5h", 5400)])
def test_durations(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize(("text", "size"), [
    ("800MB", 800 * 10**6), ("1GiB", 2**30), ("1000", 1000),
    ("1 MB", 10**6), ("512KiB", 512 * 1024)])
def test_sizes(text, size):
    assert parse_size(text) == size


@pytest.mark.parametrize(("values", "message"), [
    ({"wait_maxx": "3"}, "unknown settings: qfits.wait_maxx"),
    ({"upload_limit": "lots"}, "qfits.upload_limit: 'lots' is not a size"),
    ({"execution_duration": "soon"},
     "qfits.execution_duration: 'soon' is not a duration"),
    ({"max_running": "0"}, "qfits.max_running: 0 is below 1"),
    ({"auth": "kerberos"},
     ("qfits.auth: 'kerberos' is not anonymous, basic, header or "
      "module:Class")),
    ({"auth": "no.such.module:Policy"},
     "qfits.auth: cannot load no.such.module:Policy: No module named"),
    ({"runner": "slurm"},
     "qfits.runner: 'slurm' is not local, pbs or module:Class"),
    ({"runner": "pbs_bridge.local:NoSuchRunner"},
     "qfits.runner: cannot load pbs_bridge.local:NoSuchRunner"),
    ({"runner": "pbs_bridge.jobfolder:JobFolder"},
     "qfits.runner: pbs_bridge.jobfolder:JobFolder has no settings_type"),
    ({"pbs_queue": "long"},
     ("unknown settings: qfits.pbs_queue (not settings of the service, "
      "of runner local or of auth anonymous")),
    ({"auth_header": "X-User"}, "unknown settings: qfits.auth_header"),
    ({"auth": "basic"}, "qfits.auth = basic needs qfits.auth_user_file"),
    ({"auth": "header", "auth_challenge": 'realm="x"'},
     "qfits.auth_challenge 'realm=\"x\"' is no HTTP challenge"),
    ({"auth": "header", "auth_challenge": "Basic\trealm=x"},
     "is no HTTP challenge"),
    ({"execution_duration": "5h"}, "qfits.execution_duration must be"),
    ({"destruction": "60d"}, "qfits.destruction must not exceed"),
    ({"base_url": "example.org"}, "is not an http(s) URL"),
    ({"poll_interval": "x"}, "qfits.poll_interval: 'x' is not a number"),
    ({"runner": "pbs", "ccd_jobs": "0"},
     "qfits.ccd_jobs = 0 (one per core of the machine) cannot be asked"),
    ({"runner": "pbs", "pbs_queue": "batch;id"},
     "qfits.pbs_queue: 'batch;id' is not a"),
    ({"runner": "pbs", "pbs_memory_base": "much"},
     "qfits.pbs_memory_base: 'much' is not"),
    ({"runner": "pbs", "pbs_environment": "A B-C"},
     "qfits.pbs_environment: 'B-C' is not"),
    ({"smtp_port": "smtp"}, "qfits.smtp_port: 'smtp' is not an integer"),
    ({"smtp_port": "0"}, "qfits.smtp_port: 0 is below 1"),
    ({"smtp_port": "65536"}, "qfits.smtp_port: 65536 is above 65535"),
    ({"smtp_timeout": "soon"}, "qfits.smtp_timeout: 'soon' is not a number"),
    ({"smtp_timeout": "0"}, "qfits.smtp_timeout: 0.0 is below 0.01"),
    ({"smtp_starttls": "maybe"},
     "qfits.smtp_starttls: 'maybe' is not a boolean"),
    ({"smtp_host": "mail.example.org;rm"},
     "qfits.smtp_host: 'mail.example.org;rm' is not a host name"),
    ({"smtp_from": "qfits"}, "qfits.smtp_from: 'qfits' is not an e-mail"),
    ({"smtp_from": "a@b\nBcc: c@d"}, "qfits.smtp_from: "),
    ({"smtp_user": "qfits"},
     "qfits.smtp_user and qfits.smtp_password go together"),
    ({"smtp_password": "secret"},
     "qfits.smtp_user and qfits.smtp_password go together"),
    ({"grade_fwhm_arcsec": "1.0 1.2 fast"},
     "qfits.grade_fwhm_arcsec: '1.0 1.2 fast' is not three numbers"),
    ({"grade_ellipticity": "0.2 0.1 0.3"},
     "qfits.grade_ellipticity must be three increasing limits"),
    ({"grade_missing_frac": "0.1 0.5"},
     "qfits.grade_missing_frac must be three increasing limits"),
])
def test_bad_settings_are_refused_naming_the_key(values, message):
    with pytest.raises(SettingsError, match=re.escape(message)):
        Settings.from_ini(_ini(**values))


def test_pbs_settings_are_the_pbs_runners():
    settings = Settings.from_ini(_ini(runner="pbs", pbs_queue="long",
                                      pbs_memory_base="1GiB",
                                      pbs_memory_factor="3",
                                      pbs_bin="/opt/torque/bin",
                                      pbs_environment="TMPDIR, LANG",
                                      poll_interval="2"))
    pbs = settings.runner_settings
    assert isinstance(pbs, PbsSettings)
    assert pbs.ccd_jobs == 1  # the cores each batch job asks for
    assert pbs.pbs_memory_base == 2**30
    assert pbs.pbs_memory_factor == 3.0
    assert (pbs.pbs_queue, pbs.pbs_bin) == ("long", "/opt/torque/bin")
    assert pbs.pbs_environment == ("TMPDIR", "LANG")
    assert settings.poll_interval == 2.0  # the service's own key
    local = Settings.from_ini(_ini(max_running="3")).runner_settings
    assert isinstance(local, LocalSettings)
    assert (local.ccd_jobs, local.max_running) == (0, 3)  # 0: per core


def test_auth_settings_are_the_policys():
    header = Settings.from_ini(_ini(auth="header", auth_header="X-User"))
    assert isinstance(header.auth_settings, HeaderSettings)
    assert header.auth_settings.auth_header == "X-User"
    assert (header.auth_settings.auth_challenge
            == 'Proxy realm="QualityFITS-UWS"')
    negotiate = Settings.from_ini(_ini(auth="header",
                                       auth_challenge="Negotiate"))
    assert negotiate.auth_settings.auth_challenge == "Negotiate"
    basic = Settings.from_ini(_ini(auth="basic", auth_user_file="users"))
    assert isinstance(basic.auth_settings, BasicSettings)
    assert basic.auth_settings.auth_user_file == Path("users")


def test_smtp_settings():
    default = Settings.from_ini(_ini())
    assert default.smtp_host == ""  # notification off
    assert (default.smtp_port, default.smtp_from) == (
        25, "qualityfits-uws@localhost")
    assert (default.smtp_user, default.smtp_password) == ("", "")
    assert default.smtp_starttls is False
    assert default.smtp_timeout == 10.0
    settings = Settings.from_ini(_ini(
        smtp_host="mail.example.org", smtp_port="587",
        smtp_from="qfits@example.org", smtp_user="qfits",
        smtp_password="s3cret",  # noqa: S106 - a test value
        smtp_starttls="yes", smtp_timeout="2.5"))
    assert settings.smtp_host == "mail.example.org"
    assert settings.smtp_port == 587
    assert settings.smtp_from == "qfits@example.org"
    assert (settings.smtp_user, settings.smtp_password) == ("qfits",
                                                            "s3cret")
    assert settings.smtp_starttls is True
    assert settings.smtp_timeout == 2.5
    assert "s3cret" not in repr(settings)  # never in a log by accident


@pytest.mark.parametrize(("text", "value"), [
    ("true", True), ("Yes", True), ("on", True), ("1", True),
    ("false", False), ("NO", False), ("off", False), ("0", False)])
def test_smtp_starttls_booleans(text, value):
    assert Settings.from_ini(_ini(smtp_starttls=text)).smtp_starttls is value


def test_required_settings():
    with pytest.raises(SettingsError,
                       match=re.escape("qfits.job_dir is required")):
        Settings.from_ini({"qfits.database_url": "sqlite://"})


@pytest.mark.parametrize("declared", [
    Settings, LocalSettings, PbsSettings, BasicSettings, HeaderSettings])
def test_every_setting_is_documented(declared):
    doc = (ROOT / "docs" / "service.md").read_text()
    for field in fields(declared):
        if field.name in ("runner_settings", "auth_settings"):
            continue
        assert f"`qfits.{field.name}`" in doc, field.name


def test_science_packages_do_not_import_the_service():
    code = ("import sys, qualityfits, votable, pbs_bridge.worker, "
            "pbs_bridge.qstat, pbs_bridge.batch, "
            "pbs_bridge.jobfolder, pbs_bridge.runner, pbs_bridge.local, "
            "pbs_bridge.pbs, pbs_bridge.config; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in "
            "{'uws', 'pyramid', 'sqlalchemy', 'waitress'}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True,
                         text=True, check=True, cwd=ROOT)
    assert out.stdout.strip() == "[]"


def test_grade_limits_reach_the_jobs_config():
    settings = Settings.from_ini(_ini(grade_fwhm_arcsec="0.8, 1.0, 1.5",
                                      grade_missing_frac="0 0 0.25"))
    assert settings.grade_config() == {
        "grade_fwhm_arcsec": [0.8, 1.0, 1.5],
        "grade_missing_frac": [0.0, 0.0, 0.25]}
    assert Settings.from_ini(_ini()).grade_config() == {}
