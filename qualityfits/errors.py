"""Typed exceptions of the QualityFITS pipeline.

Per-source problems are bit flags in the source table; per-image problems
are these exceptions.  Every message is one line, precise, and names the
file or extension and the value at fault, so that a command line, a UWS
``errorSummary`` or a log can show it as it is.
"""

from __future__ import annotations


class QualityFitsError(Exception):
    """Base class: the assessment cannot produce a report for this input.

    Attributes
    ----------
    code : str
        A short machine-readable code (``"invalid-image"``, ...), stable
        across versions, for services that map errors to protocols.
    """

    code = "quality-error"


class InvalidImageError(QualityFitsError):
    """The file is not a readable FITS file (not FITS, truncated, corrupt)."""

    code = "invalid-image"


class NoImageDataError(QualityFitsError):
    """The FITS file holds no two-dimensional image HDU."""

    code = "no-image-data"


class EmptyImageError(QualityFitsError):
    """An image has no usable pixels (all NaN, all masked, or constant)."""

    code = "empty-image"


class NoStarsError(QualityFitsError):
    """No star usable for the PSF was found in an image."""

    code = "no-stars"


class NotScienceError(QualityFitsError):
    """The image is not a sky exposure (a flat, a bias, saturated...).

    Said by its header (IMAGETYP, OBSTYPE...) or read off its pixels;
    see `qualityfits.verdicts`.
    """

    code = "not-science"


class UnsupportedImageError(QualityFitsError):
    """A sky exposure of a kind this service does not assess.

    A colour sensor's raw mosaic (Bayer pattern): see
    `qualityfits.verdicts.colour_verdict`.
    """

    code = "unsupported-image"


class ShapeMismatchError(QualityFitsError):
    """A flat or mask does not match the image (shape or extension count)."""

    code = "shape-mismatch"


class InvalidParameterError(QualityFitsError, ValueError):
    """A parameter value is out of range (negative zero point, ...)."""

    code = "invalid-parameter"


class InternalError(QualityFitsError):
    """The assessment failed for a reason that is not the input's fault.

    Every extension failed on an internal error (a full disk, a worker
    process that died, ...): retrying elsewhere may succeed.
    """

    code = "internal-error"
