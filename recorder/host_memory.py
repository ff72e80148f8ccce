"""Host memory: keep the memory XLA's CPU runtime frees inside the process, instead of handing it back to the
kernel after every step and faulting it in again on the next.

XLA's CPU backend allocates a program's buffers with malloc at every execution and frees them at its end.
learn_to_see's training step at batch 1024 takes a 133 MB temporary buffer and two of 58 MB each time. glibc
serves allocations that large with fresh mmaps (or from per-thread arenas that it creates and deletes), and
gives them back on free, so every step touches about 250 MB of new pages: 32,700 page faults and 49–56 ms of
kernel CPU per step on the 2-core development machine (`benchmarks/host_memory.py`).

`keep_freed_memory()` sets three of glibc's malloc parameters (mallopt(3)): no mmapped chunks, no trimming of
the heap's top, and one arena for all threads. Freed buffers then stay in the heap and the next step reuses
the same pages. The price is that the process keeps its peak heap for its lifetime (learn_to_see: 1.08 GB
resident at most instead of 0.95). It must run before JAX starts its backend: threads that already allocated
keep the arena they have. `emergence record`, `resume` and `sweep` call it first; an own loop can call it at
the top of its script. EMERGENCE_KEEP_FREED_MEMORY=0 turns it off.

Linux with glibc only; elsewhere (macOS, musl) it does nothing and says so by returning False. It imports no
JAX.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

# mallopt(3) parameter numbers, from glibc's <malloc.h>
M_TRIM_THRESHOLD = -1
M_MMAP_MAX = -4
M_ARENA_MAX = -8
NEVER_TRIM = 2**31 - 1  # the largest threshold mallopt takes (an int): the heap's top is never given back
ENV = "EMERGENCE_KEEP_FREED_MEMORY"

_applied: list[bool] = []  # once per process: the answer of the first call


def keep_freed_memory() -> bool:
    """Sets glibc's malloc to keep freed memory for reuse (see the module's docs); True when it did (now or
    earlier in this process), False where the C library is not glibc or ENV is 0."""
    if _applied:
        return _applied[0]
    _applied.append(os.environ.get(ENV, "1") != "0" and sys.platform.startswith("linux") and _mallopt_all())
    return _applied[0]


def _mallopt_all() -> bool:
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
        libc.gnu_get_libc_version  # glibc's own symbol: musl has a mallopt that does nothing
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    # mallopt returns 1 on success; the arena count last, as it only governs threads that allocate from now on
    return all(mallopt(param, value) == 1 for param, value in
               ((M_MMAP_MAX, 0), (M_TRIM_THRESHOLD, NEVER_TRIM), (M_ARENA_MAX, 1)))
