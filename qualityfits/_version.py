"""The distribution version, read from the installed metadata."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("qualityfits-uws")
except PackageNotFoundError:  # running from a source tree, not installed
    __version__ = "0.0.0+unknown"
