"""The served process gives large freed blocks back (`uws.memory`).

In a fresh interpreter (the setting is process-wide): an 8 MB block
freed first (glibc then raises its threshold), then 100 blocks of
300 kB written and freed but the last: with `return_large_blocks` the
RSS comes back; without it, glibc keeps ~30 MB (the case of waitress's
output buffers after concurrent job lists, benchmarks/README.md).
"""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from pathlib import Path

import pytest

from uws.memory import ENVIRONMENT

ROOT = Path(__file__).resolve().parents[2]

SCRIPT = """
import sys
from uws.memory import return_large_blocks

def rss():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS"):
            return int(line.split()[1])

print(return_large_blocks() if sys.argv[1] == "set" else None)
big = bytearray(8 * 2**20)
del big
before = rss()
blocks = [bytearray(300_000) for _ in range(100)]
for block in blocks:
    block[::4096] = b"x" * len(block[::4096])
keep = blocks[-1]
del blocks
print(rss() - before)
"""


def _kept_kb(mode: str, **env: str) -> tuple[str, int]:
    """Run the script; return what it printed: the call's answer, kB kept."""
    clean = {k: v for k, v in os.environ.items() if k != ENVIRONMENT}
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT, mode], capture_output=True,
        text=True, timeout=60, check=True,
        env={**clean, **env, "PYTHONPATH": str(ROOT)})
    answer, kept = done.stdout.split()
    return answer, int(kept)


@pytest.mark.skipif(not Path("/proc/self/status").exists()
                    or platform.libc_ver()[0] != "glibc",
                    reason="glibc on Linux only")
def test_freed_blocks_go_back_to_the_system() -> None:
    answer, kept = _kept_kb("set")
    assert answer == "True"
    assert kept < 5_000
    _, kept_by_default = _kept_kb("unset")
    assert kept_by_default > 20_000  # what the setting is for
    # An operator's own setting wins: the call leaves it alone.
    answer, kept = _kept_kb("set", **{ENVIRONMENT: "65536"})
    assert answer == "False"
    assert kept < 5_000
