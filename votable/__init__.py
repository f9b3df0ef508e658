"""Writing QualityFITS statistics as VOTable documents and FITS tables.

Import boundary: may import ``qualityfits``; never ``uws`` or
``pbs_bridge``.  Its content arrives with the products issue.
"""
