"""The batch-output parser on samples of both qstat dialects."""

from __future__ import annotations

from pathlib import Path

import pytest

from pbs_bridge.qstat import (
    STATE_PHASES,
    BatchOutputError,
    batch_job,
    duration_s,
    memory_kb,
    parse_qstat_full,
    parse_qsub,
    walltime,
)

DATA = Path(__file__).resolve().parent / "data"
UWS_PHASES = {"QUEUED", "HELD", "EXECUTING", "SUSPENDED"}


def _jobs(name: str) -> dict[str, dict[str, str]]:
    return parse_qstat_full((DATA / name).read_text())


def test_slurm_wrapper_sample():
    jobs = _jobs("qstat-f_slurm-wlm-torque.txt")
    assert list(jobs) == ["46", "49", "4"]
    running, held, done = (batch_job(i, jobs[i]) for i in jobs)
    assert (running.state, running.phase) == ("R", "EXECUTING")
    assert running.host == "vm"
    assert running.queue == "batch"
    # The wrapper has no H: a held job is Q with priority 0.
    assert (held.state, held.phase) == ("Q", "HELD")
    # C for success and failure alike; no exit_status line.
    assert (done.state, done.phase, done.exit_status) == ("C", None, None)
    assert done.wall_s is None


def test_torque_sample():
    jobs = _jobs("qstat-f_torque-format.txt")
    assert list(jobs) == ["1207.headnode.example.org",
                          "1208.headnode.example.org",
                          "1209.headnode.example.org"]
    done = jobs["1207.headnode.example.org"]
    # The wrapped value is joined.
    assert done["Variable_List"].endswith(
        "PBS_O_LANG=C,PBS_O_LOGNAME=qfits,PBS_O_WORKDIR=/data/qfits/jobs/"
        "3f2a9c")
    job = batch_job("1207.headnode.example.org", done)
    assert (job.phase, job.exit_status) == (None, 0)
    assert job.host == "node07"
    assert (job.max_rss_kb, job.wall_s, job.cpu_s) == (1204316, 58, 101)
    held = batch_job("1208", jobs["1208.headnode.example.org"])
    assert held.phase == "HELD"
    running = batch_job("1209", jobs["1209.headnode.example.org"])
    assert (running.phase, running.host, running.wall_s) == (
        "EXECUTING", "node03", 91)


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
    assert parse_qstat_full("") == {}


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
