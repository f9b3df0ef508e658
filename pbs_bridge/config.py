"""Typed settings read from ``.ini`` strings, for the service and its plug-ins.

A settings class is a frozen dataclass whose fields are declared with
`option`: a default, a kind (how the ini's text becomes a value) and
bounds.  `read_settings` builds one from the ``qfits.*`` keys of an
``[app:main]`` section, converting and checking each key it declares
and ignoring the others, so that the service's own settings
(`uws.settings.Settings`), a runner's (`pbs_bridge.pbs.PbsSettings`)
and an authentication policy's are read from the same section by the
same rules.  Bad values are refused with a message naming the key.

This module lives in ``pbs_bridge`` (below ``uws``) because runners
declare settings too, and ``pbs_bridge`` never imports ``uws``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import MISSING, Field, field, fields, is_dataclass
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")

#: Prefix of the service's keys in ``[app:main]``.
PREFIX = "qfits."

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*$")
_DURATION_UNIT = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?i?b?)?\s*$", re.IGNORECASE)
_SIZE_UNIT = {"": 1, "b": 1, "k": 10**3, "m": 10**6, "g": 10**9,
              "t": 10**12, "ki": 2**10, "mi": 2**20, "gi": 2**30,
              "ti": 2**40}
_TRUE = frozenset({"true", "yes", "on", "1"})
_FALSE = frozenset({"false", "no", "off", "0"})
_NAME = re.compile(r"^[A-Za-z_]\w*$")

#: How the text of a key becomes a value (`option`'s ``kind``).
KINDS = ("str", "int", "float", "bool", "duration", "size", "path",
         "optional_path", "words", "names", "url", "list")


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


def option(default: Any, kind: str, *, minimum: float | None = None,
           maximum: float | None = None, secret: bool = False) -> Any:
    """Declare a setting: its default, kind and bounds (a dataclass field).

    ``kind`` is one of `KINDS`; ``minimum``/``maximum`` bound numbers
    (durations and sizes included); a ``secret`` is kept out of the
    dataclass's repr.
    """
    if kind not in KINDS:
        raise ValueError(f"unknown setting kind {kind!r}")
    return field(default=default, repr=not secret,
                 metadata={"kind": kind, "minimum": minimum,
                           "maximum": maximum})


def setting_keys(cls: type) -> frozenset[str]:
    """Return the names of the settings ``cls`` declares (without prefix)."""
    if not is_dataclass(cls):
        raise TypeError(f"{cls!r} is not a settings dataclass")
    return frozenset(f.name for f in fields(cls))


def read_settings(cls: type[T], values: Mapping[str, Any],
                     prefix: str = PREFIX) -> T:
    """Build ``cls`` from the ``prefix``-ed keys of ``values`` it declares.

    Keys ``cls`` does not declare are ignored (another reader's, or
    refused by the caller); required fields (no default) must be given.
    """
    given = {k.removeprefix(prefix): v for k, v in values.items()
             if k.startswith(prefix)}
    kwargs: dict[str, Any] = {}
    for spec in fields(cls):  # type: ignore[arg-type]
        name = prefix + spec.name
        if spec.name in given:
            kwargs[spec.name] = convert(spec, given[spec.name], name)
        elif spec.default is MISSING and spec.default_factory is MISSING:
            raise SettingsError(f"{name} is required")
    return cls(**kwargs)


def convert(spec: Field[Any], raw: Any, name: str) -> Any:  # noqa: PLR0911
    """Turn the text of one key into the value its field declares."""
    kind = spec.metadata.get("kind", "str")
    low, high = spec.metadata.get("minimum"), spec.metadata.get("maximum")
    text = str(raw).strip()
    value: Any
    if kind == "str":
        return text
    if kind == "bool":
        return _bool(text, name)
    if kind == "path":
        if not text:
            raise SettingsError(f"{name} is required")
        return Path(text)
    if kind == "optional_path":
        return Path(text) if text else None
    if kind == "url":
        return text.rstrip("/")
    if kind == "words":
        return tuple(text.split())
    if kind == "list":
        return tuple(text.replace(",", " ").split())
    if kind == "names":
        names = tuple(text.replace(",", " ").split())
        bad = [n for n in names if not _NAME.match(n)]
        if bad:
            raise SettingsError(f"{name}: {bad[0]!r} is not a variable name")
        return names
    if kind == "int":
        try:
            value = int(text)
        except ValueError:
            raise SettingsError(f"{name}: {raw!r} is not an integer"
                                ) from None
    elif kind == "float":
        try:
            value = float(text)
        except ValueError:
            raise SettingsError(f"{name}: {raw!r} is not a number") from None
    elif kind == "duration":
        value = parse_duration(text, name)
    else:  # size
        value = parse_size(text, name)
    if low is not None and not value >= low:
        raise SettingsError(f"{name}: {value} is below {low}")
    if high is not None and value > high:
        raise SettingsError(f"{name}: {value} is above {high}")
    return value


def _bool(text: str, name: str) -> bool:
    lowered = text.lower()
    if lowered in _TRUE:
        return True
    if lowered in _FALSE:
        return False
    raise SettingsError(
        f"{name}: {text!r} is not a boolean (true/false, yes/no, on/off, "
        "1/0)")
