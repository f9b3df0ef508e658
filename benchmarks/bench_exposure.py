"""Time the assessment of a MegaCam-size exposure against SExtractor+PSFEx.

What it does, in one command (``python benchmarks/bench_exposure.py``):

1. Builds (once, then reuses) a simulated MegaCam-like exposure: 36
   extensions of 2048 x 4612 pixels, int16 (BITPIX 16, BZERO 32768, the
   0.7 GB of an Elixir ``p`` file) or float32 (1.36 GB), with
   `qualityfits.datasets.write_exposure`.  The file and the parameters it
   was made with (``<file>.json``) are kept in ``--workdir``
   (``build/bench/`` by default).
2. Runs ``qualityfits.assess(path, jobs=N)`` (cosmic-ray detection off:
   the reference programs have none) in a child process and
   measures, from the outside, the wall time, the CPU time (user + system)
   of the whole process tree, and the peak resident memory of the tree
   (``VmRSS`` of the child and all its descendants - the pool workers,
   the forkserver - sampled every 50 ms and summed; also the proportional
   ``Pss`` sum, which counts shared pages once, and the largest single
   process).
3. Runs the TERAPIX reference chain (``benchmarks/terapix.py``:
   SExtractor PSFEx feed, PSFEx, SExtractor full catalogue) on the same
   file, in the same command, measured the same way.
4. Prints a table of both, the ratios reference / ours, and PASS/FAIL
   against the targets of the issue: <= 30 s wall for 36 CCDs on 2 cores,
   >= 3x faster than SExtractor+PSFEx, peak RSS <= 1.5 GB.

The machine is shared and noisy: the speed target is a ratio of two runs
made in the same command, one right after the other, each on a file that
is in the page cache (it is read through once before each run).

CPU time: the child is started from a process that made itself a Linux
"child subreaper", so that descendants orphaned when the child exits (the
multiprocessing forkserver outlives its parent by a moment) are adopted
and waited for here; ``getrusage(RUSAGE_CHILDREN)`` before and after then
covers the whole tree, workers included.

With ``--products``, the whole product set is timed instead (the
products issue): a simulated master flat is built beside the exposure
(cached too); ours is ``assess(image, flat=...)`` plus
`qualityfits.products.write_products` (cosmic rays, weight/flag/CR maps,
tables, pictures, report page, archive); the reference chain gets
WeightWatcher first (weight and flag maps from the same flat and the
image), then SExtractor + PSFEx as above.  Targets: <= 60 s wall and
peak RSS <= 2 GB; the ratio is printed (no target).

Run ``python benchmarks/bench_exposure.py --help`` for the options; see
``benchmarks/README.md``.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import dataclasses
import hashlib
import json
import math
import os
import platform
import resource
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent

#: Targets of the issue (36 CCDs of 2048 x 4612 on 2 cores).
TARGET_WALL_S = 30.0
TARGET_SPEEDUP = 3.0
TARGET_RSS_BYTES = 1.5e9  # 1.5 GB (decimal), compared with the VmRSS sum
TARGET_CCDS = 36
TARGET_SHAPE = (4612, 2048)
TARGET_JOBS = 2
#: Targets of the products issue (whole product set, same exposure).
TARGET_PRODUCTS_WALL_S = 60.0
TARGET_PRODUCTS_RSS_BYTES = 2.0e9

#: Seed of the simulated exposure (the file depends on nothing else).
SEED = 20_260_611
#: Bump to invalidate cached exposures when the recipe below changes.
RECIPE = 1
#: Files are read in blocks of this many bytes to warm the page cache.
_BLOCK = 16 << 20
_CLK_TCK = os.sysconf("SC_CLK_TCK")
_PAGE_KB = 1024
_PR_SET_CHILD_SUBREAPER = 36
_MB = 1e6

#: Summary metrics printed so that a reader sees real work was done.
SUMMARY_METRICS = (
    "FWHM_PIX", "FWHM_ARCSEC", "FWHM_MOFFAT", "ELLIPTICITY", "PSF_BETA",
    "NSTAR_PSF", "NOBJ", "NSTAR", "NGAL", "NARTEFACT", "SKY_MEAN",
    "SKY_RMS", "SKY_MAG", "MAGLIM_5SIG", "MAG_TURNOVER", "NCR",
    "STAR_CR_FRAC", "FRAC_W0", "W_MEAN",
)


# ----------------------------------------------------------- the exposure


def exposure_params(*, dtype: str, quick: bool) -> dict[str, Any]:
    """Keyword arguments of `SimulationParams` for a MegaCam-like CCD.

    Per 2048 x 4612 CCD (6.4' x 14.4', 0.0256 deg2 at 0.187"/px):

    * FWHM 4.0 px = 0.75" (MegaCam was sized for 0.7" median seeing),
      Moffat beta 3, ellipticity 0.03, and 10 % FWHM variation across
      the CCD on top of the simulator's +-5 % focal-plane term;
    * 400 stars (~16 000 deg-2: a field at intermediate galactic
      latitude, "a few hundred" per CCD) and 2000 galaxies (~78 000
      deg-2, about the counts to r ~ 25), fluxes from S/N 5 up to five
      times saturation (the simulator's power-law fluxes);
    * 300 cosmic-ray hits and 30 tracks: a few per cm2 per minute on the
      17 cm2 of a CCD42-90 over a 300 s exposure plus read-out at 4200 m
      (an order-of-magnitude choice, not a measured rate);
    * sky 1200 ADU, gain 1.6 e-/ADU, read noise 5 e-, saturation
      60000 ADU, zero point 32.4 (r-band ~26.2 for 1 ADU/s, 300 s): the
      sky is then ~21.1 mag/arcsec2, a dark r-band sky.

    ``quick`` keeps the densities on 1024 x 2048 CCDs (a smoke test).
    """
    shape = (2048, 1024) if quick else TARGET_SHAPE
    area = shape[0] * shape[1] / (TARGET_SHAPE[0] * TARGET_SHAPE[1])
    return {
        "shape": shape,
        "fwhm": 4.0,
        "fwhm_variation": 0.1,
        "beta": 3.0,
        "ellipticity": 0.03,
        "theta": 30.0,
        "sky": 1200.0,
        "sky_gradient": 0.02,
        "gain": 1.6,
        "read_noise": 5.0,
        "saturation": 60000.0,
        "n_stars": round(400 * area),
        "n_galaxies": round(2000 * area),
        "n_cr_hits": round(300 * area),
        "n_cr_tracks": round(30 * area),
        "zeropoint": 32.4,
        "exptime": 300.0,
        "pixscale": 0.187,
        "dtype": dtype,
    }


def build_exposure(workdir: Path, *, dtype: str, quick: bool, n_ccds: int,
                   jobs: int, regenerate: bool,
                   overrides: dict[str, Any] | None = None
                   ) -> dict[str, Any]:
    """Write the exposure, or reuse the cached one if its recipe matches.

    ``overrides`` replaces values of `exposure_params` (``n_stars``,
    ``n_cr_hits``); the file name then says which.
    """
    # Imported here: the timed children must pay for their own imports.
    from qualityfits import __version__  # noqa: PLC0415
    from qualityfits.datasets import (  # noqa: PLC0415
        SimulationParams,
        write_exposure,
    )

    kwargs = exposure_params(dtype=dtype, quick=quick)
    changed = {k: v for k, v in (overrides or {}).items()
               if kwargs.get(k) != v}
    kwargs.update(changed)
    params = SimulationParams(**kwargs)
    ny, nx = params.shape
    tag = "".join(f"-{k.removeprefix('n_').replace('_', '')}{v}"
                  for k, v in sorted(changed.items()))
    path = workdir / f"megacam-{n_ccds}x{nx}x{ny}-{dtype}{tag}-s{SEED}.fits"
    meta_path = path.with_name(path.name + ".json")
    recipe = {
        "recipe": RECIPE,
        "params": json.loads(json.dumps(dataclasses.asdict(params))),
        "n_ccds": n_ccds,
        "seed": SEED,
        "qualityfits": __version__,
    }
    if not regenerate and path.is_file() and meta_path.is_file():
        try:
            meta = json.loads(meta_path.read_text())
        except (OSError, ValueError):
            meta = {}
        if (meta.get("recipe_key") == recipe
                and meta.get("size") == path.stat().st_size):
            return {"path": str(path), "size": path.stat().st_size,
                    "reused": True, "build_seconds": None,
                    "params": recipe["params"], "n_ccds": n_ccds,
                    "seed": SEED}
    workdir.mkdir(parents=True, exist_ok=True)
    meta_path.unlink(missing_ok=True)
    partial = path.with_name(path.name + ".partial")
    print(f"building {path.name}: {n_ccds} CCDs of {nx}x{ny} {dtype} "
          f"(jobs={jobs}) ...", flush=True)
    start = time.perf_counter()
    write_exposure(partial, params, n_ccds=n_ccds, seed=SEED, jobs=jobs)
    seconds = time.perf_counter() - start
    partial.replace(path)
    size = path.stat().st_size
    meta_path.write_text(json.dumps(
        {"recipe_key": recipe, "size": size, "build_seconds": seconds},
        indent=1))
    print(f"built in {seconds:.1f} s ({size / _MB:.0f} MB)", flush=True)
    return {"path": str(path), "size": size, "reused": False,
            "build_seconds": seconds, "params": recipe["params"],
            "n_ccds": n_ccds, "seed": SEED}


def build_flat(image: Path, *, regenerate: bool) -> Path:
    """A master flat for the exposure ``image`` (cached beside it).

    Each CCD: 1 with 1 % pixel noise, a 4 % vignetting gradient, and a
    few bad columns (0.3) and hot pixels (2.0) that the flat thresholds
    must flag.
    """
    import numpy as np  # noqa: PLC0415
    from astropy.io import fits  # noqa: PLC0415

    path = image.with_name(image.stem + "-flat.fits")
    if path.is_file() and not regenerate:
        return path
    rng = np.random.default_rng(SEED + 1)
    partial = path.with_name(path.name + ".partial")
    with fits.open(image) as hdul:
        shapes = [(h.name, h.shape) for h in hdul if h.is_image and h.shape]
    fits.PrimaryHDU().writeto(partial, overwrite=True)
    for name, (ny, nx) in shapes:
        y = np.linspace(-1.0, 1.0, ny, dtype=np.float32)[:, None]
        flat = 1.0 + 0.01 * rng.standard_normal((ny, nx), dtype=np.float32)
        flat += 0.02 * y
        flat[:, rng.integers(0, nx, 3)] = 0.3
        hot = rng.integers(0, ny * nx, 200)
        flat.ravel()[hot] = 2.0
        header = fits.Header()
        header["EXTNAME"] = name
        fits.append(partial, flat.astype(np.float32), header)
    partial.replace(path)
    return path


def warm_cache(path: Path) -> float:
    """Read a file through once (page cache); return the seconds taken."""
    start = time.perf_counter()
    with path.open("rb", buffering=0) as handle:
        while handle.read(_BLOCK):
            pass
    return time.perf_counter() - start


# ------------------------------------------------------ process-tree probe


_Stat = tuple[int, int, int, str, str]


def _read_stat(pid: int) -> _Stat | None:
    """(ppid, utime + stime ticks, start time, state, comm) of a process."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:  # noqa: PTH123
            text = handle.read().decode("utf-8", "replace")
    except OSError:
        return None
    close = text.rindex(")")
    comm = text[text.index("(") + 1:close]
    rest = text[close + 2:].split()
    return (int(rest[1]), int(rest[11]) + int(rest[12]), int(rest[19]),
            rest[0], comm)


def _status_kb(pid: int) -> tuple[int, int]:
    """(VmRSS, VmHWM) in kB; zeros for a zombie or a vanished process."""
    rss = hwm = 0
    try:
        with open(f"/proc/{pid}/status", "rb") as handle:  # noqa: PTH123
            for line in handle:
                if line.startswith(b"VmRSS:"):
                    rss = int(line.split()[1])
                elif line.startswith(b"VmHWM:"):
                    hwm = int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return rss, hwm


def _pss_kb(pid: int) -> int:
    """Proportional set size in kB (shared pages divided among sharers)."""
    try:
        with open(f"/proc/{pid}/smaps_rollup", "rb") as handle:  # noqa: PTH123
            for line in handle:
                if line.startswith(b"Pss:"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return 0


def _cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as handle:  # noqa: PTH123
            raw = handle.read()
    except OSError:
        return ""
    return raw.replace(b"\0", b" ").decode("utf-8", "replace").strip()


def _all_processes() -> dict[int, _Stat]:
    out = {}
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            stat = _read_stat(int(entry.name))
            if stat is not None:
                out[int(entry.name)] = stat
    return out


@dataclasses.dataclass
class _Proc:
    pid: int
    ppid: int
    start: int
    comm: str
    cmdline: str
    cpu_ticks: int = 0
    rss_kb: int = 0
    hwm_kb: int = 0
    pss_kb: int = 0


class TreeSampler:
    """Sample the memory and CPU of a process and all its descendants.

    Every ``interval`` seconds, in a background thread: list every
    process (``/proc/*/stat``: the kernel here has no
    ``/proc/<pid>/task/*/children``), keep the descendants of the root
    (and, once seen, a process stays in the tree while it lives, even
    after its parent died and it was re-parented), and sum their
    ``VmRSS`` and ``Pss``.  The maxima of the sums are kept, and each
    process's own ``VmHWM`` (the kernel's exact peak) and last CPU time.
    To keep the probe light (it shares the cores it measures), the whole
    of ``/proc`` is scanned for new processes every ``scan_every``-th
    sample only (the known ones are read every time), and ``Pss``
    (``/proc/<pid>/smaps_rollup``, which costs the kernel a walk of the
    page tables) every ``pss_every``-th sample.
    """

    def __init__(self, root: int, interval: float = 0.05,
                 pss_every: int = 5, scan_every: int = 4) -> None:
        self.root = root
        self.interval = interval
        self.pss_every = pss_every
        self.scan_every = scan_every
        self._members: dict[int, int] = {}  # pid -> start time
        self.procs: dict[tuple[int, int], _Proc] = {}
        self.peak_rss_kb = 0
        self.peak_pss_kb = 0
        self.peak_count = 0
        self.samples = 0
        self.timeline: list[tuple[float, int, int, int]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._t0 = time.perf_counter()

    def start(self) -> None:
        self._t0 = time.perf_counter()
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()
        self.sample()

    def _loop(self) -> None:
        while not self._stop.is_set():
            self.sample()
            self._stop.wait(self.interval)

    def tree(self, *, full: bool = True) -> dict[int, _Stat]:
        """The processes of the tree alive now: pid -> stat.

        With ``full=False`` only the members found by the last full scan
        are read again (no new process is discovered).
        """
        if not full and self._members:
            out = {}
            for pid, start in self._members.items():
                stat = _read_stat(pid)
                if stat is not None and stat[2] == start:
                    out[pid] = stat
            return out
        procs = _all_processes()
        known = {key[0] for key in self.procs
                 if key[0] in procs and procs[key[0]][2] == key[1]}
        if self.root in procs:
            known.add(self.root)
        members = set(known)
        grew = True
        while grew:
            grew = False
            for pid, stat in procs.items():
                if stat[0] in members and pid not in members:
                    members.add(pid)
                    grew = True
        self._members = {pid: procs[pid][2] for pid in members}
        return {pid: procs[pid] for pid in members}

    def sample(self) -> None:
        rss_sum = pss_sum = 0
        members = self.tree(full=self.samples % self.scan_every == 0)
        with_pss = self.samples % self.pss_every == 0
        for pid, (ppid, ticks, start, state, comm) in members.items():
            key = (pid, start)
            proc = self.procs.get(key)
            if proc is None or proc.comm != comm:
                # New, or it called exec since (a fork of Python that
                # became source-extractor): read its command line again.
                proc = _Proc(pid=pid, ppid=ppid, start=start, comm=comm,
                             cmdline=_cmdline(pid))
                if key in self.procs:
                    old = self.procs[key]
                    proc.cpu_ticks, proc.hwm_kb = old.cpu_ticks, old.hwm_kb
                    proc.rss_kb, proc.pss_kb = old.rss_kb, old.pss_kb
                self.procs[key] = proc
            proc.cpu_ticks = max(proc.cpu_ticks, ticks)
            if state == "Z":
                continue
            rss, hwm = _status_kb(pid)
            proc.rss_kb = max(proc.rss_kb, rss)
            proc.hwm_kb = max(proc.hwm_kb, hwm)
            rss_sum += rss
            if with_pss:
                pss = _pss_kb(pid)
                proc.pss_kb = max(proc.pss_kb, pss)
                pss_sum += pss
        self.samples += 1
        if rss_sum > self.peak_rss_kb:
            self.peak_rss_kb = rss_sum
            self.peak_count = len(members)
        if with_pss:
            self.peak_pss_kb = max(self.peak_pss_kb, pss_sum)
        self.timeline.append((time.perf_counter() - self._t0, rss_sum,
                              pss_sum if with_pss else -1, len(members)))

    def alive(self) -> list[int]:
        """Pids of the tree still alive (zombies included)."""
        return list(self.tree())

    def role(self, proc: _Proc) -> str:
        """main, forkserver, worker, resource_tracker or program name."""
        cmd = proc.cmdline
        parent = next((p for p in self.procs.values()
                       if p.pid == proc.ppid), None)
        role = Path(cmd.split()[0]).name if cmd else "?"
        if proc.pid == self.root:
            role = "main"
        elif "resource_tracker" in cmd:
            role = "resource_tracker"
        elif "multiprocessing.forkserver" in cmd:
            forked = parent is not None and (
                "multiprocessing.forkserver" in parent.cmdline)
            role = "worker" if forked else "forkserver"
        elif "multiprocessing.spawn" in cmd:
            role = "worker"
        elif (parent is not None and parent.pid == self.root
              and cmd == parent.cmdline):
            role = "worker"  # forked by the main process
        return role

    def report(self) -> dict[str, Any]:
        roles: dict[str, dict[str, Any]] = {}
        for proc in self.procs.values():
            role = self.role(proc)
            entry = roles.setdefault(role, {
                "count": 0, "max_hwm_mb": 0.0, "max_pss_mb": 0.0,
                "cpu_seconds_sampled": 0.0})
            entry["count"] += 1
            entry["max_hwm_mb"] = max(entry["max_hwm_mb"],
                                      proc.hwm_kb * _PAGE_KB / _MB)
            entry["max_pss_mb"] = max(entry["max_pss_mb"],
                                      proc.pss_kb * _PAGE_KB / _MB)
            entry["cpu_seconds_sampled"] += proc.cpu_ticks / _CLK_TCK
        single = max((p.hwm_kb for p in self.procs.values()), default=0)
        # The processes doing the work: pool workers or the programs.
        busy = max((p.hwm_kb for p in self.procs.values()
                    if self.role(p) not in ("main", "forkserver",
                                            "resource_tracker")),
                   default=0)
        step = max(1, len(self.timeline) // 300)
        timeline = [
            [round(t, 3), round(rss * _PAGE_KB / _MB, 1),
             None if pss < 0 else round(pss * _PAGE_KB / _MB, 1), n]
            for t, rss, pss, n in self.timeline[::step]]
        return {
            "peak_rss_tree_bytes": self.peak_rss_kb * _PAGE_KB,
            "peak_pss_tree_bytes": self.peak_pss_kb * _PAGE_KB,
            "peak_rss_single_bytes": single * _PAGE_KB,
            "peak_rss_worker_bytes": busy * _PAGE_KB,
            "processes_at_peak": self.peak_count,
            "processes_seen": len(self.procs),
            "samples": self.samples,
            "sampled_cpu_seconds": sum(p.cpu_ticks for p in
                                       self.procs.values()) / _CLK_TCK,
            "roles": roles,
            "timeline": timeline,
        }


def _become_subreaper() -> bool:
    """Adopt orphaned descendants (Linux), so that they can be reaped."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def _system_ticks() -> tuple[int, int]:
    """(busy, steal) jiffies of all CPUs since boot (``/proc/stat``)."""
    with open("/proc/stat", "rb") as handle:  # noqa: PTH123
        fields = [int(v) for v in handle.readline().split()[1:]]
    user, nice, system, _, _, irq, softirq, steal = fields[:8]
    return user + nice + system + irq + softirq, steal


def _my_children() -> set[int]:
    me = os.getpid()
    return {pid for pid, stat in _all_processes().items() if stat[0] == me}


def run_measured(argv: list[str], *, log: Path, interval: float,
                 timeout: float) -> dict[str, Any]:
    """Run a command; measure wall, tree CPU and tree memory."""
    baseline = _my_children()
    cpu0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    self0 = resource.getrusage(resource.RUSAGE_SELF)
    busy0, steal0 = _system_ticks()
    with log.open("wb") as out:
        start = time.perf_counter()
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT,
                                cwd=ROOT)
        sampler = TreeSampler(proc.pid, interval)
        sampler.start()
        try:
            code = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            # Kill the whole tree (these are our own processes, by pid).
            for pid in [proc.pid, *sampler.alive()]:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            proc.wait()
            code = -9
        wall = time.perf_counter() - start
        # Reap the descendants the child left behind (adopted by us).
        deadline = time.perf_counter() + 30.0
        while time.perf_counter() < deadline:
            orphans = _my_children() - baseline
            for pid in orphans:
                with contextlib.suppress(ChildProcessError):
                    os.waitpid(pid, os.WNOHANG)
            if not orphans and not sampler.alive():
                break
            time.sleep(0.02)
        tree_done = time.perf_counter() - start
        sampler.stop()
    busy1, steal1 = _system_ticks()
    cpu1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    self1 = resource.getrusage(resource.RUSAGE_SELF)
    cpu = (cpu1.ru_utime - cpu0.ru_utime) + (cpu1.ru_stime - cpu0.ru_stime)
    sampler_cpu = (self1.ru_utime - self0.ru_utime) + (
        self1.ru_stime - self0.ru_stime)
    # What the rest of the machine used meanwhile: the noise of the run.
    others = max(0.0, (busy1 - busy0) / _CLK_TCK - cpu - sampler_cpu)
    return {
        "returncode": code,
        "wall_seconds": wall,
        "tree_exit_seconds": tree_done,
        "cpu_seconds": cpu,
        "user_seconds": cpu1.ru_utime - cpu0.ru_utime,
        "system_seconds": cpu1.ru_stime - cpu0.ru_stime,
        "sampler_cpu_seconds": sampler_cpu,
        "other_processes_cpu_seconds": others,
        "other_load_cores": others / tree_done if tree_done > 0 else 0.0,
        "steal_seconds": (steal1 - steal0) / _CLK_TCK,
        "memory": sampler.report(),
        "log": str(log),
    }


# ------------------------------------------------------ child entry points


def _finite(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def child_ours(image: Path, jobs: int, result: Path,
               flat: Path | None = None, *,
               cosmic_rays: bool = False) -> int:
    """Assess the image; write what the parent prints to ``result``.

    With ``flat``, the whole product set is written (in a folder beside
    ``result``) and timed too.  With ``cosmic_rays``, `assess` runs with
    its defaults (cosmic-ray detection on) instead of the measurement
    core.
    """
    t0 = time.perf_counter()
    import qualityfits  # noqa: PLC0415 - its import time is measured

    imported = time.perf_counter() - t0
    # What was measured: the tree may be edited between runs.
    digest = hashlib.sha256()
    for path in sorted(Path(qualityfits.__file__).parent.glob("*.py")):
        digest.update(path.name.encode() + b"\0" + path.read_bytes())
    self0 = resource.getrusage(resource.RUSAGE_SELF)
    start = time.perf_counter()
    products: dict[str, Any] = {}
    if flat is None:
        # The measurement core, as SExtractor + PSFEx measure: no
        # cosmic-ray detection (the product set, --products, has it).
        report = qualityfits.assess(
            image, jobs=jobs,
            config=qualityfits.QualityConfig(cosmic_rays=cosmic_rays))
    else:
        # The product writer is imported (and timed) only when it runs:
        # assess() alone never imports it.
        from qualityfits.products import write_products  # noqa: PLC0415

        outdir = result.with_name("ours-products")
        maps = outdir / ".maps.partial"
        report = qualityfits.assess(image, jobs=jobs, flat=flat,
                                    maps_dir=maps)
        products["assess_seconds"] = time.perf_counter() - start
        steps: dict[str, float] = {}
        running: list[tuple[str, float]] = []

        def step(name: str | None) -> None:
            now = time.perf_counter()
            if running:
                last, since = running.pop()
                steps[last] = now - since
            if name is not None:
                running.append((name, now))

        written = write_products(report, outdir, image.stem,
                                 maps_dir=maps, step=step).products
        step(None)
        products.update(
            steps=steps, count=len(written),
            bytes=sum(p.size for p in written),
            archive_bytes=next(p.size for p in written
                               if p.id == "archive"))
    wall = time.perf_counter() - start
    self1 = resource.getrusage(resource.RUSAGE_SELF)
    extensions = [{
        "name": ext.name,
        "status": ext.status,
        "error": None if ext.error is None else ext.error.message,
        "timings": dict(ext.timings),
        "metrics": {k: _finite(float(ext.metrics.get(k, math.nan)))
                    for k in SUMMARY_METRICS},
    } for ext in report.extensions]
    exposure = {k: {s: _finite(v) for s, v in stats.items()}
                for k, stats in report.exposure.metrics.items()
                if k in SUMMARY_METRICS}
    out = {
        "qualityfits_sources_sha256": digest.hexdigest()[:16],
        "import_seconds": imported,
        "assess_wall_seconds": wall,
        "main_cpu_seconds": (self1.ru_utime - self0.ru_utime)
        + (self1.ru_stime - self0.ru_stime),
        # VmHWM, not ru_maxrss: Linux carries ru_maxrss over exec from
        # the process that forked us (the benchmark, which may have just
        # built a 1.4 GB exposure).
        "main_hwm_bytes": _status_kb(os.getpid())[1] * _PAGE_KB,
        "jobs": jobs,
        "extensions": extensions,
        "exposure_metrics": exposure,
        "exposure_flags": list(report.exposure.flags),
        "versions": dict(report.versions),
        "products": products,
    }
    result.write_text(json.dumps(out))
    return 0


def child_reference(image: Path, workdir: Path, result: Path,
                    flat: Path | None = None) -> int:
    """Run the TERAPIX chain; write its own timings to ``result``."""
    if str(HERE) not in sys.path:
        sys.path.insert(0, str(HERE))
    import terapix  # noqa: PLC0415 - needs benchmarks/ on sys.path

    run = terapix.run_reference(image, workdir=workdir, flat=flat)
    exts = [{
        "name": e.name,
        "nsextracted": e.nsextracted,
        "nstars_accepted": _finite(e.psfex.get("NStars_Accepted_Mean",
                                               math.nan)),
        "fwhm": _finite(e.psfex.get("FWHM_Mean", math.nan)),
        "fwhm_rh": _finite(e.psfex.get("FWHM_FromFluxRadius_Mean",
                                       math.nan)),
        "ellipticity": _finite(e.psfex.get("Ellipticity_Mean", math.nan)),
        "background_stdev": _finite(e.background_stdev),
    } for e in run.extensions]
    out = {
        "chain_wall_seconds": run.wall_seconds,
        "programs_cpu_seconds": run.cpu_seconds,
        "steps": run.steps,
        "programs_wall_seconds": sum(run.steps.values()),
        "versions": run.versions,
        "extensions": exts,
    }
    result.write_text(json.dumps(out))
    return 0


# ---------------------------------------------------------------- report


def _median(values: list[float]) -> float:
    vals = sorted(v for v in values if v is not None and math.isfinite(v))
    if not vals:
        return math.nan
    mid = len(vals) // 2
    return vals[mid] if len(vals) % 2 else 0.5 * (vals[mid - 1] + vals[mid])


def _ratio(num: float | None, den: float | None) -> float | None:
    if num is None or den is None or not den > 0:
        return None
    return num / den


def _fmt(value: float | None, spec: str = ".2f") -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(
            value)):
        return "-"
    return format(value, spec)


def _run_side(name: str, argv: list[str], work: Path,
              args: argparse.Namespace) -> dict[str, Any]:
    result = work / f"{name}.result.json"
    result.unlink(missing_ok=True)
    log = work / f"{name}.log"
    measured = run_measured([*argv, "--result", str(result)], log=log,
                            interval=args.sample_interval,
                            timeout=args.timeout)
    if measured["returncode"] != 0 or not result.is_file():
        tail = log.read_text(errors="replace")[-3000:]
        msg = (f"{name} run failed (exit {measured['returncode']}), "
               f"log {log}:\n{tail}")
        raise RuntimeError(msg)
    measured["inside"] = json.loads(result.read_text())
    return measured


def _noise(side: dict[str, Any]) -> str:
    return (f"other processes {side['other_load_cores']:.2f} cores, "
            f"sampler {side['sampler_cpu_seconds']:.1f} s CPU")


def _print_ours(ours: dict[str, Any]) -> None:
    inside = ours["inside"]
    exts = inside["extensions"]
    steps: dict[str, float] = {}
    for ext in exts:
        for step, seconds in ext["timings"].items():
            steps[step] = steps.get(step, 0.0) + seconds
    total = sum(steps.values())
    n_ok = sum(e["status"] == "ok" for e in exts)
    mem = ours["memory"]
    print(f"  qualityfits.assess: {n_ok}/{len(exts)} extensions ok, "
          f"jobs={inside['jobs']}; {_noise(ours)}")
    print(f"  child process wall {ours['wall_seconds']:.2f} s = import "
          f"{inside['import_seconds']:.2f} s + assess() "
          f"{inside['assess_wall_seconds']:.2f} s + interpreter start/exit;"
          f" CPU {ours['cpu_seconds']:.2f} s (user "
          f"{ours['user_seconds']:.2f}, sys {ours['system_seconds']:.2f})")
    roles = ", ".join(
        f"{role} x{r['count']} {r['cpu_seconds_sampled']:.1f} s CPU / "
        f"{r['max_hwm_mb']:.0f} MB peak"
        for role, r in mem["roles"].items())
    print(f"  processes: {roles}")
    busy = total / (inside["assess_wall_seconds"] * inside["jobs"])
    print(f"  per-step totals over the CCDs (worker wall seconds, "
          f"{total:.1f} s in all = {busy:.0%} of jobs x assess wall):")
    for step, seconds in steps.items():
        print(f"    {step:15s} {seconds:8.2f} s  ({seconds / len(exts):.3f}"
              f" s per CCD, {seconds / total:5.1%})")
    print(f"  main process CPU in assess() "
          f"{inside['main_cpu_seconds']:.2f} s, its peak RSS "
          f"{inside['main_hwm_bytes'] / _MB:.0f} MB")
    prod = inside.get("products")
    if prod:
        parts = ", ".join(f"{k} {v:.2f} s" for k, v in prod["steps"].items())
        print(f"  products: assess() {prod['assess_seconds']:.2f} s, then "
              f"{parts}; {prod['count']} files, "
              f"{prod['bytes'] / _MB:.0f} MB (archive "
              f"{prod['archive_bytes'] / _MB:.0f} MB)")
    print("  exposure metrics (median [min, max] over the CCDs):")
    for name, stats in inside["exposure_metrics"].items():
        extra = (f", total {_fmt(stats['total'], '.0f')}" if "total" in stats
                 else "")
        print(f"    {name:13s} {_fmt(stats['median'], '.4g'):>9s} "
              f"[{_fmt(stats['min'], '.4g')}, {_fmt(stats['max'], '.4g')}]"
              f"{extra}")
    print(f"  exposure flags: {', '.join(inside['exposure_flags']) or '-'}")
    failed = [e for e in exts if e["status"] != "ok"]
    for ext in failed:
        print(f"  FAILED {ext['name']}: {ext['error']}")


def _print_reference(ref: dict[str, Any]) -> None:
    inside = ref["inside"]
    exts = inside["extensions"]
    versions = ", ".join(f"{k} {v}" for k, v in inside["versions"].items())
    print(f"  reference chain ({versions}); {_noise(ref)}")
    print(f"  child process wall {ref['wall_seconds']:.2f} s, of which "
          f"run_reference {inside['chain_wall_seconds']:.2f} s, programs "
          f"{inside['programs_wall_seconds']:.2f} s wall / "
          f"{inside['programs_cpu_seconds']:.2f} s CPU")
    for step, seconds in inside["steps"].items():
        print(f"    {step:17s} {seconds:8.2f} s")
    print(f"  PSFEx FWHM median {_median([e['fwhm'] for e in exts]):.3f} px,"
          f" stars accepted "
          f"{sum((e['nstars_accepted'] or 0) for e in exts):.0f}, "
          f"SExtractor sources {sum(e['nsextracted'] for e in exts)}")


_MEMORY_KEYS = ("peak_rss_tree_bytes", "peak_pss_tree_bytes",
                "peak_rss_single_bytes", "peak_rss_worker_bytes")


def headline(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Best of the rounds: least wall and CPU time, highest memory peaks.

    On a shared machine the noise only ever adds time, so the fastest
    round is the least disturbed; memory is taken at its worst.
    """
    out: dict[str, Any] = {
        "wall_seconds": min(r["wall_seconds"] for r in runs),
        "cpu_seconds": min(r["cpu_seconds"] for r in runs),
        "rounds": len(runs),
    }
    for key in _MEMORY_KEYS:
        out[key] = max(r["memory"][key] for r in runs)
    inside = [r["inside"] for r in runs]
    if "programs_wall_seconds" in inside[0]:
        out["programs_wall_seconds"] = min(
            i["programs_wall_seconds"] for i in inside)
        out["programs_cpu_seconds"] = min(
            i["programs_cpu_seconds"] for i in inside)
    else:
        out["assess_wall_seconds"] = min(
            i["assess_wall_seconds"] for i in inside)
    return out


def _get(side: dict[str, Any] | None, key: str) -> float | None:
    return None if side is None else float(side[key])


def _mb(side: dict[str, Any] | None, key: str) -> str:
    return "-" if side is None else f"{side[key] / _MB:.0f}"


def summarise(ours: dict[str, Any], ref: dict[str, Any] | None,
              rounds: list[dict[str, Any]], exposure: dict[str, Any],
              jobs: int, *, products: bool = False) -> dict[str, Any]:
    """Ratios and targets; print the table."""
    ratios: dict[str, Any] = {
        # Headline: the reference programs alone against our whole child
        # process (interpreter start and imports included): conservative.
        "wall": _ratio(_get(ref, "programs_wall_seconds"),
                       ours["wall_seconds"]),
        "cpu": _ratio(_get(ref, "programs_cpu_seconds"),
                      ours["cpu_seconds"]),
        # Both child process trees as measured from the outside.
        "wall_tree": _ratio(_get(ref, "wall_seconds"),
                            ours["wall_seconds"]),
        "cpu_tree": _ratio(_get(ref, "cpu_seconds"), ours["cpu_seconds"]),
        "wall_per_round": [
            _ratio(r["reference"]["inside"]["programs_wall_seconds"],
                   r["ours"]["wall_seconds"])
            for r in rounds if r["reference"] is not None],
    }
    rows = [
        ("wall [s]", f"{ours['wall_seconds']:.2f}",
         _fmt(_get(ref, "wall_seconds")),
         _fmt(_get(ref, "programs_wall_seconds")),
         _fmt(ratios["wall"])),
        ("CPU user+sys [s]", f"{ours['cpu_seconds']:.2f}",
         _fmt(_get(ref, "cpu_seconds")),
         _fmt(_get(ref, "programs_cpu_seconds")),
         _fmt(ratios["cpu"])),
    ]
    labels = ("peak RSS, tree sum [MB]", "peak PSS, tree sum [MB]",
              "peak RSS, one process [MB]",
              "peak RSS, one worker/program [MB]")
    for label, key in zip(labels, _MEMORY_KEYS, strict=True):
        rows.append((label, _mb(ours, key), _mb(ref, key), "", ""))
    head = ("", "ours", "reference", "ref programs", "ratio ref/ours")
    widths = [max(len(r[i]) for r in (head, *rows)) for i in range(5)]
    best = f" (best of {len(rounds)} rounds)" if len(rounds) > 1 else ""
    print(f"\nsummary{best}:")
    for row in (head, *rows):
        print("  ".join(c.rjust(w) if i else c.ljust(w)
                        for i, (c, w) in enumerate(zip(row, widths,
                                                       strict=True))))
    print("ours, reference: whole child process trees measured from outside"
          " (interpreter start included); ref programs: the three program "
          "runs alone; ratio = ref programs / ours")
    if ref is not None:
        print(f"tree-to-tree ratios: wall {_fmt(ratios['wall_tree'])}, "
              f"CPU {_fmt(ratios['cpu_tree'])}")

    standard = (exposure["n_ccds"] == TARGET_CCDS
                and tuple(exposure["params"]["shape"]) == TARGET_SHAPE
                and jobs == TARGET_JOBS)
    rss = ours["peak_rss_tree_bytes"]
    wall_target = TARGET_PRODUCTS_WALL_S if products else TARGET_WALL_S
    rss_target = TARGET_PRODUCTS_RSS_BYTES if products else TARGET_RSS_BYTES
    targets: dict[str, Any] = {
        "applicable": standard,
        "wall": {"target_seconds": wall_target,
                 "value": ours["wall_seconds"],
                 "pass": ours["wall_seconds"] <= wall_target},
        # No speed-ratio target for the product set: printed only.
        "speedup": {"target": None if products else TARGET_SPEEDUP,
                    "value": ratios["wall"],
                    "pass": None if ratios["wall"] is None or products
                    else ratios["wall"] >= TARGET_SPEEDUP},
        "peak_rss": {"target_bytes": rss_target, "value": rss,
                     "pass": rss <= rss_target},
    }
    note = "" if standard else (
        f" (they are for {TARGET_CCDS} CCDs of {TARGET_SHAPE[1]}x"
        f"{TARGET_SHAPE[0]} on {TARGET_JOBS} cores: informative only here)")
    print(f"\ntargets{note}:")

    def verdict(ok: bool | None) -> str:
        return "n/a " if ok is None else ("PASS" if ok else "FAIL")

    what = "the product set" if products else "assess()"
    print(f"  {verdict(targets['wall']['pass'])}  wall of {what} "
          f"{ours['wall_seconds']:.1f} s <= {wall_target:.0f} s")
    if products:
        print(f"  info  {_fmt(ratios['wall'])}x the speed of WeightWatcher"
              f"+SExtractor+PSFEx (CPU ratio {_fmt(ratios['cpu'])}x; they "
              "make no cosmic-ray mask, pictures or tables)")
    else:
        print(f"  {verdict(targets['speedup']['pass'])}  "
              f"{_fmt(ratios['wall'])}x faster than SExtractor+PSFEx "
              f">= {TARGET_SPEEDUP:.0f}x (CPU ratio {_fmt(ratios['cpu'])}x)")
    print(f"  {verdict(targets['peak_rss']['pass'])}  peak RSS (tree sum) "
          f"{rss / 1e9:.2f} GB <= {rss_target / 1e9:.1f} GB")
    noisy = [r[side]["other_load_cores"] for r in rounds
             for side in ("ours", "reference") if r[side] is not None]
    if max(noisy) > 0.25:  # a quarter of a core
        print(f"  note: other processes used up to {max(noisy):.2f} cores "
              "during a timed run: times are inflated (try --repeat)")
    return {"ratios": ratios, "targets": targets}


def machine_info() -> dict[str, Any]:
    """The machine and its load, for the record."""
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return {"cpus": len(os.sched_getaffinity(0)), "cpu_model": model,
            "memory_bytes": mem, "python": platform.python_version(),
            "platform": platform.platform(), "loadavg": os.getloadavg()}


# ------------------------------------------------------------------ main


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Time qualityfits.assess on a MegaCam-size exposure "
                    "against SExtractor+PSFEx on the same file.")
    parser.add_argument("--ccds", type=int, default=None,
                        help=f"number of CCDs (default {TARGET_CCDS}, "
                             "4 with --quick)")
    parser.add_argument("--dtype", choices=("int16", "float32"),
                        default="int16", help="pixel type (default int16)")
    parser.add_argument("--jobs", type=int, default=None,
                        help="worker processes of assess (default: all "
                             "cores)")
    parser.add_argument("--gen-jobs", type=int, default=None,
                        help="worker processes of the simulation (default: "
                             "all cores)")
    parser.add_argument("--skip-reference", action="store_true",
                        help="do not run SExtractor+PSFEx")
    parser.add_argument("--quick", action="store_true",
                        help="smoke test: 4 CCDs of 1024x2048")
    parser.add_argument("--repeat", type=int, default=1,
                        help="rounds of (ours, reference); the summary "
                             "takes the fastest (default 1)")
    parser.add_argument("--workdir", type=Path,
                        default=ROOT / "build" / "bench",
                        help="cache of the exposure, logs, reference "
                             "outputs (default build/bench)")
    parser.add_argument("--regenerate", action="store_true",
                        help="rebuild the exposure even if cached")
    parser.add_argument("--json", type=Path, default=None,
                        help="write the figures to this JSON file")
    parser.add_argument("--sample-interval", type=float, default=0.05,
                        help="memory sampling period, s (default 0.05)")
    parser.add_argument("--timeout", type=float, default=3600.0,
                        help="limit per timed run, s (default 3600)")
    parser.add_argument("--strict", action="store_true",
                        help="exit 1 when a target is missed")
    # Internal: the timed child processes.
    parser.add_argument("--child", choices=("ours", "reference"),
                        help=argparse.SUPPRESS)
    parser.add_argument("--image", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--flat", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--products", action="store_true",
                        help="time the whole product set (with a "
                        "simulated flat) against WeightWatcher + "
                        "SExtractor + PSFEx")
    parser.add_argument("--stars", type=int, default=None,
                        help="stars per CCD (default: the recipe's 400, "
                             "scaled by area with --quick)")
    parser.add_argument("--cr-hits", type=int, default=None,
                        help="cosmic-ray hits per CCD, besides the "
                             "tracks (default: the recipe's 300)")
    parser.add_argument("--cosmic-rays", action="store_true",
                        help="time assess with its defaults (cosmic-ray "
                             "detection on) instead of the measurement "
                             "core")
    parser.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    return parser


def _run_rounds(args: argparse.Namespace, image: Path, jobs: int,
                work: Path, flat: Path | None) -> list[dict[str, Any]]:
    """The timed rounds: ours, then the reference, ``--repeat`` times."""
    rounds: list[dict[str, Any]] = []
    script = str(Path(__file__).resolve())
    python = sys.executable
    for k in range(args.repeat):
        label = f"[round {k + 1}/{args.repeat}] " if args.repeat > 1 else ""
        warm = warm_cache(image)
        print(f"\n{label}timing qualityfits.assess(jobs={jobs}) "
              f"(file read in {warm:.1f} s to warm the page cache) ...",
              flush=True)
        with_flat = [] if flat is None else ["--flat", str(flat)]
        with_cr = ["--cosmic-rays"] if args.cosmic_rays else []
        ours = _run_side("ours", [
            python, script, "--child", "ours", "--image", str(image),
            "--jobs", str(jobs), *with_flat, *with_cr], work, args)
        _print_ours(ours)
        ref = None
        if not args.skip_reference:
            warm = warm_cache(image)
            print(f"\n{label}timing SExtractor + PSFEx (file read "
                  f"in {warm:.1f} s to warm the page cache) ...", flush=True)
            ref = _run_side("reference", [
                python, script, "--child", "reference", "--image",
                str(image), "--workdir", str(work / "reference"),
                *with_flat], work, args)
            _print_reference(ref)
        rounds.append({"ours": ours, "reference": ref})
    return rounds


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    cores = len(os.sched_getaffinity(0))
    if args.child == "ours":
        status = child_ours(args.image, args.jobs or cores, args.result,
                            args.flat, cosmic_rays=args.cosmic_rays)
        # The process ends as the ``qualityfits`` command's does.
        from qualityfits.cliutil import exit_now  # noqa: PLC0415

        exit_now(status)
    if args.child == "reference":
        return child_reference(args.image, args.workdir, args.result,
                               args.flat)
    for name in ("ccds", "jobs", "gen_jobs", "stars"):
        value = getattr(args, name)
        if value is not None and value < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1")
    if args.repeat < 1:
        parser.error("--repeat must be >= 1")
    if args.cr_hits is not None and args.cr_hits < 0:
        parser.error("--cr-hits must be >= 0")
    overrides = {k: v for k, v in (("n_stars", args.stars),
                                   ("n_cr_hits", args.cr_hits))
                 if v is not None}

    jobs = args.jobs or cores
    n_ccds = args.ccds or (4 if args.quick else TARGET_CCDS)
    work = args.workdir.resolve()
    work.mkdir(parents=True, exist_ok=True)
    machine = machine_info()
    print(f"machine: {machine['cpus']} cores ({machine['cpu_model']}), "
          f"{machine['memory_bytes'] / 1e9:.0f} GB, load "
          f"{' '.join(f'{x:.2f}' for x in machine['loadavg'])}")
    exposure = build_exposure(work, dtype=args.dtype, quick=args.quick,
                              n_ccds=n_ccds, jobs=args.gen_jobs or cores,
                              regenerate=args.regenerate,
                              overrides=overrides)
    image = Path(exposure["path"])
    p = exposure["params"]
    print(f"exposure: {image} ({exposure['size'] / _MB:.0f} MB, "
          f"{n_ccds} CCDs of {p['shape'][1]}x{p['shape'][0]} {p['dtype']}, "
          f"{'reused' if exposure['reused'] else 'built'})")
    flat = None
    if args.products:
        flat = build_flat(image, regenerate=args.regenerate)
        print(f"master flat: {flat} (product-set mode)")
    subreaper = _become_subreaper()
    if not subreaper:
        print("warning: cannot become a child subreaper: the CPU time of "
              "descendants orphaned at exit may be missed")
    try:
        rounds = _run_rounds(args, image, jobs, work, flat)
    except RuntimeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1

    best_ours = headline([r["ours"] for r in rounds])
    best_ref = None if args.skip_reference else headline(
        [r["reference"] for r in rounds])
    summary = summarise(best_ours, best_ref, rounds, exposure, jobs,
                        products=args.products)
    n_ok = min(sum(e["status"] == "ok" for e in r["ours"]["inside"][
        "extensions"]) for r in rounds)
    all_ok = n_ok == n_ccds
    if not all_ok:
        print(f"\nERROR: only {n_ok} of {n_ccds} extensions were assessed")
    if args.json is not None:
        figures = {
            "machine": machine,
            "settings": {"jobs": jobs, "n_ccds": n_ccds,
                         "dtype": args.dtype, "quick": args.quick,
                         "repeat": args.repeat,
                         "products": args.products,
                         "cosmic_rays": args.cosmic_rays,
                         "overrides": overrides,
                         "sample_interval": args.sample_interval,
                         "subreaper": subreaper},
            "exposure": exposure,
            "ours": best_ours,
            "reference": best_ref,
            "all_extensions_ok": all_ok,
            **summary,
            "rounds": rounds,
        }
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(figures, indent=1, default=str))
        print(f"\nfigures written to {args.json}")
    if not all_ok:
        return 1
    if args.strict and summary["targets"]["applicable"] and not all(
            t["pass"] for t in (summary["targets"][k] for k in
                                ("wall", "speedup", "peak_rss"))
            if t["pass"] is not None):
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
