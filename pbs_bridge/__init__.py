"""Run QualityFITS jobs on a PBS/TORQUE batch system (qsub/qstat/qdel).

Import boundary: the batch job body imports ``qualityfits``, ``votable``
and the standard library only, never the web stack.  Its content arrives
with the batch-backend issue.
"""
