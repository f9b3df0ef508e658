"""When, through what and how long an exposure was taken, from its header.

A night is judged exposure after exposure: the run table
(`qualityfits.runs`) sorts and plots them by time, and shows the filter,
exposure time and airmass beside the quality.  Observatories write
these in many ways; `observation` reads the common ones:

* the instant: ``DATE-OBS`` (the FITS standard's keyword) — ISO 8601
  (``2017-03-16T06:18:30.75``), or a date completed by ``TIME-OBS``,
  ``UTC-OBS`` or ``UT`` (text ``hh:mm:ss`` or decimal hours), or the
  pre-2000 FITS form ``dd/mm/yy`` (19yy) — else ``MJD-OBS`` (some
  headers round it to the day: SAAO's 56486.0 for 00:57 UTC);
* the filter: ``BAND`` (a short name, NOIRLab), else ``FILTER``,
  ``FILTER1``, ``FILTNAME``, ``FILTER2``;
* the exposure time: ``EXPTIME``, ``EXPOSURE``, ``ITIME`` [s];
* the airmass: ``AIRMASS``, ``SECZ``;
* ``OBJECT``, ``INSTRUME``, ``TELESCOP`` as written.

What is missing or unreadable is None, never guessed.

>>> from astropy.io import fits
>>> h = fits.Header({"DATE-OBS": "2013-04-09", "UTC-OBS": "8:45:29.17",
...                  "FILTER": "r.MP9601", "EXPTIME": 287.1})
>>> obs = observation(h)
>>> obs["date_obs"], round(obs["mjd_obs"], 5), obs["filter"]
('2013-04-09T08:45:29.170', 56391.36492, 'r.MP9601')
"""

from __future__ import annotations

import math
import re
from typing import Any, Final

from astropy.io import fits
from astropy.time import Time

#: The keys of an observation, in the order the run table shows them.
KEYS: Final = ("date_obs", "mjd_obs", "filter", "exptime", "airmass",
               "object", "instrument", "telescope")

_OLD_DATE: Final = re.compile(r"^\s*(\d\d)/(\d\d)/(\d\d)\s*$")
_ISO_DATE: Final = re.compile(r"^\s*(\d{4})-(\d\d)-(\d\d)\s*$")
_HMS: Final = re.compile(r"^\s*(\d{1,2}):(\d\d):(\d\d(?:\.\d*)?)\s*$")


def _text(header: fits.Header, *keys: str) -> str | None:
    for key in keys:
        value = header.get(key)
        if isinstance(value, str) and value.strip():
            return value.strip()
    return None


def _number(header: fits.Header, *keys: str) -> float | None:
    for key in keys:
        value = header.get(key)
        if isinstance(value, bool):
            continue
        if isinstance(value, int | float) and math.isfinite(value):
            return float(value)
    return None


def _time_of_day(header: fits.Header) -> str | None:
    """Return ``hh:mm:ss.sss`` from TIME-OBS, UTC-OBS or UT."""
    for key in ("TIME-OBS", "UTC-OBS", "UT", "UTC"):
        value = header.get(key)
        if isinstance(value, str) and (m := _HMS.match(value)):
            h, mi, s = int(m[1]), int(m[2]), float(m[3])
            if h < 24 and mi < 60 and s < 60:
                return f"{h:02d}:{mi:02d}:{s:06.3f}"
        elif (isinstance(value, int | float) and not isinstance(value, bool)
              and 0 <= value < 24):
            hours, rest = divmod(float(value) * 3600, 3600)
            minutes, seconds = divmod(rest, 60)
            return f"{int(hours):02d}:{int(minutes):02d}:{seconds:06.3f}"
    return None


def _instant(header: fits.Header) -> Time | None:
    mjd = _number(header, "MJD-OBS")
    fallback = (Time(mjd, format="mjd", scale="utc")
                if mjd is not None and mjd > 0 else None)
    date = header.get("DATE-OBS")
    if not isinstance(date, str):
        return fallback
    if m := _OLD_DATE.match(date):
        day, month, year = int(m[1]), int(m[2]), 1900 + int(m[3])
        date = f"{year:04d}-{month:02d}-{day:02d}"
    if _ISO_DATE.match(date):
        clock = _time_of_day(header)
        if clock is None:
            return fallback  # a day is not an instant
        date = f"{date.strip()}T{clock}"
    try:
        return Time(date.strip(), format="isot", scale="utc")
    except ValueError:
        return fallback


def observation(header: fits.Header) -> dict[str, Any]:
    """Return what the header says of the exposure (None: not said).

    Parameters
    ----------
    header : astropy.io.fits.Header
        The primary header (merged with the first image extension's for
        a multi-extension file).

    Returns
    -------
    dict
        ``date_obs`` (ISO 8601 UTC, milliseconds), ``mjd_obs``,
        ``filter``, ``exptime`` [s], ``airmass``, ``object``,
        ``instrument``, ``telescope``.
    """
    when = _instant(header)
    return {
        "date_obs": None if when is None else when.isot,
        "mjd_obs": None if when is None else float(when.mjd),
        "filter": _text(header, "BAND", "FILTER", "FILTER1", "FILTNAME",
                        "FILTER2"),
        "exptime": _number(header, "EXPTIME", "EXPOSURE", "ITIME"),
        "airmass": _number(header, "AIRMASS", "SECZ"),
        "object": _text(header, "OBJECT"),
        "instrument": _text(header, "INSTRUME"),
        "telescope": _text(header, "TELESCOP"),
    }
