"""Run the batch system's commands: qsub, qstat -f, qdel, qrls.

The one place that runs PBS/TORQUE commands, always as argument lists
with a timeout.  Every value that reaches ``qsub`` is checked against a
safe pattern first: Slurm's TORQUE wrapper builds an unquoted shell
command from its arguments (``../shared/docs/batch-pbs.md``, pitfall
9), so a space or a ``;`` in a path would break or inject.

`BatchSystem` knows nothing of UWS: it submits, lists, deletes and
releases batch jobs and says how one ended (`Ending`).  How a job
ended is read from TORQUE's ``exit_status`` when ``qstat -f`` shows
one (`torque_ending`: its own negative codes, `TORQUE_EXEC_CODES`,
and 256 + a signal number); Slurm's wrapper shows none, so when
Slurm's ``scontrol`` sits beside ``qsub`` the final state comes from
``scontrol show job -o`` (TIMEOUT, CANCELLED, the exit code and
signal).
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from pbs_bridge.qstat import (
    BatchJob,
    BatchOutputError,
    batch_job,
    parse_qstat_full,
    parse_qsub,
    walltime,
)

#: Values allowed on a ``qsub`` command line (names, paths, queues,
#: environment values such as a PATH).
SAFE_VALUE = re.compile(r"^[A-Za-z0-9._/+:-]+$")

#: ``qstat`` exit status when some job id is unknown (purged, never
#: existed): not a failure of the batch system.
QSTAT_UNKNOWN_JOB = 153


@dataclass(frozen=True)
class TorqueCode:
    """One of TORQUE's own (negative) ``exit_status`` values."""

    #: The name in TORQUE's ``src/include/pbs_job.h``.
    name: str
    #: What it means, in the words of an error message.
    meaning: str
    #: The batch system stopped the job at its walltime.
    timed_out: bool = False


#: TORQUE's ``exit_status`` values set by the batch system itself
#: (``JOB_EXEC_*`` of ``src/include/pbs_job.h``, TORQUE 4.2 to 6; -13
#: and -14 from TORQUE 6.1 on).  TORQUE requeues a job after the RETRY
#: codes, so ``qstat`` shows them only if it gave up.
TORQUE_EXEC_CODES: Mapping[int, TorqueCode] = {
    -1: TorqueCode("JOB_EXEC_FAIL1", "the batch node could not start the "
                   "job (before setting up its files)"),
    -2: TorqueCode("JOB_EXEC_FAIL2", "the batch node could not start the "
                   "job (after setting up its files)"),
    -3: TorqueCode("JOB_EXEC_RETRY", "the batch node could not start the "
                   "job (TORQUE would retry it)"),
    -4: TorqueCode("JOB_EXEC_INITABT", "the job was aborted when the batch "
                   "node's MOM restarted"),
    -5: TorqueCode("JOB_EXEC_INITRST", "the job was aborted when the batch "
                   "node's MOM restarted (checkpointed, not migrated)"),
    -6: TorqueCode("JOB_EXEC_INITRMG", "the job was aborted when the batch "
                   "node's MOM restarted (checkpointed, may migrate)"),
    -7: TorqueCode("JOB_EXEC_BADRESRT", "the job's restart from its "
                   "checkpoint failed"),
    -8: TorqueCode("JOB_EXEC_CMDFAIL", "the batch node could not execute "
                   "the job's command"),
    -9: TorqueCode("JOB_EXEC_STDOUTFAIL", "the batch node could not create "
                   "the job's output or error file"),
    -10: TorqueCode("JOB_EXEC_OVERLIMIT_MEM", "memory limit exceeded"),
    -11: TorqueCode("JOB_EXEC_OVERLIMIT_WT", "walltime limit exceeded",
                    timed_out=True),
    -12: TorqueCode("JOB_EXEC_OVERLIMIT_CPUT", "CPU time limit exceeded"),
    -13: TorqueCode("JOB_EXEC_RETRY_CGROUP", "the batch node could not set "
                    "up the job's cgroups (TORQUE would retry it)"),
    -14: TorqueCode("JOB_EXEC_RETRY_PROLOGUE", "the batch node's prologue "
                    "failed (TORQUE would retry the job)"),
}

#: TORQUE reports a job killed by a signal as 256 + the signal number.
TORQUE_SIGNAL_BASE = 256
#: The signals the batch system kills with (qdel, limits): a job ended
#: by one of them was stopped; by any other, it crashed.
_KILL_SIGNALS = frozenset({signal.SIGTERM, signal.SIGKILL})

#: Slurm final job states -> (timed out, cancelled, message).
_STOPPED = "the batch system stopped the job at its "
_SLURM_ENDINGS: Mapping[str, tuple[bool, bool, str]] = {
    "COMPLETED": (False, False, ""),
    "FAILED": (False, False, ""),
    "TIMEOUT": (True, False, _STOPPED + "walltime"),
    "DEADLINE": (True, False, _STOPPED + "deadline"),
    "CANCELLED": (False, True, "the job was cancelled on the batch system"),
    "PREEMPTED": (False, True, "the batch system preempted the job"),
    "OUT_OF_MEMORY": (False, False, "the job ran out of memory"),
    "NODE_FAIL": (False, False, "the batch node failed"),
    "BOOT_FAIL": (False, False, "the batch node failed to boot"),
}


class BatchError(RuntimeError):
    """A batch command that failed; the message is the system's own."""


@dataclass(frozen=True)
class Submission:
    """One ``qsub``: what runs, where its output goes, what it needs."""

    name: str
    script: Path
    #: Standard output and error of the job (one file).
    log: Path
    #: Wall-clock limit [s] (0: the queue's default).
    walltime_s: int = 0
    #: Memory request [MB] (0: the queue's default).
    memory_mb: int = 0
    cpus: int = 1
    queue: str = ""
    #: Environment variables passed with ``-v`` (names and values are
    #: checked like every other value).
    environment: Mapping[str, str] | None = None

    def argv(self, qsub: str) -> list[str]:
        """Return the ``qsub`` argument list (`BatchError` if unsafe)."""
        resources = [f"nodes=1:ppn={self.cpus}"]
        if self.walltime_s > 0:
            resources.append(f"walltime={walltime(self.walltime_s)}")
        if self.memory_mb > 0:
            resources.append(f"mem={self.memory_mb}mb")
        argv = [qsub, "-N", self.name, "-l", ",".join(resources),
                "-o", str(self.log), "-e", str(self.log)]
        if self.queue:
            argv += ["-q", self.queue]
        if self.environment:
            argv += ["-v", ",".join(f"{k}={v}" for k, v in
                                    self.environment.items())]
        argv.append(str(self.script))
        for value in (self.name, str(self.log), self.queue,
                      str(self.script), *(self.environment or {}),
                      *(self.environment or {}).values()):
            if value and not SAFE_VALUE.match(value):
                raise BatchError(
                    f"refusing to pass {value!r} to qsub: only letters, "
                    "digits and ._/+:- are safe on its command line")
        return argv


@dataclass(frozen=True)
class Ending:
    """How a batch job ended, as far as the batch system tells."""

    #: The batch system's own word (Slurm's JobState), or "".
    state: str = ""
    exit_status: int | None = None
    signal: int | None = None
    #: Stopped at its walltime (or deadline) by the batch system.
    timed_out: bool = False
    #: Cancelled (qdel) or preempted.
    cancelled: bool = False
    message: str = ""


def torque_ending(exit_status: int) -> Ending:
    """Interpret TORQUE's ``exit_status`` (see batch-pbs.md §7).

    0 to 255: the job's own exit status (the job folder decides).
    Negative: TORQUE's own code (`TORQUE_EXEC_CODES`); its walltime
    code (-11) is a job stopped at its walltime (``timed_out``).  Above
    256: killed by signal ``exit_status - 256``; SIGTERM and SIGKILL
    are the batch system's (``cancelled``), any other the job's crash.
    """
    state = str(exit_status)
    if exit_status < 0:
        code = TORQUE_EXEC_CODES.get(exit_status)
        if code is None:
            return Ending(state, message="the batch system could not run "
                          f"the job (unknown TORQUE code {exit_status})")
        if code.timed_out:
            return Ending(state, timed_out=True, message=code.meaning)
        return Ending(state, message=f"{code.meaning} (TORQUE "
                      f"{code.name}, {exit_status})")
    if exit_status > TORQUE_SIGNAL_BASE:
        number = exit_status - TORQUE_SIGNAL_BASE
        name = signal_name(number)
        if number in _KILL_SIGNALS:
            return Ending(state, signal=number, cancelled=True,
                          message=f"the batch system killed the job "
                          f"({name})")
        return Ending(state, signal=number,
                      message=f"the job was killed by {name}")
    return Ending(state, exit_status=exit_status)


def signal_name(number: int) -> str:
    """``15`` -> ``SIGTERM``; a number unknown here -> ``signal 99``."""
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


def parse_scontrol(text: str) -> dict[str, dict[str, str]]:
    """Parse ``scontrol show job -o`` (one ``Key=Value ...`` line a job)."""
    jobs: dict[str, dict[str, str]] = {}
    for line in text.splitlines():
        fields = dict(re.findall(r"(\S+?)=(\S*)", line))
        if "JobId" in fields:
            jobs[fields["JobId"]] = fields
    return jobs


def slurm_ending(fields: Mapping[str, str]) -> Ending | None:
    """Interpret one job of `parse_scontrol`; None while not final."""
    state = fields.get("JobState", "")
    if state not in _SLURM_ENDINGS:
        return None
    timed_out, cancelled, message = _SLURM_ENDINGS[state]
    code, _, sig = fields.get("ExitCode", "").partition(":")
    exit_status = int(code) if code.isdigit() else None
    signal = int(sig) if sig.isdigit() and int(sig) else None
    return Ending(state, exit_status=exit_status, signal=signal,
                  timed_out=timed_out, cancelled=cancelled, message=message)


def bare_id(batch_id: str) -> str:
    """``1207.server.example.org`` -> ``1207`` (qsub and qstat differ)."""
    return batch_id.split(".", 1)[0]


class BatchSystem:
    """The PBS/TORQUE commands of one batch server."""

    def __init__(self, bin_dir: str = "", timeout: float = 30.0) -> None:
        self.bin_dir = bin_dir
        self.timeout = timeout

    def command(self, name: str) -> str:
        """Return the path of a batch command (`BatchError` if missing)."""
        if self.bin_dir:
            path = Path(self.bin_dir) / name
            if path.is_file() and os.access(path, os.X_OK):
                return str(path)
            raise BatchError(f"{name} not found in {self.bin_dir} "
                             "(qfits.pbs_bin)")
        found = shutil.which(name)
        if found is None:
            raise BatchError(f"{name} not found on the PATH: is the batch "
                             "system's client installed?")
        return found

    def submit(self, job: Submission) -> str:
        """Submit; return the batch id exactly as ``qsub`` printed it."""
        done = self._run(job.argv(self.command("qsub")))
        if done.returncode != 0:
            raise BatchError(said("qsub", done))
        try:
            return parse_qsub(done.stdout)
        except BatchOutputError as exc:
            raise BatchError(str(exc)) from None

    def jobs(self, batch_ids: Sequence[str]) -> dict[str, BatchJob]:
        """Ask ``qstat -f`` once about these jobs; key: the bare id.

        Jobs the batch system no longer knows are absent.
        """
        if not batch_ids:
            return {}
        done = self._run([self.command("qstat"), "-f", *batch_ids])
        if done.returncode not in (0, QSTAT_UNKNOWN_JOB):
            raise BatchError(said("qstat", done))
        try:
            parsed = parse_qstat_full(done.stdout)
            return {bare_id(k): batch_job(k, v) for k, v in parsed.items()}
        except BatchOutputError as exc:
            raise BatchError(str(exc)) from None

    def endings(self, batch_ids: Sequence[str]) -> dict[str, Ending]:
        """How these ended jobs ended, by Slurm's ``scontrol``; key: bare id.

        Empty without Slurm (TORQUE's ``qstat -f`` has ``exit_status``)
        or when Slurm has purged the jobs.  One call: with one id, that
        job; with more, every job Slurm still knows.
        """
        try:
            scontrol = self.command("scontrol")
        except BatchError:
            return {}
        argv = [scontrol, "show", "job", "-o"]
        if len(batch_ids) == 1:
            argv.append(bare_id(batch_ids[0]))
        try:
            done = self._run(argv)
        except BatchError:
            return {}  # the job folders still decide
        if done.returncode != 0:
            return {}
        wanted = {bare_id(b) for b in batch_ids}
        out: dict[str, Ending] = {}
        for job_id, fields in parse_scontrol(done.stdout).items():
            ending = slurm_ending(fields) if job_id in wanted else None
            if ending is not None:
                out[job_id] = ending
        return out

    def delete(self, batch_id: str) -> None:
        """``qdel``; a job that has already ended is not an error."""
        done = self._run([self.command("qdel"), batch_id])
        if done.returncode != 0 and (done.stdout + done.stderr).strip():
            raise BatchError(said("qdel", done))

    def release(self, batch_id: str) -> None:
        """``qrls``: let a held job run."""
        done = self._run([self.command("qrls"), batch_id])
        if done.returncode != 0:
            raise BatchError(said("qrls", done))

    def _run(self, argv: list[str]) -> subprocess.CompletedProcess[str]:
        name = Path(argv[0]).name
        try:
            return subprocess.run(  # noqa: S603 - an argument list
                argv, capture_output=True, text=True, check=False,
                timeout=self.timeout, stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired:
            raise BatchError(f"{name} did not answer within "
                             f"{self.timeout:g} s") from None
        except OSError as exc:
            raise BatchError(f"cannot run {name}: {exc.strerror}") from None


def said(name: str, done: subprocess.CompletedProcess[str]) -> str:
    """Return the command's own words (stderr, else stdout), one line."""
    text = (done.stderr.strip() or done.stdout.strip()
            or "no message")
    lines = [ln.strip(" '") for ln in text.splitlines() if ln.strip(" '")]
    # Slurm's qsub wraps sbatch's words in a paragraph: keep those.
    errors = [ln for ln in lines if "error:" in ln]
    lines = errors or lines
    return f"{name} failed (exit status {done.returncode}): " + \
        " ".join(lines)[:1000]
