"""Scoring runs on a labelled folder in the background, for the Compare page.

One detached process works through the list, one run at a time, scoring each as
``evaluate --run ID --data D --split S --save`` would: the app stays responsive, a refresh
or a closed tab loses nothing, and two scorings never share the CPU. One process for the
whole list pays the imports once, and its runs share the decoded films (the decode cache
the training path fills) and each run's exported graph (``predict.graphs``). A bundled
run's set goes to the writable store, as ``evaluate --save`` always does.

A job is ``<runs>/.logs/<job>.json`` (what to score), ``<job>.outcome.json`` (what the
driver has done so far, rewritten after each run) and one log per run. The driver holds
``<job>.lock`` while it lives, so a reader tells a driver that died from one still at work
without trusting process ids (a dead child of the app stays a zombie until reaped).
"""

from __future__ import annotations

import sys
import time
import traceback
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from filelock import FileLock, Timeout

from cxr_core.data.folders import labelled_images
from cxr_core.data.sources import resolve_data
from cxr_core.errors import UserError
from cxr_core.execution.jobs import logs_dir, spawn
from cxr_core.fileio import atomic_write_json, read_json
from cxr_core.predict.evalsets import fingerprint
from cxr_core.settings import default_runs_dir

FOLDER_SPLITS = {"test": "test", "official_val": "val"}
"""The ``evaluate --split`` choices that name a folder of the data, and that folder."""

START_GRACE_S = 120.0
"""How long a launched driver may take to start (import and lock) before it counts as dead."""


@dataclass(frozen=True)
class Target:
    """The labelled images a folder's split holds, before anything is scored."""

    data: str
    split: str
    name: str
    key: str
    """The fingerprint the set will have (unless some images turn out unreadable)."""
    n: int


def target(data: str, split: str = "test") -> Target:
    """What scoring on ``data``'s ``split`` (test or official_val; a folder holding NORMAL/
    and PNEUMONIA/ directly is taken whole) would score; a UserError for a folder without
    labelled images."""
    if split not in FOLDER_SPLITS:
        raise UserError(f"score on one of {', '.join(FOLDER_SPLITS)}, not {split!r}")
    _, samples, name = labelled_images(resolve_data(data), FOLDER_SPLITS[split])
    return Target(data, split, name, fingerprint([s.path for s in samples]), len(samples))


@dataclass(frozen=True)
class EvalJob:
    id: str
    runs: tuple[str, ...]
    data: str
    split: str
    runs_dir: Path
    created: float

    @property
    def file(self) -> Path:
        return logs_dir(self.runs_dir) / f"{self.id}.json"

    @property
    def outcome_file(self) -> Path:
        return logs_dir(self.runs_dir) / f"{self.id}.outcome.json"

    @property
    def lock(self) -> FileLock:
        return FileLock(str(logs_dir(self.runs_dir) / f"{self.id}.lock"))

    def log(self, run_id: str) -> Path:
        return logs_dir(self.runs_dir) / f"{self.id}-{run_id}.log"

    def to_json(self) -> dict:
        return {
            "id": self.id,
            "runs": list(self.runs),
            "data": self.data,
            "split": self.split,
            "runs_dir": str(self.runs_dir),
            "created": self.created,
        }

    @classmethod
    def read(cls, file: Path) -> EvalJob:
        data = read_json(file)
        return cls(
            data["id"],
            tuple(data["runs"]),
            data["data"],
            data["split"],
            Path(data["runs_dir"]),
            data["created"],
        )


@dataclass
class Progress:
    """Where a job stands: each run of its list is done (with the saved set's
    fingerprint), failed (with the last line of its log), being scored, or waiting."""

    done: dict[str, str] = field(default_factory=dict)
    failed: dict[str, str] = field(default_factory=dict)
    running: str | None = None
    waiting: list[str] = field(default_factory=list)
    finished: bool = False

    @property
    def fraction(self) -> float:
        total = len(self.done) + len(self.failed) + bool(self.running) + len(self.waiting)
        return (len(self.done) + len(self.failed)) / total if total else 1.0


def _alive(job: EvalJob) -> bool:
    """Whether the job's driver holds its lock (so it lives)."""
    try:
        with job.lock.acquire(timeout=0):
            return False
    except Timeout:
        return True


def progress(job: EvalJob) -> Progress:
    """What ``job`` has done so far. A driver that died leaves its unscored runs failed."""
    outcome = read_json(job.outcome_file) if job.outcome_file.exists() else {}
    results = outcome.get("runs", {})
    out = Progress(finished=bool(outcome.get("finished")))
    for run_id in job.runs:
        result = results.get(run_id, {})
        if result.get("key"):
            out.done[run_id] = result["key"]
        elif "error" in result:
            out.failed[run_id] = result["error"]
        elif outcome.get("running") == run_id and not out.finished:
            out.running = run_id
        else:
            out.waiting.append(run_id)
    if not out.finished and not _alive(job) and time.time() - job.created > START_GRACE_S:
        stopped = "the scoring process stopped before this run"
        out.failed |= {r: stopped for r in [*([out.running] if out.running else []), *out.waiting]}
        out.running, out.waiting, out.finished = None, [], True
    return out


def current(runs_dir: Path | None = None) -> EvalJob | None:
    """The newest scoring job of this runs folder, if any was launched."""
    folder = logs_dir(Path(runs_dir or default_runs_dir()))
    jobs = [EvalJob.read(f) for f in folder.glob("score-*.json") if ".outcome." not in f.name]
    return max(jobs, key=lambda j: j.created, default=None)


def launch(
    run_ids: list[str], data: str, split: str = "test", runs_dir: Path | None = None
) -> EvalJob:
    """Start scoring ``run_ids`` on ``data``'s ``split`` in one detached process (one run
    at a time). Refused, with nothing written, when the folder holds no labelled images
    or another scoring job is still at work."""
    if not run_ids:
        raise UserError("no runs to score")
    runs_dir = Path(runs_dir or default_runs_dir()).resolve()  # the driver runs elsewhere
    target(data, split)
    running = current(runs_dir)
    if running is not None and not progress(running).finished:
        raise UserError(
            f"already scoring {len(running.runs)} run(s) on {running.data}; wait for it to end"
        )
    job = EvalJob(
        f"score-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:4]}",
        tuple(run_ids),
        data,
        split,
        runs_dir,
        time.time(),
    )
    atomic_write_json(job.file, job.to_json())
    spawn(
        ["-m", "cxr_core.execution.scoring_jobs", str(job.file)],
        logs_dir(runs_dir) / f"{job.id}.log",
    )
    return job


def _score_one(job: EvalJob, run_id: str) -> dict:
    """Score one run and save the set, as ``evaluate --run ID --save`` does; its
    fingerprint, or the error it ended with (also written to its log)."""
    from cxr_core.predict import evalsets
    from cxr_core.predict.ensembles import load_chosen

    log = job.log(run_id)
    try:
        run, model = load_chosen(job.runs_dir, run_id, None, "cpu")
        folder = FOLDER_SPLITS[job.split]
        evalset = evalsets.score_folder(model, resolve_data(job.data), folder)
        evalsets.save(run, evalset)
    except Exception as exc:  # one run's failure is its own: the others are scored
        error = str(exc) if isinstance(exc, UserError) else f"{type(exc).__name__}: {exc}"
        log.write_text(
            (traceback.format_exc() if not isinstance(exc, UserError) else "") + error + "\n"
        )
        return {"error": error, "log": str(log)}
    log.write_text(f"scored {evalset.name}: {evalset.key}\n")
    return {"key": evalset.key}


def run_job(job: EvalJob) -> Progress:
    """Score the job's runs one after the other, recording each outcome as it comes."""
    with job.lock:
        results: dict[str, dict] = {}
        for run_id in job.runs:
            atomic_write_json(job.outcome_file, {"runs": results, "running": run_id})
            results[run_id] = _score_one(job, run_id)
        atomic_write_json(job.outcome_file, {"runs": results, "finished": True})
    return progress(job)


def main(argv: list[str] | None = None) -> int:
    """``python -m cxr_core.execution.scoring_jobs JOB_FILE``: the driver :func:`launch` starts."""
    (file,) = argv if argv is not None else sys.argv[1:]
    result = run_job(EvalJob.read(Path(file)))
    print(f"scored {len(result.done)}, failed {len(result.failed)}", flush=True)
    return 0 if not result.failed else 1


if __name__ == "__main__":
    sys.exit(main())
