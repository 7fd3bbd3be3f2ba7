"""Launching training runs as their own OS processes.

A run started from the app must outlive the Streamlit script that started it: a page
refresh, a closed tab or another session must neither stop nor duplicate it. So every
run is ``python -m cxr_core train --config FILE --queue N`` in a new process session,
and everything the app shows comes from the run store, never from session state.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from cxr_core.config import TrainConfig
from cxr_core.fileio import atomic_write_json
from cxr_core.runs import new_run_id
from cxr_core.settings import default_runs_dir


def launch_training(
    cfg: TrainConfig,
    runs_dir: Path | None = None,
    queue: int = 1,
    half_weights: bool = False,
) -> str:
    """Start a detached training process; returns the run id it will write to.

    ``queue`` is how many runs may train at once (1 on a CPU: two would only share the
    cores). The process's output goes to ``<runs_dir>/.logs/<run id>.log``.
    """
    runs_dir = Path(runs_dir or default_runs_dir())
    run_id = new_run_id(cfg.arch)
    logs = runs_dir / ".logs"
    logs.mkdir(parents=True, exist_ok=True)
    config_file = logs / f"{run_id}.json"
    atomic_write_json(config_file, cfg.to_dict())
    argv = [
        sys.executable,
        "-m",
        "cxr_core",
        "--runs-dir",
        str(runs_dir),
        "train",
        "--config",
        str(config_file),
        "--run-id",
        run_id,
        "--queue",
        str(queue),
    ]
    if half_weights:
        argv.append("--half-weights")
    with open(logs / f"{run_id}.log", "wb") as log:
        subprocess.Popen(
            argv,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            cwd=Path(__file__).resolve().parent.parent,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
    return run_id


def log_tail(run_id: str, runs_dir: Path | None = None, lines: int = 20) -> str:
    """The last lines a launched run printed (empty if it has not started yet)."""
    log = Path(runs_dir or default_runs_dir()) / ".logs" / f"{run_id}.log"
    if not log.exists():
        return ""
    text = log.read_text(errors="replace").replace("\r", "\n")
    return "\n".join([line for line in text.splitlines() if line.strip()][-lines:])
