"""The batch-output parser on recordings of both qstat dialects.

Slurm's TORQUE wrapper: ``data/`` (recorded on the test cluster).
Real TORQUE 4.2.8: ``../shared/data/torque`` (four recordings of a
production cluster; provenance in its README), skipped where absent.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

import pytest
from testkit import shared_file

from pbs_bridge.qstat import (
    STATE_PHASES,
    BatchOutputError,
    batch_job,
    duration_s,
    exec_slots,
    memory_kb,
    parse_qstat_full,
    parse_qsub,
    qstat_time,
    walltime,
)

DATA = Path(__file__).resolve().parent / "data"
UWS_PHASES = {"QUEUED", "HELD", "EXECUTING", "SUSPENDED"}
TORQUE_CASES = ("queued", "running", "success", "failure")


def _jobs(name: str) -> dict[str, dict[str, str]]:
    return parse_qstat_full((DATA / name).read_text())


def torque_text(case: str) -> str:
    """One recording of ``../shared/data/torque`` (skip if absent)."""
    path = shared_file(f"torque/qstat-f_torque-4.2.8_{case}.txt")
    return path.read_text()


def torque_job(case: str) -> tuple[str, dict[str, str]]:
    jobs = parse_qstat_full(torque_text(case))
    assert len(jobs) == 1
    return next(iter(jobs.items()))


def torque_wrap(name: str, value: str, linesize: int = 77) -> str:
    """Lay out one attribute as TORQUE 4.2's ``qstat -f`` does.

    Written after ``prt_attr`` of TORQUE's ``src/cmds/qstat.c``: the
    value goes out comma-separated piece by piece; a piece that does not
    fit the line starts a new line (``\\n\\t``) unless it is the first,
    and is itself broken wherever the column passes ``linesize`` (the
    tab counts as 8 columns, a comma not at all).
    """
    out = f"    {name} = "
    column = len(name) + 7
    pieces = [p for p in value.split(",") if p]  # strtok: no empty ones
    for index, piece in enumerate(pieces):
        if len(piece) + column < linesize:
            out += piece
            column += len(piece)
        else:
            if index > 0:
                out += "\n\t"
                column = 9
            for char in piece:
                out += char
                column += 1
                if column > linesize:
                    out += "\n\t"
                    column = 8
        if index + 1 < len(pieces):
            out += ","
    return out


# -- Slurm's wrapper ----------------------------------------------------------
def test_slurm_wrapper_sample():
    jobs = _jobs("qstat-f_slurm-wlm-torque.txt")
    assert list(jobs) == ["46", "49", "4"]
    running, held, done = (batch_job(i, jobs[i]) for i in jobs)
    assert (running.state, running.phase) == ("R", "EXECUTING")
    assert running.host == "vm"
    assert (running.exec_host, running.slots) == ("vm/1", ("vm/1",))
    assert running.queue == "batch"
    # The wrapper has no H: a held job is Q with priority 0.
    assert (held.state, held.phase) == ("Q", "HELD")
    # C for success and failure alike; no exit_status line.
    assert (done.state, done.phase, done.exit_status) == ("C", None, None)
    assert done.wall_s is None
    # The wrapper prints no start_time (its mtime is the start).
    assert done.start_time is None


# -- real TORQUE 4.2.8 --------------------------------------------------------
@pytest.mark.parametrize("case", TORQUE_CASES)
def test_torque_recording_is_read_as_torque_wrote_it(case: str):
    # Laying the parsed values out again as TORQUE's qstat does gives
    # back the recording byte for byte: the wrapped values were joined
    # at the right places, with nothing inserted or lost.
    text = torque_text(case)
    job_id, attributes = torque_job(case)
    again = f"Job Id: {job_id}\n" + "".join(
        torque_wrap(name, value) + "\n"
        for name, value in attributes.items()) + "\n"
    if case == "queued":
        # The e-mail address was replaced by a longer one keeping the
        # recorded line break (README): TORQUE would break one later.
        again = again.replace("someone@exam\n\tple.org",
                              "someone@exa\n\tmple.org")
    assert again == text
    assert "\t" in text  # there were wrapped values to join
    assert not any("\t" in value for value in attributes.values())


def test_torque_queued():
    job_id, attributes = torque_job("queued")
    assert job_id == "515916.barnacle.ucsd.edu"
    # Broken in the middle of words, joined without a space.
    assert attributes["submit_args"] == (
        "-d /home/amam7564/data/mice-quinoa -V -m abe -M someone@example.org"
        " -j eo -e pita.deblur.error -l walltime=48:00:00,nodes=1:ppn=32,"
        "mem=250gb -N pita.deblur")
    assert attributes["Output_Path"] == (
        "barnacle.ucsd.edu:/home/amam7564/data/mice-quinoa/pita.deblur.error")
    assert attributes["Error_Path"] == attributes["Output_Path"]
    job = batch_job(job_id, attributes)
    # TORQUE's default priority is 0: queued, not held.
    assert attributes["Priority"] == "0"
    assert (job.state, job.phase) == ("Q", "QUEUED")
    assert (job.name, job.queue) == ("pita.deblur", "med4gb")
    assert (job.host, job.exec_host, job.slots, job.hosts) == ("", "", (), ())
    assert (job.exit_status, job.start_time) == (None, None)
    assert (job.max_rss_kb, job.wall_s, job.cpu_s) == (None, None, None)


def test_torque_running_on_four_slots():
    job_id, attributes = torque_job("running")
    job = batch_job(job_id, attributes)
    assert (job.batch_id, job.state, job.phase) == (
        "522059.barnacle.ucsd.edu", "R", "EXECUTING")
    assert (job.name, job.queue) == ("snakejob.qc_filter.298.sh", "short4gb")
    assert job.exec_host == "brncl-31/0+brncl-31/1+brncl-31/2+brncl-31/3"
    assert job.slots == ("brncl-31/0", "brncl-31/1", "brncl-31/2",
                         "brncl-31/3")
    assert (job.host, job.hosts) == ("brncl-31", ("brncl-31",))
    # resources_used.mem = 3539040kb, cput 00:11:16, walltime 00:03:04.
    assert (job.max_rss_kb, job.cpu_s, job.wall_s) == (3539040, 676, 184)
    assert job.start_time == datetime(2017, 10, 20, 4, 25, 5)  # noqa: DTZ001
    assert job.exit_status is None
    assert attributes["Walltime.Remaining"] == "14149"
    assert attributes["submit_args"] == (
        "-e /dev/null -o /dev/null -l nodes=1:ppn=4 -l mem=16 -l "
        "walltime=4:00:00 /projects/cfstrains_11115/combined_16S/.snakemake/"
        "tmp.viubek0t/snakejob.qc_filter.298.sh")
    variables = dict(item.split("=", 1) for item in
                     attributes["Variable_List"].split(","))
    assert variables["PBS_O_PATH"].split(":") == [
        "/home/jgsanders/miniconda/envs/oecophylla/bin",
        "/home/jgsanders/miniconda/bin", "/home/jgsanders/miniconda/bin",
        "/usr/lib64/qt-3.3/bin", "/usr/local/bin", "/bin", "/usr/bin",
        "/usr/local/sbin", "/usr/sbin", "/sbin", "/opt/gold/2.2.0.5/sbin",
        "/opt/gold/2.2.0.5/bin", "/opt/torque-4.2.8/bin",
        "/opt/torque-4.2.8/sbin", "/opt/maui-3.3.1/bin",
        "/home/jgsanders/bin", "/home/jgsanders/git_sw/git_bin",
        "/home/jgsanders/git_sw/script_bin", "/home/jgsanders/bin",
        "/home/jgsanders/git_sw/git_bin", "/home/jgsanders/git_sw/script_bin"]
    assert variables["PBS_O_WORKDIR"] == (
        "/projects/cfstrains_11115/combined_16S")
    assert variables["PBS_O_SERVER"] == "barnacle"
    assert len(variables) == 10


def test_torque_completed():
    job_id, attributes = torque_job("success")
    job = batch_job(job_id, attributes)
    assert (job.batch_id, job.state, job.phase, job.exit_status) == (
        "522081.barnacle.ucsd.edu", "C", None, 0)
    assert (job.host, job.slots) == ("brncl-31", ("brncl-31/4",))
    assert (job.max_rss_kb, job.cpu_s, job.wall_s) == (348800, 12, 27)
    assert job.start_time == datetime(2017, 10, 20, 4, 27, 38)  # noqa: DTZ001
    # The script path, broken in the middle of words, ends in the name.
    assert attributes["submit_args"].endswith(
        " /projects/finrisk/shotgun/analysis/20171006_finrisk/.snakemake/"
        "tmp.lpmhvgtt/" + job.name)
    variables = dict(item.split("=", 1) for item in
                     attributes["Variable_List"].split(","))
    assert variables["PBS_O_WORKDIR"] == (
        "/projects/finrisk/shotgun/analysis/20171006_finrisk")
    assert "/home/jgsanders/git_sw/script_bin" in (
        variables["PBS_O_PATH"].split(":"))


def test_torque_stopped_at_its_walltime():
    job_id, attributes = torque_job("failure")
    job = batch_job(job_id, attributes)
    assert (job.batch_id, job.name, job.state, job.phase) == (
        "522083.barnacle.ucsd.edu", "timeout.pbs", "C", None)
    assert job.exit_status == -11
    # Asked one second, ran 14: TORQUE's walltime code.
    assert duration_s(attributes["Resource_List.walltime"]) == 1
    assert (job.wall_s, job.cpu_s, job.max_rss_kb) == (14, 0, 3500)
    assert (job.host, job.queue) == ("brncl-31", "short4gb")
    assert job.start_time == datetime(2017, 10, 20, 4, 30, 41)  # noqa: DTZ001
    assert attributes["Output_Path"] == (
        "barnacle.ucsd.edu:/home/jgsanders/test/timeout.pbs.o522083")


# -- how wrapped values are joined --------------------------------------------
@pytest.mark.parametrize(("name", "value", "line_end"), [
    # The break falls right after a space: the space stays.
    ("submit_args", ("-N qf-3f2a9c -l walltime=01:00:00 -o /data/qfits/"
                     "job-420 -e /data/qfits/job-420/worker.log "
                     "/data/qfits/job-420/batch.sh"), "-e \n"),
    # ... and a line of the value that reads like an attribute.
    ("comment", ("held by the operator on Tue Nov 24 09:12:03 2026; see "
                 "the logs: queue_type = E"), " \n\tqueue_type = E\n"),
    # The rest of the value starts with a space, after the tab.
    ("comment", ("held by the operator on Tue Nov 24 09:12:03 2026; see "
                 "the log of queue_type = E"), "\n\t queue_type = E\n"),
    # A comma-piece ending exactly at the width: the comma goes on.
    ("Variable_List", ("PBS_O_HOME=/home/qfits,PBS_O_WORKDIR=/data/qfits/"
                       "jobs/3f2a9c0d-1e2f-4a5b-8c9d-7e6f5a4b3c2d/a,"
                       "PBS_O_LANG=C"), "/a\n\t,PBS_O_LANG=C\n"),
])
def test_wrapped_values_round_trip(name: str, value: str, line_end: str):
    text = (f"Job Id: 7.server\n{torque_wrap(name, value)}\n"
            "    job_state = R\n")
    assert line_end in text  # the case this value is here for
    assert parse_qstat_full(text)["7.server"] == {
        name: value, "job_state": "R"}


def test_state_table():
    # Every letter of batch-pbs.md §7, each to a phase or to "ended".
    assert set(STATE_PHASES) == set("QWTMHREBSUCFX")
    for letter in "QWTM":
        assert STATE_PHASES[letter] == "QUEUED"
    assert STATE_PHASES["H"] == "HELD"
    for letter in "REB":
        assert STATE_PHASES[letter] == "EXECUTING"
    for letter in "SU":
        assert STATE_PHASES[letter] == "SUSPENDED"
    for letter in "CFX":
        assert STATE_PHASES[letter] is None
    assert {p for p in STATE_PHASES.values() if p} <= UWS_PHASES
    held = batch_job("8.s", {"job_state": "H", "Hold_Types": "u"})
    assert held.phase == "HELD"


def test_unknown_state_is_an_error():
    with pytest.raises(BatchOutputError, match="unknown state 'Z'"):
        batch_job("7", {"job_state": "Z"})


@pytest.mark.parametrize(("text", "expected"), [
    ("3\n", "3"), ("3.server\n", "3.server"),
    ("  1207.headnode.example.org \n", "1207.headnode.example.org")])
def test_qsub_ids(text, expected):
    assert parse_qsub(text) == expected


@pytest.mark.parametrize("text", [
    "", "There was an error running the Slurm sbatch command.\n",
    "3\n4\n", "3;touch x\n"])
def test_qsub_refusals(text):
    with pytest.raises(BatchOutputError, match="qsub printed"):
        parse_qsub(text)


def test_malformed_qstat():
    with pytest.raises(BatchOutputError, match="before any 'Job Id:'"):
        parse_qstat_full("\tjob_state = R\n")
    with pytest.raises(BatchOutputError, match="unexpected line"):
        parse_qstat_full("Job Id:\t3\ngarbage\n")
    # The Slurm wrapper never wraps: a tab line is an attribute there.
    with pytest.raises(BatchOutputError, match="unexpected line"):
        parse_qstat_full("Job Id:\t3\n\tjob_state = R\n\tcontinued\n")
    # One job, one indentation.
    with pytest.raises(BatchOutputError, match="unexpected line"):
        parse_qstat_full("Job Id:\t3\n\tjob_state = R\n    queue = b\n")
    assert parse_qstat_full("") == {}
    assert parse_qstat_full("Job Id: 3.s\n    comment =\n") == {
        "3.s": {"comment": ""}}


def test_units():
    assert duration_s("71582788:15:00") == 71582788 * 3600 + 900
    assert duration_s("1:02") is None
    assert walltime(3600) == "01:00:00"
    assert walltime(30) == "00:00:30"
    assert walltime(100 * 3600 + 61) == "100:01:01"
    with pytest.raises(ValueError, match="positive"):
        walltime(0)
    assert memory_kb("1808kb") == 1808
    assert memory_kb("2gb") == 2 * 1024**2
    assert memory_kb("2048b") == 2
    assert memory_kb("lots") is None


def test_times():
    # C's ctime(): the day is padded with a space.
    assert qstat_time("Fri Oct  6 04:25:05 2017") == datetime(  # noqa: DTZ001
        2017, 10, 6, 4, 25, 5)
    assert qstat_time("Mon Nov 23 21:12:27 2026") == datetime(  # noqa: DTZ001
        2026, 11, 23, 21, 12, 27)
    assert qstat_time("Fri Feb 30 04:25:05 2017") is None
    assert qstat_time("Fri Okt 20 04:25:05 2017") is None
    assert qstat_time("1508473505") is None


def test_exec_slots():
    assert exec_slots("brncl-31/0+brncl-31/1") == ("brncl-31/0",
                                                   "brncl-31/1")
    # Later TORQUE writes ranges and lists.
    assert exec_slots("n1/0-2,5+n2/0") == ("n1/0", "n1/1", "n1/2", "n1/5",
                                           "n2/0")
    assert exec_slots("") == ()
    assert exec_slots("node7") == ("node7",)
