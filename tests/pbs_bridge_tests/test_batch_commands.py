"""The batch-command layer: qsub's argument list, how jobs ended.

On recorded outputs of the test cluster's Slurm (``data/``), on
TORQUE's exit-status conventions and on recordings of a real TORQUE
4.2.8 (``../shared/data/torque``); the commands themselves run against
a real batch system in ``tests/uws_tests/test_batch.py``.
"""

from __future__ import annotations

import gzip
import math
import subprocess
from datetime import UTC, datetime
from pathlib import Path

import pytest
from testkit import shared_file

from pbs_bridge.batch import (
    TORQUE_EXEC_CODES,
    BatchError,
    Ending,
    Submission,
    bare_id,
    parse_scontrol,
    said,
    slurm_ending,
    torque_ending,
)
from pbs_bridge.jobfolder import JobFolder, WorkerSpec
from pbs_bridge.pbs import PbsRunner, PbsSettings, ended_status
from pbs_bridge.qstat import BatchJob, batch_job, parse_qstat_full
from pbs_bridge.runner import BackendPhase, RunnerJob

DATA = Path(__file__).resolve().parent / "data"


def test_qsub_argument_list():
    job = Submission(name="qf-0123abcd", script=Path("/data/jobs/x/batch.sh"),
                     log=Path("/data/jobs/x/worker.log"), walltime_s=3661,
                     memory_mb=600, cpus=2, queue="batch",
                     environment={"OMP_NUM_THREADS": "1",
                                  "PATH": "/usr/bin:/bin"})
    assert job.argv("/usr/bin/qsub") == [
        "/usr/bin/qsub", "-N", "qf-0123abcd",
        "-l", "nodes=1:ppn=2,walltime=01:01:01,mem=600mb",
        "-o", "/data/jobs/x/worker.log", "-e", "/data/jobs/x/worker.log",
        "-q", "batch", "-v", "OMP_NUM_THREADS=1,PATH=/usr/bin:/bin",
        "/data/jobs/x/batch.sh"]


def test_no_walltime_or_memory_means_the_queue_default():
    job = Submission(name="qf-1", script=Path("/j/batch.sh"),
                     log=Path("/j/worker.log"))
    argv = job.argv("qsub")
    assert argv[argv.index("-l") + 1] == "nodes=1:ppn=1"
    assert "-q" not in argv
    assert "-v" not in argv


@pytest.mark.parametrize(("field", "value"), [
    ("script", Path("/data/my jobs/batch.sh")),   # a space splits it
    ("log", Path("/data/jobs/x;rm -rf ~/worker.log")),
    ("name", "qf-$(reboot)"),
    ("queue", "batch\nid"),
    ("environment", {"A": "x,B=`id`"}),
])
def test_unsafe_values_never_reach_qsub(field: str, value: object):
    # Slurm's qsub wrapper runs an unquoted shell command line.
    base = {"name": "qf-1", "script": Path("/j/batch.sh"),
            "log": Path("/j/worker.log")}
    job = Submission(**{**base, field: value})  # type: ignore[arg-type]
    with pytest.raises(BatchError, match="refusing to pass"):
        job.argv("qsub")


def test_qsub_refusal_is_reported_in_the_batch_systems_words():
    recorded = (DATA / "qsub-refused_slurm-wlm-torque.txt").read_text()
    done = subprocess.CompletedProcess(["qsub"], 1, recorded, "")
    assert said("qsub", done) == (
        "qsub failed (exit status 1): sbatch: error: invalid partition "
        "specified: nosuchqueue sbatch: error: Batch job submission "
        "failed: Invalid partition name specified")


def test_a_silent_failure_says_so():
    done = subprocess.CompletedProcess(["qdel"], 1, "", "")
    assert said("qdel", done) == "qdel failed (exit status 1): no message"


def test_slurm_endings_recorded():
    jobs = parse_scontrol((DATA / "scontrol-show-job_slurm.txt").read_text())
    endings = [slurm_ending(fields) for fields in jobs.values()]
    assert [(e.state, e.exit_status, e.signal, e.timed_out, e.cancelled)
            for e in endings if e is not None] == [
        ("COMPLETED", 0, None, False, False),
        ("FAILED", 2, None, False, False),
        ("CANCELLED", 0, None, False, True),   # while pending
        ("CANCELLED", 0, 15, False, True),     # while running
        ("TIMEOUT", 0, 15, True, False),
    ]
    first = next(iter(jobs.values()))
    assert first["JobName"].startswith("qf-")


def test_a_job_still_running_has_no_ending():
    assert slurm_ending({"JobId": "3", "JobState": "RUNNING"}) is None
    assert slurm_ending({"JobId": "3", "JobState": "COMPLETING"}) is None


@pytest.mark.parametrize(("status", "expected"), [
    (0, Ending("0", exit_status=0)),
    (2, Ending("2", exit_status=2)),
    (255, Ending("255", exit_status=255)),
    # TORQUE's own codes (JOB_EXEC_* of its pbs_job.h).
    (-11, Ending("-11", timed_out=True, message="walltime limit exceeded")),
    (-10, Ending("-10", message="memory limit exceeded (TORQUE "
                 "JOB_EXEC_OVERLIMIT_MEM, -10)")),
    (-12, Ending("-12", message="CPU time limit exceeded (TORQUE "
                 "JOB_EXEC_OVERLIMIT_CPUT, -12)")),
    (-1, Ending("-1", message="the batch node could not start the job "
                "(before setting up its files) (TORQUE JOB_EXEC_FAIL1, -1)")),
    (-8, Ending("-8", message="the batch node could not execute the job's "
                "command (TORQUE JOB_EXEC_CMDFAIL, -8)")),
    (-99, Ending("-99", message="the batch system could not run the job "
                 "(unknown TORQUE code -99)")),
    # 256 + a signal: the batch system's kill, or the job's own crash.
    (271, Ending("271", signal=15, cancelled=True,
                 message="the batch system killed the job (SIGTERM)")),
    (265, Ending("265", signal=9, cancelled=True,
                 message="the batch system killed the job (SIGKILL)")),
    (267, Ending("267", signal=11, message="the job was killed by SIGSEGV")),
    (256 + 99, Ending("355", signal=99,
                      message="the job was killed by signal 99")),
])
def test_torque_exit_status(status: int, expected: Ending):
    assert torque_ending(status) == expected


def test_torque_codes_are_negative_and_named_once():
    assert sorted(TORQUE_EXEC_CODES) == list(range(-14, 0))
    names = [code.name for code in TORQUE_EXEC_CODES.values()]
    assert len(set(names)) == len(names)
    assert all(name.startswith("JOB_EXEC_") for name in names)
    # Only the walltime code is a job stopped at its limit.
    assert [n for n, c in TORQUE_EXEC_CODES.items() if c.timed_out] == [-11]
    assert not any(torque_ending(n).cancelled for n in TORQUE_EXEC_CODES)


def _recorded_torque_job(case: str) -> BatchJob:
    path = shared_file(f"torque/qstat-f_torque-4.2.8_{case}.txt")
    ((batch_id, attributes),) = parse_qstat_full(path.read_text()).items()
    return batch_job(batch_id, attributes)


def test_recorded_torque_job_that_succeeded():
    job = _recorded_torque_job("success")
    assert (job.state, job.phase, job.exit_status) == ("C", None, 0)
    assert job.exit_status is not None
    ending = torque_ending(job.exit_status)
    # Nothing the batch system stopped: the job folder's results make
    # it COMPLETED.
    assert ending == Ending("0", exit_status=0)


def test_recorded_torque_job_that_ran_out_of_walltime():
    # Asked 00:00:01, ran 14 s: TORQUE's JOB_EXEC_OVERLIMIT_WT (-11).
    job = _recorded_torque_job("failure")
    assert (job.state, job.phase, job.exit_status) == ("C", None, -11)
    assert job.exit_status is not None
    ending = torque_ending(job.exit_status)
    # Stopped for its walltime, as Slurm's TIMEOUT: the runner ends it
    # ABORTED with this message.
    assert ending == Ending("-11", timed_out=True,
                            message="walltime limit exceeded")
    assert TORQUE_EXEC_CODES[-11].name == "JOB_EXEC_OVERLIMIT_WT"
    slurm = slurm_ending({"JobState": "TIMEOUT", "ExitCode": "0:15"})
    assert slurm is not None
    assert (slurm.timed_out, slurm.cancelled) == (
        ending.timed_out, ending.cancelled)


@pytest.mark.parametrize("case", ["queued", "running"])
def test_recorded_torque_job_not_ended_has_no_exit_status(case: str):
    job = _recorded_torque_job(case)
    assert job.phase in {"QUEUED", "EXECUTING"}
    assert job.exit_status is None


def test_bare_ids():
    assert bare_id("1207.headnode.example.org") == "1207"
    assert bare_id("46") == "46"


# -- how an ended batch job becomes a phase -----------------------------------
JOB = RunnerJob(job_id="abc", phase=BackendPhase.EXECUTING, backend_id="12",
                start_time=datetime(2026, 11, 24, 8, 0, tzinfo=UTC),
                folder=JobFolder(Path("/data/jobs/abc")))
DONE = BatchJob(batch_id="12", state="C", phase=None, host="node3",
                max_rss_kb=2048, wall_s=61, cpu_s=55)


def test_walltime_and_cancel_end_aborted():
    timed_out = ended_status(JOB, DONE, torque_ending(-11))
    # Stopped by the batch system: the service ends it ABORTED (unless
    # the worker left its results).
    assert (timed_out.ended, timed_out.stopped) == (True, True)
    assert timed_out.message == ("walltime limit exceeded (batch job 12, "
                                 "-11)")
    cancelled = ended_status(JOB, DONE, slurm_ending(
        {"JobState": "CANCELLED", "ExitCode": "0:15"}))
    assert cancelled.stopped
    assert cancelled.signal == 15


def test_an_ending_without_a_word_is_left_to_the_job_folder():
    status = ended_status(JOB, DONE, torque_ending(3))
    # The service reads the folder: results -> COMPLETED, error.json ->
    # ERROR with the worker's message, else this message.
    assert (status.ended, status.stopped) == (True, False)
    assert status.message == ("batch job 12 ended without a result (exit "
                              "status 3); see the log")
    assert (status.max_rss_kb, status.wall_s, status.cpu_s) == (2048, 61, 55)
    assert status.host == "node3"


def test_a_vanished_job_without_any_record():
    status = ended_status(JOB, None, None)
    assert status.ended
    assert status.message == ("batch job 12 is gone from the batch system "
                              "without a result; see the log")


def test_memory_follows_the_decompressed_image(tmp_path):
    """A compressed upload asks for memory by what it inflates to."""
    runner = PbsRunner(PbsSettings(pbs_memory_base=2**20,
                                   pbs_memory_factor=2.0))
    folder = JobFolder(tmp_path / "abc")
    folder.inputs.mkdir(parents=True)
    header = "".join(c.ljust(80) for c in (
        "SIMPLE  =                    T", "BITPIX  =                   16",
        "NAXIS   =                    2", "NAXIS1  =                 1024",
        "NAXIS2  =                 1024", "END")).encode().ljust(2880)
    image = header + bytes(2 * 2**20)  # 2 MiB of pixels, 2880 of header
    (folder.inputs / "image.fits.gz").write_bytes(gzip.compress(image))
    job = RunnerJob("abc", BackendPhase.QUEUED, "", None, folder)
    spec = WorkerSpec(job_id="abc", image="inputs/image.fits.gz")
    assert runner._memory_mb(job, spec) == math.ceil(
        (2**20 + 2 * len(image)) / 2**20)
    by_url = WorkerSpec(job_id="abc", image="https://example.org/x.fits",
                        decompressed_limit=2**30)
    assert runner._memory_mb(job, by_url) == 1 + 2048
