"""The one settings object of the service, built from the ``.ini``.

`Settings.from_ini` reads the ``qfits.*`` keys of ``[app:main]`` once,
in the app factory; nothing below the app reads the ini or the
environment.  Unknown ``qfits.*`` keys and bad values are refused with
a message naming the key (a typo must not silently keep a default).
Every key is documented in ``docs/service.md``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

PREFIX = "qfits."

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*$")
_DURATION_UNIT = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?i?b?)?\s*$", re.IGNORECASE)
_SIZE_UNIT = {"": 1, "b": 1, "k": 10**3, "m": 10**6, "g": 10**9,
              "t": 10**12, "ki": 2**10, "mi": 2**20, "gi": 2**30,
              "ti": 2**40}

AUTH_MODES = ("anonymous", "basic", "header")

_TRUE = frozenset({"true", "yes", "on", "1"})
_FALSE = frozenset({"false", "no", "off", "0"})
_HOST = re.compile(r"^[A-Za-z0-9._:-]+$")
_ADDRESS = re.compile(r"^[^@\s<>\"',;]+@[^@\s<>\"',;]+$")


class SettingsError(ValueError):
    """A bad or unknown setting."""


def parse_duration(value: str, key: str = "duration") -> int:
    """Parse ``3600``, ``90s``, ``30m``, ``2h`` or ``7d`` into seconds."""
    match = _DURATION.match(str(value))
    if match is None:
        raise SettingsError(
            f"{key}: {value!r} is not a duration (e.g. 3600, 90m, 2h, 7d)")
    return round(float(match.group(1)) * _DURATION_UNIT[match.group(2)])


def parse_size(value: str, key: str = "size") -> int:
    """Parse ``800MB``, ``1GiB`` or a number of bytes."""
    match = _SIZE.match(str(value))
    if match is None:
        raise SettingsError(
            f"{key}: {value!r} is not a size (e.g. 800MB, 1GiB, 1000000)")
    unit = (match.group(2) or "").lower().removesuffix("b")
    return round(float(match.group(1)) * _SIZE_UNIT[unit])


def human_bytes(size: int, decimals: int | None = None) -> str:
    """Write a byte count the way the limits are stated (800 MB).

    With ``decimals``, a fixed number of them (a file's size: 66.9 kB).
    """
    spec = "g" if decimals is None else f".{decimals}f"
    for unit, scale in (("GB", 10**9), ("MB", 10**6), ("kB", 10**3)):
        if size >= scale:
            return f"{size / scale:{spec}} {unit}"
    return f"{size} bytes"


def _int(value: Any, key: str, minimum: int,
         maximum: int | None = None) -> int:
    try:
        number = int(str(value).strip())
    except ValueError:
        raise SettingsError(f"{key}: {value!r} is not an integer") from None
    if number < minimum:
        raise SettingsError(f"{key}: {number} is below {minimum}")
    if maximum is not None and number > maximum:
        raise SettingsError(f"{key}: {number} is above {maximum}")
    return number


def _bool(value: Any, key: str) -> bool:
    text = str(value).strip().lower()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise SettingsError(
        f"{key}: {value!r} is not a boolean (true/false, yes/no, on/off, "
        "1/0)")


def _float(value: Any, key: str, minimum: float) -> float:
    try:
        number = float(str(value).strip())
    except ValueError:
        raise SettingsError(f"{key}: {value!r} is not a number") from None
    if not number >= minimum:
        raise SettingsError(f"{key}: {number} is below {minimum}")
    return number


@dataclass(frozen=True)
class Settings:
    """Everything the service is configured with (``docs/service.md``)."""

    #: SQLAlchemy URL of the job database.
    database_url: str
    #: One directory per job is created below this one.
    job_dir: Path
    #: Public base URL (scheme, host, port, path prefix) for Locations
    #: and hrefs; empty: taken from each request.
    base_url: str = ""
    #: ``local``, ``pbs`` or a dotted ``module:Class`` name.
    runner: str = "local"
    #: Local runner: jobs executing at once; the rest stay QUEUED.
    max_running: int = 1
    #: CCD worker processes of one job (0: the pipeline's default).
    ccd_jobs: int = 0
    #: Seconds between runner polls (the local runner is also woken at
    #: once when a job is queued or a worker ends).
    poll_interval: float = 1.0
    #: Execution duration given to a new job, and the most a client may
    #: ask for [s] (0 = unlimited is refused when a maximum is set).
    execution_duration: int = 3600
    execution_duration_max: int = 4 * 3600
    #: Time from creation to destruction of a new job, and the most a
    #: client may ask for [s].
    destruction: int = 7 * 86400
    destruction_max: int = 30 * 86400
    #: Seconds between two runs of the reaper (destruction).
    reaper_interval: float = 600.0
    #: Largest upload or fetched file [bytes].
    upload_limit: int = 800 * 10**6
    #: Cap of a blocking WAIT [s], and WAITs blocked at once (beyond it,
    #: WAIT answers at once: keep it below the server's thread count).
    wait_max: int = 60
    wait_clients: int = 100
    #: ``anonymous``, ``basic`` (user file) or ``header`` (trusted proxy).
    auth: str = "anonymous"
    auth_user_file: Path | None = None
    auth_header: str = "X-Remote-User"
    auth_realm: str = "QualityFITS-UWS"
    #: Seconds a worker waits on a URL given as an input.
    fetch_timeout: float = 60.0
    #: Expected processing rate for the quote [s per megapixel], and the
    #: fixed cost of a job [s] (measured: benchmarks/README.md).
    quote_s_per_mpix: float = 0.11
    quote_overhead_s: float = 5.0
    #: Python's thread switch interval in the served process [s] (0:
    #: Python's default, 0.005).  Short, so that waitress's I/O loop,
    #: when it spins, cannot starve the request threads of the GIL
    #: (benchmarks/README.md: 100 WAIT clients slowed the others).
    switch_interval: float = 0.0005
    #: Command that runs one job (argument list; the job directory is
    #: appended).  Empty: this Python's ``-m pbs_bridge.worker``.
    worker_command: tuple[str, ...] = ()
    #: PBS runner: folder of qsub/qstat/qdel/qrls (empty: the PATH),
    #: queue to submit to (empty: the default), seconds a command may
    #: take, longest pause between tries while the batch system does
    #: not answer [s].
    pbs_bin: str = ""
    pbs_queue: str = ""
    pbs_timeout: float = 30.0
    pbs_backoff_max: float = 60.0
    #: PBS runner: memory requested for a job, base + factor x the
    #: image's size [bytes].
    pbs_memory_base: int = 512 * 2**20
    pbs_memory_factor: float = 2.0
    #: PBS runner: names of the service's environment variables a batch
    #: job gets (``qsub -v``; it has its login environment besides).
    pbs_environment: tuple[str, ...] = ()
    #: E-mail notification when a job ends COMPLETED or ERROR (to the
    #: job's ``email`` parameter): SMTP server (empty: off), its port,
    #: the sender address, an optional login, STARTTLS, and the seconds
    #: the server may take to answer.
    smtp_host: str = ""
    smtp_port: int = 25
    smtp_from: str = "qualityfits-uws@localhost"
    smtp_user: str = ""
    smtp_password: str = field(default="", repr=False)
    smtp_starttls: bool = False
    smtp_timeout: float = 10.0

    @classmethod
    def from_ini(cls, settings: dict[str, Any]) -> Settings:
        """Build the settings from the app's ``[app:main]`` keys.

        Keys without the ``qfits.`` prefix (Pyramid's own) are ignored.
        """
        known = {f.name for f in fields(cls)}
        values = {k.removeprefix(PREFIX): v for k, v in settings.items()
                  if k.startswith(PREFIX)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise SettingsError(
                "unknown settings: "
                + ", ".join(PREFIX + k for k in unknown))
        for required in ("database_url", "job_dir"):
            if not str(values.get(required, "")).strip():
                raise SettingsError(f"{PREFIX}{required} is required")
        kwargs: dict[str, Any] = {}
        for key, raw in values.items():
            name = PREFIX + key
            kwargs[key] = _convert(key, name, raw)
        if kwargs.get("runner") == "pbs":
            # A batch job gets the cores it asks for: one unless told.
            kwargs.setdefault("ccd_jobs", 1)
        made = cls(**kwargs)
        made.check()
        return made

    def check(self) -> None:
        """Refuse inconsistent settings."""
        if self.auth not in AUTH_MODES:
            raise SettingsError(
                f"{PREFIX}auth: {self.auth!r} is not one of "
                + ", ".join(AUTH_MODES))
        if self.auth == "basic" and self.auth_user_file is None:
            raise SettingsError(
                f"{PREFIX}auth = basic needs {PREFIX}auth_user_file")
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
        if self.runner == "pbs" and self.ccd_jobs == 0:
            raise SettingsError(
                f"{PREFIX}ccd_jobs = 0 (one per core of the machine) cannot "
                "be asked of a batch system: give the cores a job may use "
                "(default with runner = pbs: 1)")
        if self.pbs_queue and not re.match(r"^[A-Za-z0-9._-]+$",
                                           self.pbs_queue):
            raise SettingsError(
                f"{PREFIX}pbs_queue: {self.pbs_queue!r} is not a queue name")
        if self.base_url and not re.match(r"^https?://[^/]+", self.base_url):
            raise SettingsError(
                f"{PREFIX}base_url: {self.base_url!r} is not an http(s) "
                "URL")
        self._check_smtp()

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


def _convert(key: str, name: str, raw: Any) -> Any:  # noqa: PLR0911
    text = str(raw).strip()
    if key in {"database_url", "runner", "auth", "auth_header",
               "auth_realm", "pbs_bin", "pbs_queue", "smtp_host",
               "smtp_from", "smtp_user", "smtp_password"}:
        return text
    if key == "smtp_starttls":
        return _bool(text, name)
    if key == "smtp_port":
        return _int(text, name, 1, 65535)
    if key == "base_url":
        return text.rstrip("/")
    if key == "job_dir":
        return Path(text)
    if key == "auth_user_file":
        return Path(text) if text else None
    if key == "worker_command":
        return tuple(text.split())
    if key == "pbs_environment":
        names = tuple(text.replace(",", " ").split())
        bad = [n for n in names if not re.match(r"^[A-Za-z_]\w*$", n)]
        if bad:
            raise SettingsError(f"{name}: {bad[0]!r} is not a variable name")
        return names
    if key in {"execution_duration", "execution_duration_max",
               "destruction", "destruction_max"}:
        return parse_duration(text, name)
    if key in {"upload_limit", "pbs_memory_base"}:
        return parse_size(text, name)
    if key in {"max_running", "wait_clients"}:
        return _int(text, name, 1)
    if key in {"ccd_jobs", "wait_max"}:
        return _int(text, name, 0)
    if key in {"poll_interval", "reaper_interval", "pbs_timeout",
               "pbs_backoff_max", "smtp_timeout"}:
        return _float(text, name, 0.01)
    if key in {"fetch_timeout", "quote_s_per_mpix", "quote_overhead_s",
               "switch_interval", "pbs_memory_factor"}:
        return _float(text, name, 0.0)
    raise AssertionError(key)  # pragma: no cover - every field is listed
