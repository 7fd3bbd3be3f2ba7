"""Launching training runs as their own OS processes (the local executor).

A run started from the app must outlive the Streamlit script that started it: a page
refresh, a closed tab or another session must neither stop nor duplicate it. So every
run is ``python -m cxr_core.execution.jobs RUN_ID`` in a new process session, and everything the
app shows comes from the run store, never from session state.

The child creates its run folder and waits for its turn in the store's file-lock queue
before it imports torch: a sweep of thirty queued runs is thirty small processes, not
thirty copies of torch.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from cxr_core.errors import UserError
from cxr_core.fileio import atomic_write_json, read_json
from cxr_core.settings import PROJECT_ROOT, default_runs_dir
from cxr_core.store.runs import Run, RunStore, new_run_id

if TYPE_CHECKING:
    from cxr_core.training.config import TrainConfig


@dataclass
class Job:
    """One run to train: its validated config, its id, and what else its ``config.json``
    records beside the config (a sweep's id and grid point, the command that made it)."""

    config: TrainConfig
    run_id: str = ""
    extra: dict = field(default_factory=dict)
    half_weights: bool = False

    def __post_init__(self) -> None:
        self.run_id = self.run_id or new_run_id(self.config.arch)

    def record(self) -> dict:
        """The run's ``config.json``."""
        return {**self.config.to_dict(), **self.extra, "half_weights": self.half_weights}


def logs_dir(runs_dir: Path) -> Path:
    """Where launched processes write their output and their job files."""
    return Path(runs_dir) / ".logs"


def spawn(argv: list[str], log: Path) -> subprocess.Popen:
    """``python ARGV`` detached from this process (its own session, output to ``log``),
    so it outlives the app or CLI that started it."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as out:
        return subprocess.Popen(
            [sys.executable, *argv],
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            cwd=PROJECT_ROOT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )


def launch_local(job: Job, runs_dir: Path, queue: int = 1) -> subprocess.Popen:
    """Start one detached training process for ``job``.

    ``queue`` is how many runs may train at once (1 on a CPU: two would only share the
    cores). The process's output goes to ``<runs_dir>/.logs/<run id>.log``.
    """
    runs_dir = Path(runs_dir).resolve()  # the child runs in the project folder
    logs = logs_dir(runs_dir)
    atomic_write_json(logs / f"{job.run_id}.json", job.record())
    argv = ["-m", "cxr_core.execution.jobs", "--runs-dir", str(runs_dir), "--queue", str(queue)]
    return spawn([*argv, job.run_id], logs / f"{job.run_id}.log")


def launch_training(
    cfg: TrainConfig,
    runs_dir: Path | None = None,
    queue: int = 1,
    half_weights: bool = False,
) -> str:
    """Start a detached training process; returns the run id it will write to."""
    job = Job(cfg, half_weights=half_weights)
    launch_local(job, Path(runs_dir or default_runs_dir()), queue)
    return job.run_id


def fit_recorded(run: Run, record: dict, resume: bool = False) -> dict:
    """Train ``run`` from its ``config.json`` ``record`` (or resume it) in this process,
    recording any failure in its status before re-raising it: on a local process and on
    a Ray worker alike."""
    try:
        from cxr_core.execution.allocator import keep_freed_memory
        from cxr_core.training.config import TrainConfig
        from cxr_core.training.engine import fit

        keep_freed_memory()  # this process only trains: reuse its activation memory
        cfg = TrainConfig.from_dict(record)
        evaluation = fit(run, cfg, resume=resume, half_weights=record.get("half_weights", False))
        if run.status().get("status") == "completed":
            _keep_guard_reference(run)
        return evaluation
    except UserError as exc:
        run.set_status("failed", message=str(exc))
        raise
    except Exception as exc:
        run.set_status("failed", message=f"{type(exc).__name__}: {exc}")
        raise


def _keep_guard_reference(run: Run) -> None:
    """The input guard's reference of the finished run, made now while its validation films
    are at hand (a later Predict may run where the data is not)."""
    from cxr_core.predict.inference import load_model
    from cxr_core.predict.input_guard import reference_for

    reference_for(load_model(run.path))


def train_in_store(store: RunStore, record: dict, run_id: str, queue: int = 0) -> Run:
    """The whole life of one run in this process: create its folder from ``record`` (its
    ``config.json``), wait for a queue slot, then train; torch is imported only once the
    slot is ours."""
    run = store.create(record, run_id)
    print(run.id, flush=True)
    if queue:
        store.wait_for_slot(run, queue)
    fit_recorded(run, record)
    return run


def tail(log: Path, lines: int = 20) -> str:
    """The last non-blank lines of a process's output (empty if there is none yet)."""
    if not log.exists():
        return ""
    text = log.read_text(errors="replace").replace("\r", "\n")
    return "\n".join([line for line in text.splitlines() if line.strip()][-lines:])


def log_tail(run_id: str, runs_dir: Path | None = None, lines: int = 20) -> str:
    """The last lines a launched run printed (empty if it has not started yet)."""
    return tail(logs_dir(Path(runs_dir or default_runs_dir())) / f"{run_id}.log", lines)


def main(argv: list[str] | None = None) -> int:
    """``python -m cxr_core.execution.jobs [--runs-dir D] [--queue N] RUN_ID``: train the job that
    :func:`launch_local` wrote to ``D/.logs/RUN_ID.json``."""
    parser = argparse.ArgumentParser(prog="python -m cxr_core.execution.jobs")
    parser.add_argument("--runs-dir", type=Path, default=None)
    parser.add_argument("--queue", type=int, default=1)
    parser.add_argument("run_id")
    args = parser.parse_args(argv)
    store = RunStore(args.runs_dir, include_bundled=False)
    try:
        record = read_json(logs_dir(store.root) / f"{args.run_id}.json")
        run = train_in_store(store, record, args.run_id, args.queue)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"run {run.id}: {run.status().get('status')}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
