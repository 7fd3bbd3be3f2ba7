"""Shared pieces of the benchmarks: interleaved repetitions, medians, machine facts, RSS.

Absolute times on a shared 2-core box are noisy, so every comparison runs its variants
interleaved (A, B, A, B, ...) and reports the median of each and the median of the
per-repetition ratios.
"""

from __future__ import annotations

import os
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("CXR_BENCH_DATA", ROOT.parent / "shared" / "data" / "chest_xray"))
"""The Kaggle-layout folder measured on (``CXR_BENCH_DATA`` points elsewhere, e.g. a
subset carried to a GPU machine)."""


def machine() -> dict:
    """What the figures were measured on (they mean little without it)."""
    device = "cuda" if torch.cuda.is_available() else "cpu"
    return {
        "device": device,
        "device_name": torch.cuda.get_device_name() if device == "cuda" else _cpu_name(),
        "cpus": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "load_average": [round(x, 2) for x in os.getloadavg()],
    }


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def interleaved(variants: dict[str, Callable[[], float]], reps: int) -> dict[str, list[float]]:
    """Run each variant once per repetition, in turn; each returns its own figure."""
    out: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(reps):
        for name, fn in variants.items():
            out[name].append(fn())
    return out


def alternate(variants: dict[str, Callable[[int], float]], rounds: int) -> dict[str, list[float]]:
    """Round ``i`` runs every variant once on input ``i``, in A B C order on even rounds and
    C B A on odd ones, so slow drifts in machine load hit every variant alike."""
    out: dict[str, list[float]] = {name: [] for name in variants}
    names = list(variants)
    for i in range(rounds):
        for name in names if i % 2 == 0 else names[::-1]:
            out[name].append(variants[name](i))
    return out


def summarise(samples: dict[str, list[float]], baseline: str, higher_is_better: bool) -> dict:
    """Median per variant, and each variant's median per-repetition ratio to ``baseline``.

    Ratios are oriented so that > 1 means the variant is better than the baseline.
    """
    result = {}
    for name, values in samples.items():
        pairs = zip(values, samples[baseline])
        ratios = [(v / b if higher_is_better else b / v) for v, b in pairs if v and b]
        result[name] = {
            "median": round(statistics.median(values), 3),
            "samples": [round(v, 3) for v in values],
            "ratio_to_" + baseline: round(statistics.median(ratios), 3) if ratios else None,
        }
    return result


def timed(fn: Callable[[], object]) -> float:
    """Seconds ``fn`` takes, device work included."""
    sync()
    start = time.perf_counter()
    fn()
    sync()
    return time.perf_counter() - start


def percentile(values: list[float], q: float) -> float:
    """Linear-interpolated percentile (``q`` in 0..100), as numpy's default."""
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q / 100
    low = int(pos)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (pos - low)


def tree_rss_bytes(pid: int) -> int:
    """Resident memory of a process and all its descendants, from /proc (Linux)."""
    children: dict[int, list[int]] = {}
    rss: dict[int, int] = {}
    page = os.sysconf("SC_PAGE_SIZE")
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            statm = (entry / "statm").read_text().split()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry.name))
        rss[int(entry.name)] = int(statm[1]) * page
    total, todo = 0, [pid]
    while todo:
        current = todo.pop()
        total += rss.get(current, 0)
        todo.extend(children.get(current, []))
    return total
