"""Shared test helpers: real data location, reference tools.

A module with its own name (not ``conftest``): the service tests have a
conftest of their own, and ``from testkit import`` would find either.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

#: ``../shared/data`` beside the project root (never copied into it).
SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
IN_CI = bool(os.environ.get("CI"))


def shared_file(name: str) -> Path:
    """Path of a real image of ../shared/data; skip if the folder is absent."""
    path = SHARED_DATA / name
    if not path.exists():
        pytest.skip(f"real test data not available: {path} is absent "
                    "(the shared data folder sits beside the project)")
    return path


def require_tool(name: str) -> str:
    """Path of an external program; skip without it, fail in CI."""
    found = shutil.which(name)
    if found is None:
        message = (f"{name} is not installed (Debian package; scripts/test "
                   "installs it)")
        if IN_CI:
            pytest.fail(message)
        pytest.skip(message)
    return found


def require_slurm() -> str:
    """SLURM_CONF of the test batch system; skip without one, fail in CI.

    ``scripts/test`` starts a single-node Slurm with its PBS commands
    (``scripts/slurm-start``) and exports ``QFITS_TEST_SLURM_CONF``.
    """
    conf = os.environ.get("QFITS_TEST_SLURM_CONF", "")
    if not conf or not Path(conf).exists():
        message = ("no test batch system: QFITS_TEST_SLURM_CONF is unset "
                   "(scripts/test starts one; by hand, as root: export "
                   "QFITS_TEST_SLURM_CONF=$(scripts/slurm-start "
                   "build/slurm))")
        if IN_CI:
            pytest.fail(message)
        pytest.skip(message)
    return conf
