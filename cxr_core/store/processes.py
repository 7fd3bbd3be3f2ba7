"""Whether the process that writes a run's status still runs, from the process table:
a pid that is gone, a zombie, or a pid reused by a younger process is no longer the run's."""

from __future__ import annotations

import os


def pid_alive(pid: int) -> bool:
    """Whether ``pid`` runs. A zombie does not: a process killed with -9 stays one until
    its parent (the app that launched it) reaps it, which may be never."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):  # no /proc (macOS): kill(0) is all we know
        return True


def process_start_time(pid: int) -> float | None:
    """When ``pid`` started (Unix time), to tell a reused pid from the run's own process;
    None where /proc is missing."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            ticks = int(f.read().rsplit(")", 1)[1].split()[19])
        with open("/proc/stat") as f:
            boot = next(int(line.split()[1]) for line in f if line.startswith("btime"))
    except (OSError, IndexError, ValueError, StopIteration):
        return None
    return boot + ticks / os.sysconf("SC_CLK_TCK")
