"""The load client of ``bench_uws.py --fair``: one asyncio process.

Run by ``bench_uws.py`` as a separate process (``python loadclient.py
PLAN.json``), so that its own work does not share a GIL with the
bookkeeping of the benchmark: keep-alive HTTP/1.1 connections on
loopback, written with asyncio streams (no dependency).  It plays, in
turn, the phases of the plan, each for ``duration`` seconds:

* ``readers`` clients, each reading job documents (``GET /jobs/{id}``,
  random ids of the preloaded jobs) back to back (a closed loop);
* with ``waiters`` set, 100 (say) more clients blocked in ``GET
  /jobs/{id}?WAIT=S`` on jobs of their own (created with ``POST
  /jobs``), started before the first such phase and kept until the end;
  every ``churn`` seconds one of their PENDING jobs is run (``PHASE=RUN``:
  QUEUED, EXECUTING, COMPLETED wake its client each time), and a client
  whose job ended creates a new one and waits on it, as real clients
  following their jobs do.

It prints one JSON document on stdout: per phase, requests, requests/s,
p50/p95/p99/max latency, the reads over 2 s, the worst whole second, the
failures, the CPU of this process, of the server (``server_pid``) and of
the rest of the machine; and the waiters' own counts.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import random
import re
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

_PHASE = re.compile(rb"<uws:phase>(\w+)</uws:phase>")
_FINAL = {"COMPLETED", "ERROR", "ABORTED", "ARCHIVED"}
_FORM = {"Content-Type": "application/x-www-form-urlencoded"}
_CLK_TCK = os.sysconf("SC_CLK_TCK")
#: A read slower than this is "starved" (the issue: none over 2 s).
SLOW_S = 2.0


class Conn:
    """One keep-alive HTTP/1.1 connection (asyncio streams)."""

    def __init__(self, port: int, timeout: float) -> None:
        self.port = port
        self.timeout = timeout
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def request(self, method: str, path: str, body: bytes = b"",
                      headers: dict[str, str] | None = None,
                      ) -> tuple[int, dict[str, str], bytes]:
        """Send one request; reconnect once if an idle connection closed."""
        for attempt in (0, 1):
            fresh = self.writer is None
            try:
                return await asyncio.wait_for(
                    self._exchange(method, path, body, headers or {}),
                    self.timeout)
            except (ConnectionError, asyncio.IncompleteReadError):
                self.close()
                if attempt or fresh:
                    raise
        raise AssertionError  # pragma: no cover

    async def _exchange(self, method: str, path: str, body: bytes,
                        headers: dict[str, str],
                        ) -> tuple[int, dict[str, str], bytes]:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(
                "127.0.0.1", self.port)
        assert self.reader is not None
        head = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
        self.writer.write(
            f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{self.port}\r\n"
            f"Content-Length: {len(body)}\r\n{head}\r\n".encode() + body)
        await self.writer.drain()
        line = await self.reader.readline()
        if not line:
            raise ConnectionResetError("closed by the server")
        status = int(line.split()[1])
        got: dict[str, str] = {}
        while True:
            line = await self.reader.readline()
            if line in {b"\r\n", b"\n", b""}:
                break
            key, _, value = line.decode("latin-1").partition(":")
            got[key.strip().lower()] = value.strip()
        if "content-length" in got:
            data = await self.reader.readexactly(int(got["content-length"]))
        elif got.get("transfer-encoding", "").lower() == "chunked":
            parts = []
            while True:
                size = int((await self.reader.readline()).split(b";")[0],
                           16)
                chunk = await self.reader.readexactly(size + 2)
                if size == 0:
                    break
                parts.append(chunk[:-2])
            data = b"".join(parts)
        else:
            data = await self.reader.read()
            got["connection"] = "close"
        if got.get("connection", "").lower() == "close":
            self.close()
        return status, got, data

    def close(self) -> None:
        """Close the connection (a later request opens a new one)."""
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None


def _percentile(values: list[float], q: float) -> float:
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


def _ticks(pid: int) -> int:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0
    fields = stat.rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])


def _tree_ticks(pid: int) -> int:
    """Jiffies of ``pid`` and its children (gunicorn's workers)."""
    total = _ticks(pid)
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:
            continue
        if int(text.rsplit(")", 1)[1].split()[1]) == pid:
            total += _ticks(int(stat.parent.name))
    return total


def _machine() -> tuple[int, int]:
    values = [int(v) for v in
              Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return sum(values) - values[3] - values[4], sum(values)


class Waiters:
    """Clients blocked in WAIT on jobs of their own, with churn."""

    def __init__(self, port: int, plan: dict[str, Any]) -> None:
        self.port = port
        self.n = int(plan["waiters"])
        self.wait_s = int(plan["wait_s"])
        self.churn = float(plan["churn"])
        self.jobs: list[str | None] = [None] * self.n
        self.pending: set[int] = set()
        self.blocked = 0
        self.stop = False
        self.counts: Counter[str] = Counter()
        self.errors: list[str] = []
        self.tasks: list[asyncio.Task[None]] = []

    async def _create(self, conn: Conn) -> str:
        status, got, data = await conn.request(
            "POST", "/jobs", b"IMAGE=https%3A%2F%2Farchive.example.org%2F"
            b"megacam%2Fwaited.fits.fz", _FORM)
        if status != 303:
            msg = f"POST /jobs: HTTP {status}: {data[:200]!r}"
            raise RuntimeError(msg)
        self.counts["created"] += 1
        return got["location"].rstrip("/").rsplit("/", 1)[-1]

    async def _client(self, k: int) -> None:
        conn = Conn(self.port, self.wait_s + 60)
        try:
            self.jobs[k] = job = await self._create(conn)
            self.pending.add(k)
            while not self.stop:
                self.blocked += 1
                t0 = time.perf_counter()
                try:
                    status, _, data = await conn.request(
                        "GET", f"/jobs/{job}?WAIT={self.wait_s}")
                finally:
                    self.blocked -= 1
                held = time.perf_counter() - t0
                if status != 200:
                    self.errors.append(f"WAIT {job}: HTTP {status}")
                    return
                match = _PHASE.search(data)
                phase = match.group(1).decode() if match else "?"
                self.counts["returns"] += 1
                if held >= self.wait_s - 0.5:
                    self.counts["timeouts"] += 1
                elif held < 0.05 and phase == "PENDING":
                    self.counts["early"] += 1  # beyond wait_clients
                if phase != "PENDING":
                    self.pending.discard(k)
                if phase in _FINAL and not self.stop:
                    self.counts[phase.lower()] += 1
                    self.jobs[k] = job = await self._create(conn)
                    self.pending.add(k)
        except Exception as exc:  # noqa: BLE001 - reported
            if not self.stop:
                self.errors.append(f"waiter {k}: {type(exc).__name__}: "
                                   f"{exc}")
        finally:
            conn.close()

    async def _churn(self) -> None:
        conn = Conn(self.port, 30)
        rng = random.Random(7)  # noqa: S311 - not for secrets
        try:
            while not self.stop:
                await asyncio.sleep(self.churn)
                if self.stop or not self.pending:
                    continue
                k = rng.choice(sorted(self.pending))
                self.pending.discard(k)
                status, _, _ = await conn.request(
                    "POST", f"/jobs/{self.jobs[k]}/phase", b"PHASE=RUN",
                    _FORM)
                self.counts[f"run_http_{status}"] += 1
        finally:
            conn.close()

    async def start(self) -> float:
        """Start the clients; return the seconds until all are blocked."""
        timeout = 60.0
        t0 = time.perf_counter()
        self.tasks = [asyncio.create_task(self._client(k))
                      for k in range(self.n)]
        while self.blocked < self.n and time.perf_counter() - t0 < timeout:
            if self.errors:
                raise RuntimeError(self.errors[0])
            await asyncio.sleep(0.05)
        ready = time.perf_counter() - t0
        self.tasks.append(asyncio.create_task(self._churn()))
        await asyncio.sleep(1.0)
        return ready

    async def finish(self) -> None:
        """Abort the waited jobs (their WAITs return) and end the clients."""
        self.stop = True
        conn = Conn(self.port, 30)
        try:
            for job in self.jobs:
                if job is not None:
                    await conn.request("POST", f"/jobs/{job}/phase",
                                       b"PHASE=ABORT", _FORM)
        finally:
            conn.close()
        _, late = await asyncio.wait(self.tasks, timeout=30)
        for task in late:
            task.cancel()
        self.counts["left_blocked"] = len(late)


async def _reads(port: int, ids: list[str], clients: int, duration: float,
                 server_pid: int, seed: int,
                 think: float) -> dict[str, Any]:
    """``clients`` readers for ``duration`` seconds.

    Each pauses ``think`` seconds on average (uniform over 0.5-1.5
    times it) between a response and its next request; 0: a closed loop.
    """
    lat: list[float] = []
    ends: list[float] = []
    failed = Counter[str]()
    conns = [Conn(port, 60) for _ in range(clients)]
    rngs = [random.Random(seed * 1000 + k)  # noqa: S311
            for k in range(clients)]
    await asyncio.gather(*(  # connect, warm up
        conn.request("GET", f"/jobs/{rng.choice(ids)}")
        for conn, rng in zip(conns, rngs, strict=True)))
    stop_at = 0.0

    async def reader(conn: Conn, rng: random.Random) -> None:
        if think:  # the readers' first requests spread over a pause
            await asyncio.sleep(think * rng.random())
        while True:
            t0 = time.perf_counter()
            if t0 >= stop_at:
                return
            try:
                status, _, _ = await conn.request(
                    "GET", f"/jobs/{rng.choice(ids)}")
            except (OSError, TimeoutError,
                    asyncio.IncompleteReadError) as exc:
                failed[type(exc).__name__] += 1
                conn.close()
                continue
            done = time.perf_counter()
            lat.append(done - t0)
            ends.append(done)
            if status != 200:
                failed[f"HTTP {status}"] += 1
            if think:
                pause = think * rng.uniform(0.5, 1.5)
                await asyncio.sleep(min(pause, stop_at - done))

    server0 = _tree_ticks(server_pid)
    busy0, total0 = _machine()
    cpu0 = time.process_time()
    t0 = time.perf_counter()
    stop_at = t0 + duration
    await asyncio.gather(*(reader(c, r)
                           for c, r in zip(conns, rngs, strict=True)))
    elapsed = time.perf_counter() - t0
    cpu = time.process_time() - cpu0
    busy1, total1 = _machine()
    server = (_tree_ticks(server_pid) - server0) / _CLK_TCK / elapsed
    for conn in conns:
        conn.close()
    machine = ((busy1 - busy0) / (total1 - total0) * (os.cpu_count() or 1)
               if total1 > total0 else math.nan)
    seconds = Counter(int(t - t0) for t in ends if t - t0 < int(elapsed))
    n = len(lat)
    return {
        "clients": clients, "requests": n, "seconds": elapsed,
        "per_s": n / elapsed, "failed": dict(failed),
        "median_ms": _percentile(lat, 0.5) * 1e3,
        "p95_ms": _percentile(lat, 0.95) * 1e3,
        "p99_ms": _percentile(lat, 0.99) * 1e3,
        "max_ms": max(lat, default=math.nan) * 1e3,
        "over_2s": sum(x > SLOW_S for x in lat),
        "worst_second_per_s": min((seconds.get(i, 0)
                                   for i in range(int(elapsed))),
                                  default=None),
        "server_cores": server, "client_cores": cpu / elapsed,
        "other_cores": machine - server - cpu / elapsed,
    }


async def play(plan: dict[str, Any]) -> dict[str, Any]:
    """Play the phases of the plan; return their figures.

    The waiters start before a phase that has them and finish (their
    jobs aborted) before a phase that has none.
    """
    port = int(plan["port"])
    ids = list(plan["ids"])
    out: dict[str, Any] = {"phases": [], "waiters": Counter(),
                           "waiter_errors": [], "waiters_ready_s": []}
    waiters: Waiters | None = None

    async def finish(waiters: Waiters) -> None:
        await waiters.finish()
        out["waiters"].update(waiters.counts)
        out["waiter_errors"] += waiters.errors[:5]

    try:
        for i, phase in enumerate(plan["phases"]):
            if phase["waiters"] and waiters is None:
                waiters = Waiters(port, plan)
                out["waiters_ready_s"].append(await waiters.start())
            elif not phase["waiters"] and waiters is not None:
                await finish(waiters)
                waiters = None
            blocked = waiters.blocked if waiters else 0
            result = await _reads(port, ids, int(phase["readers"]),
                                  float(phase["duration"]),
                                  int(plan["server_pid"]),
                                  int(plan["seed"]) + i,
                                  float(phase["think"]))
            result.update(name=phase["name"], pair=phase.get("pair"),
                          blocked_before=blocked,
                          blocked_after=waiters.blocked if waiters else 0)
            out["phases"].append(result)
            print(json.dumps({"progress": phase["name"],
                              "per_s": result["per_s"]}),
                  file=sys.stderr, flush=True)
    finally:
        if waiters is not None:
            await finish(waiters)
    out["waiters"] = dict(out["waiters"])
    return out


def main() -> int:
    """``loadclient.py PLAN.json``: play it, print the figures."""
    plan = json.loads(Path(sys.argv[1]).read_text())
    print(json.dumps(asyncio.run(play(plan))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
