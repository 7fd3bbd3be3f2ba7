"""The run store: one self-describing folder per training run (its files:
:mod:`cxr_core.store.records`).

The folders are the only record: listing and filtering read them. Status is written by
the training process itself, with a heartbeat, so a process that died without a word
(kill -9, power cut) reads as "interrupted".
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from cxr_core.data.folders import SplitManifest
from cxr_core.errors import UserError
from cxr_core.settings import bundled_runs_dir, default_runs_dir
from cxr_core.store import processes, records
from cxr_core.store.records import (
    Adaptation,
    Calibration,
    Config,
    Evaluation,
    HistoryRecord,
    Meta,
    SplitRecord,
    Status,
)

ACTIVE = ("queued", "running")
HEARTBEAT_TIMEOUT_S = 90.0


def new_run_id(arch: str) -> str:
    """``<date>-<time>-<arch>-<4 hex>``: sortable, readable, unique enough per second."""
    return f"{datetime.now():%Y%m%d-%H%M%S}-{arch}-{uuid.uuid4().hex[:4]}"


def normalise_tags(tags: Any) -> list[str]:
    """Tags as a sorted list of short lower-case words (a comma-separated string works)."""
    if isinstance(tags, str):
        tags = tags.split(",")
    cleaned = sorted({str(t).strip().lower() for t in tags if str(t).strip()})
    for tag in cleaned:
        if len(tag) > 30 or not tag.replace("-", "").replace("_", "").isalnum():
            raise UserError(f"tag {tag!r}: letters, digits, - and _ only, at most 30")
    return cleaned


def may_change(run: Run, session: str | None, operator: bool) -> bool:
    """Whether someone may rename, tag, cancel or delete ``run``: an operator may change
    any run (a bundled one's files stay read-only all the same); a visitor (an app
    session) only the runs it launched, so on a shared deployment nobody touches
    another's runs."""
    if operator:
        return True
    return bool(session) and not run.bundled and run.meta().get("owner") == session


_STATUS_LOCK = threading.Lock()


@dataclass(frozen=True)
class Run:
    path: Path
    bundled: bool = False
    overlay: Path | None = None
    """Where records added to a read-only bundled run live (in the writable store)."""

    @property
    def id(self) -> str:
        return self.path.name

    @property
    def weights(self) -> Path:
        return self.path / records.WEIGHTS

    @property
    def added(self) -> Path:
        """Where records added after training live (:data:`records.DERIVED`, meta.json):
        the run folder, or for a bundled run the writable store, so checkpoints/ is never
        touched."""
        return self.overlay or self.path

    @property
    def evaluations_dir(self) -> Path:
        """Evaluation sets added after training (``evaluate --save``)."""
        return self.added / records.EVALUATIONS

    def evaluation_set_file(self, key: str) -> Path:
        """Where the image set with fingerprint ``key``, scored after training, is kept."""
        return records.evaluation_set_file(self.added, key)

    def cam_check_file(self, set_key: str, method: str, n: int) -> Path:
        """Where a CAM check of ``n`` images of a set by ``method`` is kept."""
        return records.cam_check_file(self.added, set_key, method, n)

    def evaluation_set_files(self) -> list[Path]:
        """The image sets scored after training, one file each, by name."""
        folder = self.evaluations_dir
        return sorted(folder.glob("*.json")) if folder.is_dir() else []

    def record_files(self) -> list[Path]:
        """The files the run's scored sets are read from (for a reader's cache key)."""
        files = [self.path / records.EVALUATION, self.path / records.SPLIT]
        return files + self.evaluation_set_files()

    def forget_derived(self) -> None:
        """Remove the :data:`records.DERIVED` records (after its weights changed)."""
        base = self.added
        for name in records.DERIVED:
            target = base / name
            if target.is_dir():
                shutil.rmtree(target)
            else:
                target.unlink(missing_ok=True)

    def config(self) -> Config:
        return records.read(self.path, records.CONFIG, {})

    def save_config(self, config: Config) -> None:
        records.write(self.path, records.CONFIG, config)

    def split(self) -> SplitRecord | None:
        return records.read(self.path, records.SPLIT)

    def manifest(self) -> SplitManifest | None:
        """The run's split as a :class:`SplitManifest`; None when it kept none."""
        split = self.split()
        return records.split_manifest(split) if split else None

    def save_split(self, split: SplitRecord) -> None:
        records.write(self.path, records.SPLIT, split)

    def environment(self) -> dict:
        return records.read(self.path, records.ENVIRONMENT, {})

    def save_environment(self, environment: dict) -> None:
        records.write(self.path, records.ENVIRONMENT, environment)

    def evaluation(self) -> Evaluation | None:
        return records.read(self.path, records.EVALUATION)

    def save_evaluation(self, evaluation: Evaluation) -> None:
        records.write(self.path, records.EVALUATION, evaluation)

    @property
    def evaluation_file(self) -> Path:
        return self.path / records.EVALUATION

    def calibration(self) -> Calibration | None:
        """The temperature fitted on the run's validation scores, if one was."""
        return records.read(self.added, records.CALIBRATION, run_id=self.id)

    def save_calibration(self, calibration: Calibration) -> None:
        records.write(self.added, records.CALIBRATION, calibration)

    def adaptation(self) -> Adaptation | None:
        """What was adapted without labels, on which films; None for an inductive run."""
        return records.read(self.path, records.ADAPTATION, run_id=self.id)

    def save_adaptation(self, adaptation: Adaptation) -> None:
        records.write(self.path, records.ADAPTATION, adaptation)

    @property
    def calibration_file(self) -> Path:
        return self.added / records.CALIBRATION

    @property
    def checkpoint(self) -> tuple[Path, Path]:
        """The resume state: (last weights, last training state)."""
        return self.path / records.LAST_WEIGHTS, self.path / records.LAST_STATE

    def has_checkpoint(self) -> bool:
        return records.has_checkpoint(self.path)

    def status(self) -> Status:
        """Status with liveness applied: an active run whose process is gone reads as
        interrupted. Only read: status.json belongs to the process that trains the run."""
        status = records.read(self.path, records.STATUS, {"status": "queued"})
        if status.get("status") in ACTIVE and not self.bundled and self._is_dead(status):
            status = {**status, "status": "interrupted", "message": "training process stopped"}
        return status

    def meta(self) -> Meta:
        """What a user says about the run: ``name``, ``tags``, ``note``, and ``owner`` (the
        app session that launched it). A bundled run's lives in the writable store."""
        return records.read(self.added, records.META, {}, self.id)

    def set_meta(self, **fields: Any) -> Meta:
        """Update name, tags, note or owner (None leaves a field as it is)."""
        unknown = set(fields) - {"name", "tags", "note", "owner"}
        if unknown:
            raise UserError(f"unknown run field(s): {', '.join(sorted(unknown))}")
        meta = {**self.meta(), **{k: v for k, v in fields.items() if v is not None}}
        name, note = str(meta.get("name", "")), str(meta.get("note", ""))
        if len(name) > 80 or "\n" in name:
            raise UserError("a run's name is one line of at most 80 characters")
        if len(note) > 2000:
            raise UserError("a run's note holds at most 2000 characters")
        meta["tags"] = normalise_tags(meta.get("tags", []))
        records.write(self.added, records.META, meta)
        return meta

    @property
    def label(self) -> str:
        """The run's name when it has one, else its id."""
        return self.meta().get("name") or self.id

    @staticmethod
    def _is_dead(status: dict) -> bool:
        """On this host the process table decides (a busy CPU can delay a heartbeat by
        minutes, and a slow step must not be taken for a dead run); from another host
        only a stale heartbeat tells."""
        pid, host = status.get("pid"), status.get("host")
        if pid and host == socket.gethostname():
            started = processes.process_start_time(pid)
            reused = started is not None and started > status.get("heartbeat", 0) + 5
            return not processes.pid_alive(pid) or reused
        return time.time() - status.get("heartbeat", 0) > HEARTBEAT_TIMEOUT_S

    def set_status(self, status: str, **fields: Any) -> None:
        """Written only by the process that owns the run (its heartbeat thread included)."""
        with _STATUS_LOCK:
            self._write_status(status, fields)

    def heartbeat(self) -> None:
        """Refresh the heartbeat of an active run, leaving everything else as it is."""
        with _STATUS_LOCK:
            current = records.read(self.path, records.STATUS, {})
            if current.get("status") in ACTIVE:
                self._write_status(current["status"], {})

    @contextmanager
    def keep_alive(self, every_s: float = 10.0) -> Iterator[None]:
        """Heartbeat from a background thread while the block runs, so a step that takes
        minutes (ViT on a CPU) does not look like a dead process from another host."""
        stop = threading.Event()

        def beat() -> None:
            while not stop.wait(every_s):
                self.heartbeat()

        thread = threading.Thread(target=beat, name=f"heartbeat-{self.id}", daemon=True)
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join()

    def _write_status(self, status: str, fields: dict) -> None:
        current = records.read(self.path, records.STATUS, {})
        now = time.time()
        update = {**current, **fields, "status": status, "heartbeat": now}
        update.setdefault("created", now)
        update["pid"], update["host"] = os.getpid(), socket.gethostname()
        if status == "running":
            update.setdefault("started", now)
        if status not in ACTIVE:
            update["ended"] = now
        records.write(self.path, records.STATUS, update)

    def history(self) -> list[HistoryRecord]:
        return records.read_history(self.path)

    @property
    def history_file(self) -> Path:
        return self.path / records.HISTORY

    def append_history(self, record: HistoryRecord) -> None:
        records.append_history(self.path, record)

    def truncate_history(self, last_epoch: int) -> None:
        """On resume: drop what the interrupted epoch had logged past the checkpoint."""
        kept = [r for r in self.history() if r.get("epoch", 0) <= last_epoch]
        records.write_history(self.path, kept)

    def request_cancel(self) -> None:
        (self.path / records.CANCEL).touch()

    def cancel_requested(self) -> bool:
        return (self.path / records.CANCEL).exists()

    def clear_cancel(self) -> None:
        """Forget a cancel request (before the run is resumed)."""
        (self.path / records.CANCEL).unlink(missing_ok=True)

    def summary(self) -> dict:
        """One flat row for tables and the CLI."""
        config, status, evaluation = self.config(), self.status(), self.evaluation() or {}
        test = records.report_on_test(evaluation)
        meta = self.meta()
        row = {
            "id": self.id,
            "name": meta.get("name"),
            "tags": meta.get("tags", []),
            "arch": config.get("arch"),
            "status": status.get("status"),
            "bundled": self.bundled,
            "created": status.get("created"),
            "pretrained": config.get("pretrained"),
            "img_size": config.get("img_size"),
            "epochs": config.get("epochs"),
            "epoch": status.get("epoch"),
            "data": config.get("data"),
            "val_auc": records.split_report(evaluation, "val").get("roc_auc"),
            "test_split": evaluation.get("test_split"),
            "test_auc": test.get("roc_auc"),
            "test_accuracy": test.get("accuracy"),
            "message": status.get("message"),
        }
        return row


class RunStore:
    """Runs under ``root`` (writable) and the bundled ones (read-only)."""

    def __init__(self, root: Path | str | None = None, include_bundled: bool = True) -> None:
        self.root = Path(root) if root else default_runs_dir()
        self.bundled = bundled_runs_dir() if include_bundled else None

    def create(self, config: dict, run_id: str | None = None) -> Run:
        """A new run folder with ``config`` as its config.json; a ``meta`` key in it (name,
        tags, note, owner, as launchers pass them) becomes the run's meta.json."""
        config = dict(config)
        meta = config.pop("meta", None)
        run_id = run_id or new_run_id(config["arch"])
        if not run_id.replace("-", "").replace("_", "").isalnum():
            raise UserError(f"run id {run_id!r} may only hold letters, digits, - and _")
        path = self.root / run_id
        try:
            path.mkdir(parents=True)
        except FileExistsError:
            raise UserError(f"run {run_id} already exists in {self.root}") from None
        run = Run(path)
        if meta:
            run.set_meta(**meta)
        run.set_status("queued")
        # config.json last: it makes the folder a run to listings and to the queue's
        # liveness checks, which must never see a run without its status.
        run.save_config(config)
        return run

    def _folders(self) -> Iterator[Run]:
        for base, bundled in ((self.root, False), (self.bundled, True)):
            if base is None or not base.is_dir():
                continue
            for child in sorted(base.iterdir()):
                if records.is_run(child):
                    overlay = None
                    if bundled:
                        version = records.record_version(child)
                        overlay = self.root / ".bundled" / f"{child.name}-{version}"
                    yield Run(child, bundled, overlay)

    def get(self, run_id: str) -> Run:
        for run in self._folders():
            if run.id == run_id:
                return run
        raise UserError(f"no run {run_id!r} in {self.root} or the bundled runs")

    def list(
        self, status: str | None = None, arch: str | None = None, tag: str | None = None
    ) -> list[Run]:
        """Runs, the user's newest first then the bundled ones, optionally filtered.

        Read from the run folders each time: they are the only record (a few hundred
        folders list in milliseconds), so nothing can go stale."""
        rows = []
        for run in self._folders():
            state = run.status()
            if status and state.get("status") != status:
                continue
            if arch and run.config().get("arch") != arch:
                continue
            if tag and tag.lower() not in run.meta().get("tags", []):
                continue
            rows.append((run.bundled, -(state.get("created") or 0), run.id, run))
        return [row[-1] for row in sorted(rows, key=lambda r: r[:3])]

    def delete(self, run: Run) -> None:
        """Remove a finished run and everything recorded for it; bundled runs, runs
        still training or queued, and members of an ensemble (which would stop working)
        cannot be deleted. The folder is first renamed out of sight, so a reader never
        meets half a run."""
        if run.bundled:
            raise UserError(f"{run.id} is a bundled run; it cannot be deleted")
        if run.status().get("status") in ACTIVE:
            raise UserError(f"run {run.id} is still {run.status()['status']}: cancel it first")
        using = [r.id for r in self._folders() if run.id in records.members(r.config())]
        if using:
            raise UserError(
                f"run {run.id} is a member of the ensemble(s) {', '.join(using)}: "
                "delete those first"
            )
        trash = self.root / f".deleting-{run.id}-{uuid.uuid4().hex[:6]}"
        run.path.rename(trash)
        shutil.rmtree(trash, ignore_errors=True)
        for leftover in (
            self.root / ".logs" / f"{run.id}.log",
            self.root / ".logs" / f"{run.id}.json",
        ):
            leftover.unlink(missing_ok=True)

    def wait_for_slot(self, run: Run, limit: int, poll_s: float = 1.0) -> None:
        """Block until ``run`` may start: fewer than ``limit`` runs running and no older
        queued run waiting. Each waiting process checks under one file lock, so the queue
        needs no daemon and survives the app being closed."""
        from filelock import FileLock

        lock = FileLock(str(self.root / ".queue.lock"))
        while True:
            with lock:
                mine = run.status()
                runs = [(r, r.status()) for r in self._folders() if not r.bundled]
                running = sum(s.get("status") == "running" for _, s in runs)
                older = [
                    r
                    for r, s in runs
                    if s.get("status") == "queued" and s.get("created", 0) < mine["created"]
                ]
                if running < limit and not older:
                    run.set_status("running", phase="starting")
                    return
                if run.cancel_requested():
                    run.set_status("cancelled", message="cancelled while queued")
                    raise UserError(f"run {run.id} was cancelled while queued")
                run.set_status("queued", phase=f"waiting: {running} running, {len(older)} ahead")
            time.sleep(poll_s)


def run_of_weights(weights: Path) -> Run:
    """The run folder of a weights file; a bundled one with its writable overlay."""
    folder, store = weights.parent, RunStore()
    if store.bundled is not None and folder.resolve().parent == store.bundled.resolve():
        with contextlib.suppress(UserError):  # gone from the bundle: the folder as it is
            return store.get(folder.name)
    return Run(folder)
