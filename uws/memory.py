"""The served process's C heap: large blocks go back to the system.

glibc's ``malloc`` serves a block of 128 kB or more with a mapping of
its own, unmapped when freed, until such a block is freed: it then
raises that threshold to the block's size (up to 32 MB) and serves the
blocks below it from its heaps (one per thread that allocates, up to 8
per core), whose free space is not given back while a live block sits
above it.  The output buffers of waitress (up to 1 MB per response
being sent) thus left the server ~50 MB larger after 20 concurrent job
lists of 10 000 jobs, for good; with the threshold held at 64 kB it
returns to within ~15 MB of its size before (benchmarks/README.md,
"Concurrent unfiltered job lists").  An operator's
``MALLOC_MMAP_THRESHOLD_`` wins.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
from typing import Final

#: ``mallopt``'s parameter number for the threshold (glibc's malloc.h).
M_MMAP_THRESHOLD: Final = -3
#: Blocks of this size or more get a mapping of their own [bytes].
MMAP_THRESHOLD: Final = 64 * 1024
#: The environment variable by which glibc takes the threshold.
ENVIRONMENT: Final = "MALLOC_MMAP_THRESHOLD_"


def return_large_blocks(threshold: int = MMAP_THRESHOLD) -> bool:
    """Hold glibc's mmap threshold at ``threshold`` for this process.

    Returns
    -------
    bool
        Whether it was set: False where the C library is not glibc, or
        where ``MALLOC_MMAP_THRESHOLD_`` already sets it.
    """
    if ENVIRONMENT in os.environ:
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    return bool(mallopt(M_MMAP_THRESHOLD, threshold))
