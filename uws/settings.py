"""The one settings object of the service, built from the ``.ini``.

`Settings.from_ini` reads the ``qfits.*`` keys of ``[app:main]`` once,
in the app factory; nothing below the app reads the ini or the
environment.  The keys are declared in three places, each owner
declaring its own with `pbs_bridge.config.option`: the service's here
(`Settings`), the chosen runner's (its ``settings_type``, e.g.
`pbs_bridge.pbs.PbsSettings` for the ``pbs_*`` keys) and the chosen
authentication policy's (`uws.auth`).  Unknown keys and bad values are
refused with a message naming the key (a typo must not silently keep a
default).  Every key is documented in ``docs/service.md``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from pbs_bridge.config import (
    PREFIX,
    SettingsError,
    option,
    parse_duration,
    parse_size,
    read_settings,
    setting_keys,
)
from pbs_bridge.runner import runner_class
from qualityfits.config import QualityConfig
from qualityfits.errors import InvalidParameterError
from uws.auth import policy_class
from uws.registry import check_settings as check_registry

__all__ = ["PREFIX", "Settings", "SettingsError", "human_bytes",
           "parse_duration", "parse_size"]

_HOST = re.compile(r"^[A-Za-z0-9._:-]+$")
_ADDRESS = re.compile(r"^[^@\s<>\"',;]+@[^@\s<>\"',;]+$")


def human_bytes(size: int, decimals: int | None = None) -> str:
    """Write a byte count the way the limits are stated (800 MB).

    With ``decimals``, a fixed number of them (a file's size: 66.9 kB).
    """
    spec = "g" if decimals is None else f".{decimals}f"
    for unit, scale in (("GB", 10**9), ("MB", 10**6), ("kB", 10**3)):
        if size >= scale:
            return f"{size / scale:{spec}} {unit}"
    return f"{size} bytes"


#: The settings that set `QualityConfig`'s grade limits.
GRADE_KEYS = ("grade_fwhm_arcsec", "grade_ellipticity", "grade_missing_frac")


@dataclass(frozen=True)
class Settings:
    """Everything the service is configured with (``docs/service.md``)."""

    #: SQLAlchemy URL of the job database.
    database_url: str = option("", "str")
    #: One directory per job is created below this one.
    job_dir: Path = option(Path(), "path")
    #: Public base URL (scheme, host, port, path prefix) for Locations
    #: and hrefs; empty: taken from each request.
    base_url: str = option("", "url")
    #: ``local``, ``pbs`` or a ``module:Class`` (`pbs_bridge.runner`).
    runner: str = option("local", "str")
    #: Seconds between runner polls (the local runner is also woken at
    #: once when a job is queued or a worker ends).
    poll_interval: float = option(1.0, "float", minimum=0.01)
    #: Execution duration given to a new job, and the most a client may
    #: ask for [s] (0 = unlimited is refused when a maximum is set).
    execution_duration: int = option(3600, "duration", minimum=0)
    execution_duration_max: int = option(4 * 3600, "duration", minimum=0)
    #: Time from creation to destruction of a new job, and the most a
    #: client may ask for [s].
    destruction: int = option(7 * 86400, "duration", minimum=0)
    destruction_max: int = option(30 * 86400, "duration", minimum=0)
    #: Seconds between two runs of the reaper (destruction).
    reaper_interval: float = option(600.0, "float", minimum=0.01)
    #: Largest upload or fetched file [bytes].
    upload_limit: int = option(800 * 10**6, "size")
    #: Per owner (in anonymous mode: for everybody together): jobs
    #: queued or executing at once (a RUN beyond it is a 429), and jobs
    #: kept (a creation beyond it is a 403: delete some); 0: no limit.
    max_active_jobs: int = option(100, "int", minimum=0)
    max_stored_jobs: int = option(20000, "int", minimum=0)
    #: Per owner (anonymous mode: everybody together), bytes of the
    #: kept jobs' folders (inputs and results):
    #: a creation or an upload beyond it is a 403; 0: no limit.  50 GB
    #: keeps ~30 MegaCam jobs (an 800 MB exposure and its 790 MB of
    #: products, benchmarks/README.md) through the default destruction
    #: time of 7 days: a night's exposures of one observer.
    max_stored_bytes: int = option(50 * 10**9, "size")
    #: Largest input once decompressed [bytes], and most pixels of its
    #: images together: checked from the headers before any pixel is
    #: read, and while a compressed stream is inflated (a MegaCam
    #: exposure: 1.36 GB in float32, 340 million pixels).
    decompressed_limit: int = option(2 * 10**9, "size", minimum=2880)
    pixel_limit: int = option(500 * 10**6, "size", minimum=1)
    #: Cap of a blocking WAIT [s], and WAITs blocked at once (beyond it,
    #: WAIT answers at once: keep it below the server's thread count).
    wait_max: int = option(60, "int", minimum=0)
    wait_clients: int = option(100, "int", minimum=1)
    #: ``anonymous``, ``basic`` (user file), ``header`` (trusted proxy)
    #: or a ``module:Class`` (`uws.auth`).
    auth: str = option("anonymous", "str")
    #: Seconds a worker waits on a URL given as an input.
    fetch_timeout: float = option(60.0, "float", minimum=0.0)
    #: Hosts (names) and networks (``10.2.0.0/16``) a URL input may
    #: reach besides public addresses: a data centre's own archive
    #: (`pbs_bridge.fetch`; everything else private is refused).
    fetch_allow: tuple[str, ...] = option((), "list")
    #: Expected processing rate for the quote [s per megapixel], and the
    #: fixed cost of a job [s] (measured: benchmarks/README.md).
    quote_s_per_mpix: float = option(0.11, "float", minimum=0.0)
    quote_overhead_s: float = option(5.0, "float", minimum=0.0)
    #: Python's thread switch interval in the served process [s] (0:
    #: Python's default, 0.005).  Short, so that waitress's I/O loop,
    #: when it spins, cannot starve the request threads of the GIL
    #: (benchmarks/README.md: 100 WAIT clients slowed the others).
    switch_interval: float = option(0.0005, "float", minimum=0.0)
    #: E-mail notification when a job ends COMPLETED or ERROR (to the
    #: job's ``email`` parameter): SMTP server (empty: off), its port,
    #: the sender address, an optional login, STARTTLS, and the seconds
    #: the server may take to answer.
    smtp_host: str = option("", "str")
    smtp_port: int = option(25, "int", minimum=1, maximum=65535)
    smtp_from: str = option("qualityfits-uws@localhost", "str")
    smtp_user: str = option("", "str")
    smtp_password: str = option("", "str", secret=True)
    smtp_starttls: bool = option(default=False, kind="bool")
    smtp_timeout: float = option(10.0, "float", minimum=0.01)
    #: Key of the pages' form tokens (`uws.security`); empty: a random
    #: one per process (forms opened before a restart must be
    #: reloaded; give one when several processes serve the pages).
    csrf_secret: str = option("", "str", secret=True)
    #: The limits of the exposure grades B, C and D (`qualityfits.grades`;
    #: three increasing numbers each; empty: QualityConfig's defaults,
    #: 1.0 1.2 2.0 arcsec, 0.05 0.1 0.2, 0 0.1 0.5): the median FWHM, the
    #: median ellipticity and the fraction of CCDs not assessed.  Jobs
    #: are graded with the values set when they run.
    grade_fwhm_arcsec: tuple[str, ...] = option((), "list")
    grade_ellipticity: tuple[str, ...] = option((), "list")
    grade_missing_frac: tuple[str, ...] = option((), "list")
    #: The chosen runner's and authentication policy's own settings
    #: (their ``settings_type``), read from the same keys.
    runner_settings: Any = field(default=None, repr=False, compare=False)
    auth_settings: Any = field(default=None, repr=False, compare=False)
    #: The VO registry (`uws.registry`, ``/resource.xml`` and ``/oai``):
    #: the service's IVOA identifier (empty: no record, both 404), the
    #: publishing registry's own (empty: ``ivo://{authority}/registry``)
    #: and whether it manages (and describes) the service's authority.
    ivoid: str = option("", "str")
    registry_ivoid: str = option("", "str")
    registry_authority: bool = option(default=True, kind="bool")
    #: What the records say: title, short name (16 characters at most),
    #: publisher, contact (name: the publisher's when empty), a
    #: description, subjects (separated by commas), the page describing
    #: the service (empty: the web page) and when the record was
    #: created and last changed (ISO 8601; empty: the process's start).
    record_title: str = option("QualityFITS-UWS image quality assessment",
                               "str")
    record_short_name: str = option("QualityFITS", "str")
    record_publisher: str = option("", "str")
    record_contact_name: str = option("", "str")
    record_contact_email: str = option("", "str")
    record_description: str = option(
        "Assesses the quality of astronomical CCD images (FITS, single "
        "exposures or mosaics): seeing (PSF FWHM and ellipticity across "
        "the field), sky background and its noise, limiting depth, "
        "cosmic rays and defects, with per-CCD tables, plots and a "
        "report, in the manner of the TERAPIX QualityFITS tool.  Jobs "
        "are submitted through the IVOA UWS 1.1 protocol.", "str")
    record_subjects: str = option(
        "Astronomical instrumentation, Astronomical techniques, "
        "Photometry, Astrometry", "str")
    record_reference_url: str = option("", "str")
    record_created: str = option("", "str")
    record_updated: str = option("", "str")

    @classmethod
    def from_ini(cls, settings: dict[str, Any]) -> Settings:
        """Build the settings from the app's ``[app:main]`` keys.

        Keys without the ``qfits.`` prefix (Pyramid's own) are ignored.
        """
        values = {k: v for k, v in settings.items() if k.startswith(PREFIX)}
        for required in ("database_url", "job_dir"):
            if not str(values.get(PREFIX + required, "")).strip():
                raise SettingsError(f"{PREFIX}{required} is required")
        runner = str(values.get(PREFIX + "runner", "local")).strip()
        auth = str(values.get(PREFIX + "auth", "anonymous")).strip()
        runner_type = runner_class(runner).settings_type
        auth_type = policy_class(auth).settings_type
        known = (setting_keys(cls) - {"runner_settings", "auth_settings"}
                 | setting_keys(runner_type) | setting_keys(auth_type))
        unknown = sorted(k for k in values
                         if k.removeprefix(PREFIX) not in known)
        if unknown:
            raise SettingsError(
                "unknown settings: " + ", ".join(unknown)
                + f" (not settings of the service, of runner {runner} or "
                f"of auth {auth}; see docs/service.md)")
        # Each reader takes the keys it declares and ignores the others.
        made = replace(read_settings(cls, values),
                       runner_settings=read_settings(runner_type, values),
                       auth_settings=read_settings(auth_type, values))
        made.check()
        return made

    def check(self) -> None:
        """Refuse inconsistent settings."""
        if self.execution_duration_max and (
                self.execution_duration == 0
                or self.execution_duration > self.execution_duration_max):
            raise SettingsError(
                f"{PREFIX}execution_duration must be between 1 and "
                f"{PREFIX}execution_duration_max")
        if self.destruction > self.destruction_max:
            raise SettingsError(
                f"{PREFIX}destruction must not exceed "
                f"{PREFIX}destruction_max")
        if self.base_url and not re.match(r"^https?://[^/]+", self.base_url):
            raise SettingsError(
                f"{PREFIX}base_url: {self.base_url!r} is not an http(s) "
                "URL")
        self._check_smtp()
        check_registry(self)
        self.grade_config()

    def grade_config(self) -> dict[str, list[float]]:
        """Return the ``qfits.grade_*`` limits as QualityConfig values.

        Raises
        ------
        SettingsError
            When a limit is not a number, or the three are not
            increasing limits >= 0.
        """
        values: dict[str, list[float]] = {}
        for name in GRADE_KEYS:
            words = getattr(self, name)
            if not words:
                continue
            try:
                values[name] = [float(w) for w in words]
            except ValueError:
                raise SettingsError(
                    f"{PREFIX}{name}: {' '.join(words)!r} is not three "
                    "numbers") from None
        try:
            QualityConfig.from_dict(values)
        except InvalidParameterError as exc:
            raise SettingsError(
                f"{PREFIX}{str(exc).removeprefix('config ')}") from None
        return values

    def _check_smtp(self) -> None:
        if self.smtp_host and not _HOST.match(self.smtp_host):
            raise SettingsError(
                f"{PREFIX}smtp_host: {self.smtp_host!r} is not a host name")
        if not _ADDRESS.match(self.smtp_from):
            raise SettingsError(
                f"{PREFIX}smtp_from: {self.smtp_from!r} is not an e-mail "
                "address")
        if bool(self.smtp_user) != bool(self.smtp_password):
            raise SettingsError(
                f"{PREFIX}smtp_user and {PREFIX}smtp_password go together "
                "(a login needs both)")

