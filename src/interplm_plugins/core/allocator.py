"""Keep freed tensor memory in the process, so a forward pass does not fault its pages in afresh every time.

glibc's malloc hands every block above its mmap threshold (at most 32 MB) to the kernel with
``mmap`` and returns it with ``munmap`` when freed; the next allocation of the same size maps new
pages, and the kernel zeroes each 4 KB page on first touch. Attention scores and feed-forward
activations of a batch are such blocks, allocated and freed at every layer of every step. Measured
here on the demo PLM's training (2 cores, bf16 autocast): 460,000 page faults a second, 45% of the
CPU time in the kernel, 1.66 s a step; with freed memory kept, 0.83 s a step and no kernel time.

:func:`keep_freed_memory` sets glibc's ``M_MMAP_MAX`` to 0 (blocks come from the heap, which is
reused) and ``M_TRIM_THRESHOLD`` to 1 GiB (the heap's free top is kept). The cost: memory a
process freed stays in its resident size until it exits, so the peak, not the current, use shows in
``top``. The ``interplm`` command line calls it; a library user may, and PyMOL or napari sessions do
not. ``INTERPLM_SYSTEM_MALLOC=1`` in the environment leaves the C library's defaults alone. On
other C libraries (musl, macOS, Windows) it does nothing and says so by returning False.
"""

from __future__ import annotations

import ctypes
import os

#: glibc's mallopt parameter numbers (malloc.h).
M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4
#: Free memory at the heap's top beyond which glibc gives it back.
TRIM_THRESHOLD = 1 << 30
#: Set to anything non-empty to keep the C library's own allocator settings.
ENV_SYSTEM_MALLOC = "INTERPLM_SYSTEM_MALLOC"


def keep_freed_memory() -> bool:
    """Tell glibc's malloc to serve large blocks from its reusable heap and keep freed memory; whether it applied."""
    if os.environ.get(ENV_SYSTEM_MALLOC):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt  # the C library this process runs on
    except (OSError, AttributeError):
        return False  # not glibc
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return bool(mallopt(M_MMAP_MAX, 0)) and bool(mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))
