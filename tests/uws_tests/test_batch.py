"""The PBS runner end to end: the UWS interface over a real batch system.

A real single-node Slurm with its PBS/TORQUE commands (qsub, qstat,
qdel, qhold, qrls; ``scripts/slurm-start``, started by ``scripts/test``)
runs the jobs of a real service (``qfits.runner = pbs``) on loopback.
Every test goes through HTTP and checks the batch system's own view
with its own commands (``scontrol show job``).  Where a job must run a
while, the worker command is a script that sleeps before it runs the
real worker.
"""

from __future__ import annotations

import gzip
import re
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from lxml import etree
from testkit import require_slurm, shared_file
from uwskit import (
    QF,
    UWS,
    LiveService,
    error_summary,
    job_xml,
    wait_for,
)

from pbs_bridge.batch import parse_scontrol

pytestmark = pytest.mark.batch

Starter = Callable[..., LiveService]
FINAL = {"COMPLETED", "ERROR", "ABORTED"}


# -- helpers ------------------------------------------------------------------
@pytest.fixture
def slurm(monkeypatch: pytest.MonkeyPatch) -> str:
    """The test batch system's SLURM_CONF, exported for every command."""
    conf = require_slurm()
    monkeypatch.setenv("SLURM_CONF", conf)
    return conf


@pytest.fixture
def pbs(start_service: Starter, slurm: str) -> Starter:
    """Start a service whose runner is the batch system."""
    del slurm

    def start(**overrides: Any) -> LiveService:
        return start_service(runner="pbs", **overrides)

    return start


def run(*argv: str) -> subprocess.CompletedProcess[str]:
    """Run a batch command (as an operator of the cluster would)."""
    return subprocess.run(argv, capture_output=True, text=True, check=False,
                          timeout=60)


def batch_job(batch_id: str) -> dict[str, str]:
    """The batch system's record of a job (``scontrol show job -o``)."""
    done = run("scontrol", "show", "job", "-o", batch_id)
    assert done.returncode == 0, done.stderr
    return parse_scontrol(done.stdout)[batch_id]


def batch_id_of(live: LiveService, url: str) -> str:
    """The batch id jobInfo shows (``qf:backendId``)."""
    element = job_xml(live, url).find(
        f"{UWS}jobInfo/{QF}processing/{QF}backendId")
    assert element is not None, "no batch id in jobInfo"
    assert str(element.text).isdigit(), element.text
    return str(element.text)


def processing(live: LiveService, url: str) -> dict[str, str]:
    """jobInfo's processing fields (host, queue, backendId, ...)."""
    info = job_xml(live, url).find(f"{UWS}jobInfo/{QF}processing")
    assert info is not None
    return {etree.QName(e).localname: str(e.text) for e in info
            if etree.QName(e).localname != "steps"}


def wait_batch_state(batch_id: str, states: set[str],
                     timeout: float) -> dict[str, str]:
    """Wait until the batch system shows the job in one of ``states``."""
    wait_for(lambda: batch_job(batch_id)["JobState"] in states, timeout,
             f"batch job {batch_id} in {sorted(states)}")
    return batch_job(batch_id)


def slow_worker(tmp_path: Path, seconds: float) -> str:
    """A worker command that sleeps, then runs the real worker."""
    path = tmp_path / "slow-worker.sh"
    path.write_text(f"#!/bin/sh\necho slow-worker: sleeping {seconds} s\n"
                    f"sleep {seconds}\n"
                    f'exec {sys.executable} -m pbs_bridge.worker "$@"\n')
    path.chmod(0o755)
    return str(path)


def moved(url: str, live: LiveService) -> str:
    """The URL of a job on another (restarted) service."""
    return f"{live.jobs}/{url.rsplit('/', 1)[1]}"


@pytest.fixture
def blocker(tmp_path: Path, slurm: str) -> Iterator[Callable[[], str]]:
    """Occupy every CPU of the node with someone else's batch job."""
    del slurm
    started: list[str] = []

    def block() -> str:
        cpus = run("sinfo", "-h", "-o", "%c").stdout.split()[0]
        script = tmp_path / "blocker.sh"
        script.write_text("#!/bin/sh\nsleep 900\n")
        done = run("qsub", "-N", "blocker", "-l",
                   f"nodes=1:ppn={cpus},walltime=00:20:00",
                   "-o", "/dev/null", "-e", "/dev/null", str(script))
        assert done.returncode == 0, done.stdout + done.stderr
        started.append(done.stdout.strip())
        wait_batch_state(started[-1], {"RUNNING"}, 30)
        return started[-1]

    yield block
    for batch_id in started:
        run("qdel", batch_id)




# -- a real image to COMPLETED ------------------------------------------------
@pytest.mark.realdata
def test_a_real_image_completes_on_the_batch_system(pbs: Starter,
                                                    tmp_path: Path):
    packed = shared_file("ntt_emmi_R_galaxies.fits.gz")
    image = tmp_path / "ntt.fits"
    with gzip.open(packed) as src, image.open("wb") as dst:
        shutil.copyfileobj(src, dst)
    live = pbs()
    url = live.run_image(image, EXECUTIONDURATION="1800")
    assert live.wait_phase(url, FINAL, timeout=600) == "COMPLETED", \
        live.http.get(f"{url}/error").text
    job = job_xml(live, url)
    info = processing(live, url)
    batch_id = info["backendId"]
    # jobInfo: what the batch system and the worker report.
    assert info["host"] == socket.gethostname().split(".")[0]
    assert info["queue"] == "batch"
    assert int(info["maxRssKb"]) > 10_000
    assert float(info["wallSeconds"]) > 0
    # The batch system's view: our name, walltime, memory, log file.
    record = batch_job(batch_id)
    job_id = url.rsplit("/", 1)[1]
    job_dir = live.service.job_root / job_id
    assert record["JobName"] == f"qf-{job_id}"
    assert (record["JobState"], record["ExitCode"]) == ("COMPLETED", "0:0")
    assert record["TimeLimit"] == "00:30:00"
    size = (job_dir / "inputs" / "image" / image.name).stat().st_size
    expected_mb = -(-(512 * 2**20 + 2 * size) // 2**20)
    assert record["MinMemoryNode"] == f"{expected_mb}M"
    assert record["StdOut"] == str(job_dir / "worker.log")
    assert record["NumCPUs"] == "1"
    # Every result is served, with the size the job document gives.
    results = job.findall(f"{UWS}results/{UWS}result")
    ids = [r.get("id") for r in results]
    assert ids[0] == "summary"
    assert {"summary_fits", "catalogue", "weight", "flag", "mosaic",
            "archive", "log"} <= set(ids)
    for result in results:
        href = str(result.get("{http://www.w3.org/1999/xlink}href"))
        r = live.http.get(href)
        assert r.status_code == 200, href
        assert len(r.content) == int(str(result.get("size"))), href
    assert "step metrics" in (job_dir / "worker.log").read_text()


# -- ABORT --------------------------------------------------------------------
def test_abort_of_a_queued_job(pbs: Starter, blocker: Callable[[], str],
                               sample_image: Path):
    blocker()
    live = pbs()
    url = live.run_image(sample_image)
    batch_id = batch_id_of(live, url)
    assert batch_job(batch_id)["JobState"] == "PENDING"
    time.sleep(1.0)  # several poll cycles: it stays queued
    assert live.phase(url) == "QUEUED"
    r = live.http.post(f"{url}/phase", data={"PHASE": "ABORT"},
                       allow_redirects=False)
    assert r.status_code == 303
    assert live.phase(url) == "ABORTED"
    assert wait_batch_state(batch_id, {"CANCELLED"}, 10)["ExitCode"] == \
        "0:0"
    job_dir = live.service.job_root / url.rsplit("/", 1)[1]
    assert not (job_dir / "progress.json").exists()  # it never ran
    assert job_xml(live, url).find(f"{UWS}errorSummary") is None


def test_abort_of_a_running_job(pbs: Starter, tmp_path: Path,
                                sample_image: Path):
    live = pbs(worker_command=slow_worker(tmp_path, 300))
    url = live.run_image(sample_image)
    assert live.wait_phase(url, {"EXECUTING"}, timeout=30) == "EXECUTING"
    batch_id = batch_id_of(live, url)
    assert batch_job(batch_id)["JobState"] == "RUNNING"
    r = live.http.post(f"{url}/phase", data={"PHASE": "ABORT"},
                       allow_redirects=False)
    assert r.status_code == 303
    assert live.phase(url) == "ABORTED"
    # qdel: the batch job and its processes are gone.
    wait_batch_state(batch_id, {"CANCELLED"}, 20)
    assert run("squeue", "-h", "-j", batch_id).stdout.strip() == ""
    time.sleep(1.0)  # later polls see the batch job ended: no change
    assert live.phase(url) == "ABORTED"
    assert job_xml(live, url).find(f"{UWS}errorSummary") is None


def test_deleting_a_running_job_stops_its_batch_job(pbs: Starter,
                                                    tmp_path: Path,
                                                    sample_image: Path):
    live = pbs(worker_command=slow_worker(tmp_path, 300))
    url = live.run_image(sample_image)
    assert live.wait_phase(url, {"EXECUTING"}, timeout=30) == "EXECUTING"
    batch_id = batch_id_of(live, url)
    r = live.http.delete(url, allow_redirects=False)
    assert r.status_code == 303
    assert live.http.get(url).status_code == 404
    wait_batch_state(batch_id, {"CANCELLED"}, 20)
    assert not (live.service.job_root / url.rsplit("/", 1)[1]).exists()


# -- failures -----------------------------------------------------------------
def test_a_failing_job_ends_in_error_with_the_workers_message(
        pbs: Starter, noise_image: Path):
    live = pbs()
    url = live.run_image(noise_image)
    assert live.wait_phase(url, FINAL, timeout=120) == "ERROR"
    kind, detail, message = error_summary(job_xml(live, url))
    assert (kind, detail) == ("fatal", "true")
    assert "no star usable for the PSF" in message
    job_dir = live.service.job_root / url.rsplit("/", 1)[1]
    worker_said = (job_dir / "error.json").read_text()
    assert "no star usable for the PSF" in worker_said
    record = batch_job(batch_id_of(live, url))
    assert record["JobState"] == "FAILED"
    assert record["ExitCode"] != "0:0"
    assert "step psf: failed" in live.http.get(f"{url}/error").text


def test_a_worker_that_dies_without_a_word(pbs: Starter, tmp_path: Path,
                                           sample_image: Path):
    # Neither results nor an error document: the batch system's exit
    # status is the only clue.
    crasher = tmp_path / "crasher.sh"
    crasher.write_text("#!/bin/sh\necho crasher: exit 7\nexit 7\n")
    crasher.chmod(0o755)
    live = pbs(worker_command=str(crasher))
    url = live.run_image(sample_image)
    assert live.wait_phase(url, FINAL, timeout=60) == "ERROR"
    batch_id = batch_id_of(live, url)
    _, _, message = error_summary(job_xml(live, url))
    assert message == (f"batch job {batch_id} ended without a result "
                       "(exit status 7); see the log")
    assert "crasher: exit 7" in live.http.get(f"{url}/results/log").text


def test_a_batch_job_gets_the_environment_named(
        pbs: Starter, tmp_path: Path, sample_image: Path,
        monkeypatch: pytest.MonkeyPatch):
    # The job has its login environment, the variables of
    # qfits.pbs_environment and its job id: nothing else of the service.
    monkeypatch.setenv("QF_GIVEN", "given:value")
    monkeypatch.setenv("QF_KEPT", "kept")
    teller = tmp_path / "teller.sh"
    teller.write_text('#!/bin/sh\necho "id=$QFITS_JOB_ID '
                      'given=$QF_GIVEN kept=$QF_KEPT home=$HOME"\nexit 5\n')
    teller.chmod(0o755)
    live = pbs(worker_command=str(teller), pbs_environment="QF_GIVEN")
    url = live.run_image(sample_image)
    assert live.wait_phase(url, FINAL, timeout=60) == "ERROR"
    job_id = url.rsplit("/", 1)[1]
    home = Path.home()
    assert f"id={job_id} given=given:value kept= home={home}" in \
        live.http.get(f"{url}/results/log").text


def test_qsub_missing(pbs: Starter, tmp_path: Path, sample_image: Path):
    empty = tmp_path / "no-batch-commands"
    empty.mkdir()
    live = pbs(pbs_bin=str(empty))
    url = live.run_image(sample_image)
    assert live.phase(url) == "ERROR"
    kind, _, message = error_summary(job_xml(live, url))
    assert kind == "transient"
    assert message == ("the batch system refused the job: qsub not found "
                       f"in {empty} (qfits.pbs_bin)")


def test_qsub_refusing_the_job(pbs: Starter, sample_image: Path):
    live = pbs(pbs_queue="nosuchqueue")
    url = live.run_image(sample_image)
    assert live.phase(url) == "ERROR"
    _, _, message = error_summary(job_xml(live, url))
    # The batch system's own words.
    assert message.startswith("the batch system refused the job: qsub "
                              "failed (exit status 1): sbatch: error: "
                              "invalid partition specified: nosuchqueue")


def test_an_unsafe_path_never_reaches_qsub(pbs: Starter, tmp_path: Path,
                                           sample_image: Path):
    live = pbs(job_dir=str(tmp_path / "jobs; touch pwned"))
    url = live.run_image(sample_image)
    assert live.phase(url) == "ERROR"
    _, _, message = error_summary(job_xml(live, url))
    assert "refusing to pass" in message
    assert "only letters, digits and ._/+:- are safe" in message
    assert not Path("pwned").exists()


# -- durations ----------------------------------------------------------------
def test_execution_duration_overrun_is_aborted(pbs: Starter,
                                               tmp_path: Path,
                                               sample_image: Path):
    live = pbs(worker_command=slow_worker(tmp_path, 300))
    url = live.run_image(sample_image, EXECUTIONDURATION="3")
    assert live.wait_phase(url, FINAL, timeout=30) == "ABORTED"
    kind, _, message = error_summary(job_xml(live, url))
    assert kind == "fatal"
    assert message == ("execution duration of 3 s exceeded: the job was "
                       "stopped")
    batch_id = batch_id_of(live, url)
    # The walltime asked of the batch system (Slurm rounds up to a
    # minute), and the job stopped by the service's qdel.
    record = wait_batch_state(batch_id, {"CANCELLED"}, 20)
    assert record["TimeLimit"] == "00:01:00"


@pytest.mark.slow
def test_walltime_reached_while_the_service_is_down(pbs: Starter,
                                                    tmp_path: Path,
                                                    sample_image: Path):
    # Down, the service cannot stop the job: the batch system does, at
    # the walltime, and the service tells so when it is back.
    live = pbs(worker_command=slow_worker(tmp_path, 600))
    url = live.run_image(sample_image, EXECUTIONDURATION="60")
    assert live.wait_phase(url, {"EXECUTING"}, timeout=30) == "EXECUTING"
    batch_id = batch_id_of(live, url)
    live.stop()
    wait_batch_state(batch_id, {"TIMEOUT"}, 150)
    again = pbs(worker_command=slow_worker(tmp_path, 600))
    url = moved(url, again)
    assert again.wait_phase(url, FINAL, timeout=10) == "ABORTED"
    kind, _, message = error_summary(job_xml(again, url))
    assert kind == "fatal"
    assert message == ("the batch system stopped the job at its walltime "
                       f"(batch job {batch_id}, TIMEOUT)")
    assert "DUE TO TIME LIMIT" in again.http.get(f"{url}/results/log").text


# -- HELD ---------------------------------------------------------------------
def test_a_held_job_is_shown_held_and_released_by_run(
        pbs: Starter, blocker: Callable[[], str], sample_image: Path):
    blocking = blocker()
    live = pbs()
    url = live.run_image(sample_image)
    batch_id = batch_id_of(live, url)
    # An operator holds it on the batch system.
    assert run("qhold", batch_id).returncode == 0
    assert live.wait_phase(url, {"HELD"}, timeout=10) == "HELD"
    # UWS: RUN on a HELD job lets it go (qrls).
    r = live.http.post(f"{url}/phase", data={"PHASE": "RUN"},
                       allow_redirects=False)
    assert r.status_code == 303
    assert live.phase(url) == "QUEUED"
    assert batch_job(batch_id)["Reason"] != "JobHeldAdmin"
    time.sleep(1.0)  # several poll cycles: not held again
    assert live.phase(url) == "QUEUED"
    run("qdel", blocking)
    assert live.wait_phase(url, FINAL, timeout=120) == "COMPLETED"
    assert batch_id_of(live, url) == batch_id  # never submitted twice


# -- the service or the batch system away -------------------------------------
def test_a_restarted_service_sees_its_batch_job_complete(
        pbs: Starter, tmp_path: Path, sample_image: Path):
    live = pbs(worker_command=slow_worker(tmp_path, 3))
    url = live.run_image(sample_image)
    assert live.wait_phase(url, {"EXECUTING"}, timeout=30) == "EXECUTING"
    batch_id = batch_id_of(live, url)
    live.stop()
    again = pbs(worker_command=slow_worker(tmp_path, 3))
    url = moved(url, again)
    assert again.phase(url) == "EXECUTING"
    assert again.wait_phase(url, FINAL, timeout=120) == "COMPLETED"
    assert batch_id_of(again, url) == batch_id
    ids = [r.get("id") for r in job_xml(again, url).iterfind(
        f"{UWS}results/{UWS}result")]
    assert "summary" in ids
    assert "archive" in ids


def test_a_batch_system_that_does_not_answer(
        pbs: Starter, tmp_path: Path, sample_image: Path,
        monkeypatch: pytest.MonkeyPatch, slurm: str):
    live = pbs(worker_command=slow_worker(tmp_path, 2), pbs_timeout="4",
               pbs_backoff_max="2")
    url = live.run_image(sample_image)
    assert live.wait_phase(url, {"EXECUTING"}, timeout=30) == "EXECUTING"
    # The controller becomes unreachable (the commands now ask a port
    # where nothing listens; they retry, then give up); the batch job
    # itself runs on and ends.
    dead = tmp_path / "dead-controller.conf"
    dead.write_text(re.sub(r"(?m)^SlurmctldPort=.*$", "SlurmctldPort=9",
                           Path(slurm).read_text()))
    monkeypatch.setenv("SLURM_CONF", str(dead))

    def availability() -> str:
        return str(live.http.get(f"{live.url}/availability").text)

    wait_for(lambda: "does not answer" in availability(), 20,
             "degraded availability")
    assert ("degraded: the batch system does not answer: qstat did not "
            "answer within 4 s (next try in") in availability()
    # Long after the job ended on the batch system: phase unchanged.
    time.sleep(10)
    assert live.phase(url) == "EXECUTING"
    monkeypatch.setenv("SLURM_CONF", slurm)
    assert live.wait_phase(url, FINAL, timeout=30) == "COMPLETED"
    wait_for(lambda: "accepting jobs" in availability(), 10,
             "availability back")
