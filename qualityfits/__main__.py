"""``python -m qualityfits``: the command-line interface."""

from qualityfits.cli import run

run()
