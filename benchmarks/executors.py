"""Executors: 8 tiny runs, local one at a time vs Ray with 2 workers.

    python -m benchmarks.executors [--runs 8] [--rounds 1] [--out FILE.json]

Local: the default executor, one detached process per run through the run store's queue
(one trains at a time, with every core). Ray: a real cluster started here on 127.0.0.1,
two nodes of one CPU each (two workers), each run one streaming task, its driver writing
into a run store no worker can see. A control, local x2: the local executor with two runs
at a time of one thread each, as the Ray tasks train; Ray against it is the cost of Ray.
All train the same runs (small_cnn, 64 px, synthetic data, 2 epochs), timed from launch
until every run is completed in the store.

Per-task overhead is the share of the wall time not spent in training:
``(wall x workers - sum of train_time_s) / runs``, where ``train_time_s`` (from each run's
evaluation) covers data decoding and the epochs; what is left is process start and
imports, queueing, streaming back, and the final evaluation. Cluster start-up is reported
apart, since a cluster outlives many sweeps. Rounds alternate the executors' order.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from contextlib import contextmanager  # noqa: E402

from benchmarks.common import machine  # noqa: E402
from cxr_core.execution.executors import LocalExecutor, RayExecutor  # noqa: E402
from cxr_core.execution.jobs import Job  # noqa: E402
from cxr_core.store.runs import Run, RunStore  # noqa: E402
from cxr_core.training.config import TrainConfig  # noqa: E402
from tests.raycluster import ray_cluster  # noqa: E402

WORKERS = 2


def jobs(count: int) -> list[Job]:
    return [
        Job(TrainConfig(arch="small_cnn", data="synthetic:20", img_size=64, epochs=2,
                        batch_size=8, seed=seed))
        for seed in range(count)
    ]  # fmt: skip


@contextmanager
def threads(count: int | None):
    """Processes started inside train with ``count`` threads (None: torch's default)."""
    saved = os.environ.get("OMP_NUM_THREADS")
    if count:
        os.environ["OMP_NUM_THREADS"] = str(count)
    try:
        yield
    finally:
        os.environ.pop("OMP_NUM_THREADS", None)
        if saved is not None:
            os.environ["OMP_NUM_THREADS"] = saved


def measure(executor, count: int, workers: int, thread_count: int | None) -> dict:
    """Launch ``count`` runs into a fresh store and time them to the last completion."""
    with tempfile.TemporaryDirectory(prefix="bench-executors-") as tmp:
        runs_dir = Path(tmp)
        store = RunStore(runs_dir, include_bundled=False)
        start = time.perf_counter()
        with threads(thread_count):
            launched = executor.launch(jobs(count), runs_dir)
        statuses = launched.wait(store, poll_s=0.1)
        wall = time.perf_counter() - start
        failed = {k: v for k, v in statuses.items() if v.get("status") != "completed"}
        if failed:
            raise RuntimeError(f"{executor.name}: runs did not complete: {failed}")
        train = [Run(runs_dir / r).evaluation()["train_time_s"] for r in launched.run_ids]
    return {
        "wall_s": round(wall, 2),
        "train_time_s_mean": round(statistics.fmean(train), 2),
        "overhead_per_task_s": round((wall * workers - sum(train)) / count, 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--out", type=Path, help="also write the figures here as JSON")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-cache-") as cache:
        os.environ.setdefault("CXR_CACHE_DIR", cache)
        os.environ["CXR_BUNDLED_DIR"] = str(Path(cache) / "no-bundled-runs")
        result = compare(args.runs, args.rounds)
    print(json.dumps(result, indent=1))
    if args.out:
        args.out.write_text(json.dumps(result, indent=1) + "\n")


def compare(runs: int, rounds: int) -> dict:
    """Every executor ``rounds`` times, in alternating order; medians and ratios."""
    nodes = [{"num_cpus": 1} for _ in range(WORKERS)]
    started = time.perf_counter()
    with ray_cluster(nodes, env={"CXR_CACHE_DIR": os.environ["CXR_CACHE_DIR"]}) as address:
        cluster_s = time.perf_counter() - started
        executors = {  # executor, runs at once, threads per run (Ray sets one per CPU)
            "local": (LocalExecutor(queue=1), 1, None),
            "ray": (RayExecutor(address), WORKERS, None),
            "local x2": (LocalExecutor(queue=WORKERS), WORKERS, 1),
        }
        samples: dict[str, list[dict]] = {name: [] for name in executors}
        for i in range(rounds):
            for name in list(executors) if i % 2 == 0 else list(executors)[::-1]:
                executor, workers, thread_count = executors[name]
                samples[name].append(measure(executor, runs, workers, thread_count))
                print(f"round {i + 1} {name}: {samples[name][-1]}", flush=True)

    def median(name: str, key: str) -> float:
        return round(statistics.median(s[key] for s in samples[name]), 2)

    result = {
        "machine": machine(),
        "runs": runs,
        "rounds": rounds,
        "ray_workers": WORKERS,
        "ray_cluster_start_s": round(cluster_s, 1),
        **{name: {k: median(name, k) for k in samples[name][0]} for name in samples},
        "samples": samples,
    }
    for name in ("local", "local x2"):
        pairs = zip(samples[name], samples["ray"])
        ratio = statistics.median(a["wall_s"] / ray["wall_s"] for a, ray in pairs)
        result[f"{name} / ray wall"] = round(ratio, 2)
    return result


if __name__ == "__main__":
    main()
