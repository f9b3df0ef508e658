"""The IVOA UWS 1.1 service publishing the QualityFITS pipeline.

Import boundary: may import ``qualityfits``, ``votable`` and
``pbs_bridge``; none of them imports it.  Its content arrives with the
UWS issue.
"""
