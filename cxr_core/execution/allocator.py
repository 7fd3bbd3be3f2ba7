"""glibc malloc settings for a training process.

A training step allocates and frees the same large activation buffers (tens to hundreds of
MB) at every step. glibc serves blocks over its mmap threshold (32 MB at most) with fresh
``mmap`` calls and unmaps them on free, so each step page-faults and zeroes those pages
again: at 224 px a third of small_cnn's CPU time went to the kernel. Serving them from
the heap and keeping freed memory removes that (1.2-1.35x on a 2-core CPU, see
benchmarks/), at the price of a 15-45% higher peak resident memory (heap fragmentation).
So only training processes (``train``/``resume``) do it, never a long-lived server, and
only where memory is plentiful: not on a 2.7 GB Community Cloud box.
"""

from __future__ import annotations

import ctypes
import sys
from pathlib import Path

from cxr_core.settings import keep_freed_memory_setting

MIN_MEMORY_BYTES = 8 * 2**30
"""Below this much memory (the cgroup's limit or the machine's), glibc keeps its defaults."""

_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4


def memory_limit_bytes() -> int | None:
    """The memory this process may use: its cgroup's limit, else the machine's RAM."""
    limits = []
    for path in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            value = Path(path).read_text().strip()
        except OSError:
            continue
        if value.isdigit():
            limits.append(int(value))
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                limits.append(int(line.split()[1]) * 1024)
    except (OSError, ValueError, IndexError):
        pass
    return min(limits) if limits else None


def keep_freed_memory() -> bool:
    """Serve large blocks from the heap and keep freed memory for reuse; True if applied.

    Not applied off Linux, without glibc (musl), with less than 8 GiB of memory, or with
    ``CXR_KEEP_FREED_MEMORY=0`` (``=1`` applies it whatever the memory).
    """
    setting = keep_freed_memory_setting()
    if not sys.platform.startswith("linux") or setting is False:
        return False
    if setting is not True and (memory_limit_bytes() or 0) < MIN_MEMORY_BYTES:
        return False
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    return bool(mallopt(_M_MMAP_MAX, 0)) and bool(mallopt(_M_TRIM_THRESHOLD, 2**31 - 1))
