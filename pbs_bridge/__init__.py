"""Everything that runs a job outside the web process.

* `pbs_bridge.jobfolder`: the job folder and its files (spec, progress,
  error, results manifest, log, derived files), the one module that
  knows them;
* `pbs_bridge.worker`: the job body (``uws-worker JOBDIR``);
* `pbs_bridge.runner`: the runner interface (`JobRunner`,
  `BackendStatus`, `BackendPhase`) and how runners are chosen by name
  or ``module:Class``; `pbs_bridge.local` (worker processes on this
  machine) and `pbs_bridge.pbs` (qsub/qstat/qdel/qrls, with
  `pbs_bridge.batch` and `pbs_bridge.qstat`);
* `pbs_bridge.config`: typed settings read from ini text, for the
  service and every plug-in.

Import direction of the project's packages:
``uws -> pbs_bridge -> qualityfits -> votable``.  ``pbs_bridge`` never
imports ``uws`` (the web stack): a batch node needs the science core
only.
"""
