"""QualityFITS: image-quality assessment of flat-fielded FITS images.

The science pipeline, pure and without web code: sky background, source
detection and measurement, PSF star selection, pixel-free PSF FWHM and
ellipticity, an empirical PSF model, star/galaxy separation and counts,
QA flags, and an exposure aggregate over the CCDs of a mosaic.

Import boundary: the package direction of the project is
``uws -> pbs_bridge -> qualityfits -> votable``.  The measurement imports
only the scientific stack (numpy, scipy, astropy, sep,
astroscrappy, matplotlib) and the standard library; the report's tables
(`qualityfits.tables`, used by the product writer) import ``votable``, a
leaf that writes generic tables.  No module imports ``uws`` or
``pbs_bridge``.

>>> import qualityfits
>>> zp30 = qualityfits.QualityParameters(zeropoint=30.0)
>>> report = qualityfits.assess("a.fits", parameters=zp30)  # doctest: +SKIP
>>> report.exposure.metrics["FWHM_ARCSEC"]          # doctest: +SKIP
"""

from qualityfits._version import __version__
from qualityfits.config import QualityConfig
from qualityfits.errors import (
    EmptyImageError,
    InvalidImageError,
    InvalidParameterError,
    NoImageDataError,
    NoStarsError,
    NotScienceError,
    QualityFitsError,
    ShapeMismatchError,
    UnsupportedImageError,
)
from qualityfits.parameters import QualityParameters
from qualityfits.pipeline import assess
from qualityfits.report import ExposureReport, ExtensionReport, QualityReport

__all__ = [
    "EmptyImageError",
    "ExposureReport",
    "ExtensionReport",
    "InvalidImageError",
    "InvalidParameterError",
    "NoImageDataError",
    "NoStarsError",
    "NotScienceError",
    "QualityConfig",
    "QualityFitsError",
    "QualityParameters",
    "QualityReport",
    "ShapeMismatchError",
    "UnsupportedImageError",
    "__version__",
    "assess",
]
