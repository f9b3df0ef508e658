"""The IVOA UWS 1.1 service publishing the QualityFITS pipeline.

HTTP (`uws.views`, the web page `uws.web`), the job service
(`uws.service`: phases, WAIT, the poller and reaper), the store
(`uws.store`, its migrations in ``uws/migrations``), settings and
authentication policies (`uws.settings`, `uws.auth`).

Import direction of the project's packages:
``uws -> pbs_bridge -> qualityfits -> votable``.  ``uws`` is at the top:
it may import the three others, and none of them imports it
(tests/test_imports.py checks this, and that no module import forms a
cycle).  Jobs run outside the web process through ``pbs_bridge``'s
runners, the job folder (`pbs_bridge.jobfolder`) being the only thing
the service and a worker share.
"""
