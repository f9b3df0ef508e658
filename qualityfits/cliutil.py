"""What the command lines share: one-line argument errors, ``--set``.

``qualityfits IMAGE`` (`qualityfits.cli`) and ``qualityfits run``
(`qualityfits.runcli`) parse their arguments alike: an argument error is
one line and exit status 2, and ``--set KEY=VALUE`` overrides a
`QualityConfig` value.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import Any, NoReturn

from qualityfits.config import QualityConfig
from qualityfits.errors import InvalidParameterError


class OneLineParser(argparse.ArgumentParser):
    """Argument errors in one line, like every other error (exit 2)."""

    def error(self, message: str) -> NoReturn:
        """Print ``qualityfits: error: ...`` and exit with status 2."""
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def config_from_pairs(pairs: Sequence[str]) -> QualityConfig:
    """Build a `QualityConfig` from ``--set KEY=VALUE`` texts.

    Raises
    ------
    InvalidParameterError
        An unknown key or a value of the wrong kind, naming the pair.
    """
    defaults = QualityConfig().to_dict()
    values: dict[str, Any] = {}
    for pair in pairs:
        key, sep_, raw = pair.partition("=")
        key = key.strip()
        if not sep_ or key not in defaults:
            known = ", ".join(sorted(defaults))
            raise InvalidParameterError(
                f"--set {pair!r}: expected KEY=VALUE with KEY one of {known}"
            )
        default = defaults[key]
        try:
            if isinstance(default, list):
                values[key] = [float(v) for v in raw.split(",")]
            elif isinstance(default, bool):
                values[key] = raw.lower() in ("1", "true", "yes")
            elif isinstance(default, int):
                values[key] = int(raw)
            else:
                values[key] = float(raw)
        except ValueError:
            raise InvalidParameterError(
                f"--set {pair!r}: {raw!r} is not a valid value for {key}"
            ) from None
    return QualityConfig.from_dict(values)
