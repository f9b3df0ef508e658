"""What the command lines share: options, one-line errors, ``--set``.

``qualityfits IMAGE`` (`qualityfits.cli`) and ``qualityfits run``
(`qualityfits.runcli`) parse their arguments alike: an argument error is
one line and exit status 2, and ``--set KEY=VALUE`` overrides a
`QualityConfig` value.
"""

from __future__ import annotations

import argparse
import gc
import sys
from collections.abc import Sequence
from typing import Any, NoReturn

from qualityfits._version import __version__
from qualityfits.config import QualityConfig
from qualityfits.errors import InvalidParameterError
from qualityfits.parameters import PARAMETERS


def exit_now(status: int) -> NoReturn:
    """End a command's process with ``status``, skipping the last sweeps.

    The process ends here: the ~100 000 objects of numpy, scipy, astropy
    and the report need no final garbage collection, which cost 0.1-0.3
    s of a 3 s ``qualityfits`` run on the NTT frame.  `gc.freeze` moves
    them out of the collector's sight; the interpreter still flushes
    its files and runs its exit handlers.  For the console scripts only:
    a process that goes on (tests, a caller's script) calls their
    ``main`` and keeps its collector.
    """
    gc.freeze()
    sys.exit(status)


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


def add_input_options(p: argparse.ArgumentParser, *, every: str = "") -> None:
    """Add ``--flat``, ``--mask``, ``--weight`` and the science options.

    ``every`` qualifies the files' help ("for every image" in a run).
    The science options come from `PARAMETERS`: they only collect the
    text, which `QualityParameters.from_text` parses and checks.
    """
    tail = f" {every}" if every else ""
    p.add_argument("--flat",
                   help=f"master flat with the same extensions{tail}")
    p.add_argument("--mask",
                   help=f"bad-pixel mask with the same extensions{tail}")
    p.add_argument("--weight", help="weight map with the same extensions"
                   f"{tail} (its kind: --weight-type)")
    for param in PARAMETERS:
        p.add_argument(
            param.option, dest=param.name, default="",
            metavar=param.metavar or "{" + ",".join(param.choices) + "}",
            help=param.help)


def add_process_options(p: argparse.ArgumentParser) -> None:
    """Add ``--jobs``, ``--set``, ``--no-progress`` and ``--version``."""
    p.add_argument("--jobs", "-j", type=int, metavar="N",
                   help="worker processes (default: all cores)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a configuration value (repeatable), "
                   "e.g. --set detect_thresh=2")
    p.add_argument("--no-progress", action="store_true",
                   help="no progress bar even on a terminal")
    p.add_argument("--version", action="version",
                   version=f"qualityfits {__version__}")
