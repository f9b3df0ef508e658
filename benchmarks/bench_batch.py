"""100 jobs through the UWS interface: the PBS runner against the local one.

What it does, in one command (``python benchmarks/bench_batch.py``):

1. Uses the batch system of ``$SLURM_CONF`` or, without one, starts a
   single-node Slurm with ``scripts/slurm-start`` (as root) in a
   temporary folder and stops it at the end.  Its CPUs (jobs at once)
   are read with ``sinfo``; the local runner gets the same number of
   slots (``qfits.max_running``), so both run the same jobs on the same
   cores.
2. Simulates one small exposure (``--size`` pixels square, one CCD),
   which every job uploads; the worker is the real one (the whole
   assessment and product set), or with ``--sleep S`` a command that
   sleeps S seconds and writes a one-product manifest (the runners'
   own overhead alone).
3. For each runner (``pbs``, then ``local``): starts the service in this
   process (the Pyramid app behind waitress on a free port of
   127.0.0.1, SQLite, ``qfits.poll_interval`` as given), POSTs ``--jobs``
   jobs with ``PHASE=RUN`` from 4 client threads as fast as it can,
   waits for all of them to end (blocking WAIT), and reads each job's
   ``startTime`` and ``endTime`` (the service's record: when its poller
   saw the job run and end) against the client's clock at the POST (the
   same machine): median and 90th percentile of POST → EXECUTING and
   POST → COMPLETED, and the makespan.
4. For the PBS runner, every batch command is run through a small
   logging shim (``qfits.pbs_bin`` = a folder of scripts that append
   a line to a log, then ``exec`` the real command): calls per minute
   of each command, over the whole run and in windows of 10 s against
   the number of jobs active in that window (the target: ``qstat``
   calls per minute do not grow with the number of active jobs).

Prints a table; ``--json FILE`` writes every figure.  Nothing is kept.
See ``benchmarks/README.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path
from typing import Any

import requests
import waitress
from lxml import etree

from qualityfits.datasets import SimulationParams, write_exposure
from uws.app import make_app
from uws.schema import upgrade
from uws.settings import Settings

ROOT = Path(__file__).resolve().parents[1]
UWS = "{http://www.ivoa.net/xml/UWS/v1.0}"
COMMANDS = ("qsub", "qstat", "qdel", "qrls", "scontrol")
FINAL = {"COMPLETED", "ERROR", "ABORTED"}

SLEEPER = """\
#!/bin/sh
# benchmark worker: sleeps, then writes a one-product manifest
sleep {seconds}
mkdir -p "$1/results"
echo ok > "$1/results/ok.txt"
printf '%s' '{{"version": 2, "image": "bench.fits", "qualityfits": "bench", \
"n_extensions": 1, "failed_extensions": [], "flags": [], \
"products": [{{"id": "ok", "file": "ok.txt", "mime": "text/plain", \
"size": 3, "description": "bench"}}]}}' > "$1/results/manifest.json"
"""


def shims(folder: Path, log: Path) -> Path:
    """Write logging shims of the batch commands into ``folder``."""
    folder.mkdir()
    for name in COMMANDS:
        real = shutil.which(name)
        if real is None:
            continue
        shim = folder / name
        shim.write_text(f'#!/bin/sh\necho "$(date +%s.%N) {name}" >> '
                        f'{log}\nexec {real} "$@"\n')
        shim.chmod(0o755)
    return folder


class Service:
    """The app behind waitress in a thread of this process."""

    def __init__(self, settings: Settings) -> None:
        upgrade(settings.database_url)  # the schema, as scripts/serve
        self.app = make_app(settings)
        self.server: Any = waitress.create_server(
            self.app, host="127.0.0.1", port=0, threads=32,
            max_request_body_size=10**9)
        self.url = f"http://127.0.0.1:{self.server.effective_port}"
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        """Stop the server, then the job service."""
        self.server.task_dispatcher.shutdown()
        # Waitress has no public call that closes every socket.
        channels = self.server._map  # noqa: SLF001
        self.server.trigger.pull_trigger(lambda: [
            c.close() for c in list(channels.values())])
        self.thread.join(timeout=10)
        self.app.registry.job_service.close()


def _instant(job: Any, name: str) -> float | None:
    element = job.find(f"{UWS}{name}")
    if element is None or not element.text:
        return None
    return datetime.fromisoformat(element.text).timestamp()


def run_jobs(settings: Settings, image: Path, n_jobs: int,
             clients: int = 4) -> dict[str, Any]:
    """POST ``n_jobs`` jobs, wait for all, return the per-job times."""
    service = Service(settings)
    data = image.read_bytes()
    posted: dict[str, float] = {}
    lock = threading.Lock()

    def post(_: int) -> None:
        with requests.Session() as http:
            when = time.time()
            r = http.post(f"{service.url}/jobs", data={"PHASE": "RUN"},
                          files={"image": ("image.fits", data)},
                          allow_redirects=False)
            r.raise_for_status()
            with lock:
                posted[r.headers["Location"]] = when

    start = time.time()
    try:
        with ThreadPoolExecutor(clients) as pool:
            list(pool.map(post, range(n_jobs)))
        posting = time.time() - start
        jobs: dict[str, Any] = {}
        with requests.Session() as http:
            for url in posted:
                while True:
                    job = etree.fromstring(http.get(
                        url, params={"WAIT": 30}).content)
                    if job.findtext(f"{UWS}phase") in FINAL:
                        jobs[url] = job
                        break
        makespan = time.time() - start
    finally:
        service.stop()
    phases = Counter(str(j.findtext(f"{UWS}phase")) for j in jobs.values())
    to_run = [s - posted[u] for u, j in jobs.items()
              if (s := _instant(j, "startTime")) is not None]
    to_end = [e - posted[u] for u, j in jobs.items()
              if (e := _instant(j, "endTime")) is not None]
    active = [(posted[u], _instant(j, "endTime") or time.time())
              for u, j in jobs.items()]
    return {"jobs": n_jobs, "phases": dict(phases), "posting_s": posting,
            "makespan_s": makespan, "to_executing": _stats(to_run),
            "to_completed": _stats(to_end), "start": start,
            "active": active}


def _stats(values: list[float]) -> dict[str, float]:
    if not values:
        return {}
    ordered = sorted(values)
    return {"median": statistics.median(ordered),
            "p90": ordered[int(0.9 * (len(ordered) - 1))],
            "max": ordered[-1]}


def command_rates(log: Path, run: dict[str, Any],
                  window: float = 10.0) -> dict[str, Any]:
    """Calls per minute of each command, overall and per window."""
    calls = [(float(t), name) for t, name in
             (line.split() for line in log.read_text().splitlines())]
    start, end = run["start"], run["start"] + run["makespan_s"]
    minutes = (end - start) / 60
    overall = {name: round(count / minutes, 1) for name, count in
               Counter(n for t, n in calls if start <= t <= end).items()}
    windows = []
    edge = start
    # Whole windows only: a short last one would make a rate of 1 call.
    while edge + window <= end:
        upper = edge + window
        active = sum(1 for a, b in run["active"] if a < upper and b > edge)
        qstat = sum(1 for t, n in calls if n == "qstat" and edge <= t < upper)
        windows.append({"t": round(edge - start), "active": active,
                        "qstat_per_min": round(qstat * 60 / (upper - edge),
                                               1)})
        edge = upper
    return {"per_minute": overall, "totals": dict(Counter(
        n for t, n in calls if start <= t <= end)), "windows": windows}


def _cpus() -> int:
    out = subprocess.run(["sinfo", "-h", "-o", "%c"], capture_output=True,
                         text=True, check=True).stdout.split()
    return int(out[0])


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; return the exit status."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--jobs", type=int, default=100)
    parser.add_argument("--size", type=int, default=1024,
                        help="pixels on a side of the simulated image")
    parser.add_argument("--sleep", type=float, default=None,
                        help="a worker that sleeps this long instead of "
                        "the real one")
    parser.add_argument("--poll-interval", type=float, default=1.0)
    parser.add_argument("--runners", default="pbs,local")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)

    work = Path(tempfile.mkdtemp(prefix="bench-batch-", dir="/tmp"))
    started_slurm = None
    try:
        if not os.environ.get("SLURM_CONF"):
            started_slurm = work / "slurm"
            conf = subprocess.run(
                [str(ROOT / "scripts" / "slurm-start"), str(started_slurm)],
                capture_output=True, text=True, check=True).stdout.strip()
            os.environ["SLURM_CONF"] = conf
        cpus = _cpus()
        image = write_exposure(work / "image.fits",
                               SimulationParams(shape=(args.size,
                                                       args.size)),
                               n_ccds=1, seed=5)
        worker = ""
        if args.sleep is not None:
            script = work / "sleeper.sh"
            script.write_text(SLEEPER.format(seconds=args.sleep))
            script.chmod(0o755)
            worker = str(script)
        log = work / "calls.log"
        log.touch()
        figures: dict[str, Any] = {"cpus": cpus, "jobs": args.jobs,
                                   "size": args.size, "sleep": args.sleep,
                                   "poll_interval": args.poll_interval}
        for runner in args.runners.split(","):
            root = work / runner
            root.mkdir()
            ini = {"qfits.database_url": f"sqlite:///{root}/jobs.sqlite",
                   "qfits.job_dir": str(root / "jobs"),
                   "qfits.runner": runner, "qfits.ccd_jobs": "1",
                   "qfits.poll_interval": str(args.poll_interval)}
            # The same slots: the local runner's own setting, and the
            # PBS runner's (for its quote; Slurm's CPUs decide).
            ini["qfits.max_running" if runner == "local"
                else "qfits.pbs_slots"] = str(cpus)
            if worker:
                ini["qfits.worker_command"] = worker
            if runner == "pbs":
                ini["qfits.pbs_bin"] = str(shims(work / "bin", log))
            print(f"{runner}: {args.jobs} jobs ...", flush=True)
            run = run_jobs(Settings.from_ini(ini), image, args.jobs)
            if runner == "pbs":
                run["commands"] = command_rates(log, run)
            figures[runner] = run
        report(figures)
        if args.json:
            args.json.write_text(json.dumps(figures, indent=1,
                                            default=str))
    finally:
        if started_slurm is not None:
            subprocess.run([str(ROOT / "scripts" / "slurm-stop"),
                            str(started_slurm)], check=False)
        shutil.rmtree(work, ignore_errors=True)
    return 0


def report(fig: dict[str, Any]) -> None:
    """Print the figures."""
    what = (f"worker sleeping {fig['sleep']} s" if fig["sleep"] is not None
            else f"real worker, {fig['size']}x{fig['size']} image")
    print(f"\n{fig['jobs']} jobs, {what}, {fig['cpus']} slots, poll every "
          f"{fig['poll_interval']} s")
    runners = [r for r in ("pbs", "local") if r in fig]
    print(f"{'':34}" + "".join(f"{r:>12}" for r in runners)
          + ("    pbs/local" if len(runners) == 2 else ""))
    rows = [("POST -> EXECUTING, median [s]", "to_executing", "median"),
            ("POST -> EXECUTING, p90 [s]", "to_executing", "p90"),
            ("POST -> COMPLETED, median [s]", "to_completed", "median"),
            ("POST -> COMPLETED, p90 [s]", "to_completed", "p90"),
            ("makespan [s]", "makespan_s", None),
            ("posting the jobs [s]", "posting_s", None)]
    for label, key, sub in rows:
        values = [fig[r][key][sub] if sub else fig[r][key] for r in runners]
        line = f"{label:34}" + "".join(f"{v:12.2f}" for v in values)
        if len(values) == 2 and values[1]:
            line += f"{values[0] / values[1]:13.2f}"
        print(line)
    for r in runners:
        print(f"{r}: phases {fig[r]['phases']}")
    if "pbs" in fig:
        commands = fig["pbs"]["commands"]
        print(f"batch commands per minute: {commands['per_minute']}; "
              f"totals {commands['totals']}")
        print("qstat calls per minute by 10 s window (active jobs):")
        print("  " + ", ".join(f"{w['qstat_per_min']:.0f} ({w['active']})"
                               for w in commands["windows"]))


if __name__ == "__main__":
    sys.exit(main())
