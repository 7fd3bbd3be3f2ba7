"""The run store: one self-describing folder per training run, plus an SQLite index.

A run folder holds everything needed to audit, compare, resume or reuse a run::

    config.json  env.json  split.json  status.json  history.jsonl
    model.safetensors (best weights)  last.safetensors + last.json (resume state)
    evaluation.json  train.log  cancel (a flag file)

The folders are the truth; ``index.sqlite`` is a cache for listing and filtering that is
re-synced from them. Status is written by the training process itself, with a heartbeat,
so a process that died without a word (kill -9, power cut) is detected as "interrupted".
"""

from __future__ import annotations

import json
import os
import socket
import sqlite3
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from cxr_core.errors import UserError
from cxr_core.fileio import atomic_write_json, read_json
from cxr_core.settings import bundled_runs_dir, default_runs_dir

ACTIVE = ("queued", "running")
HEARTBEAT_TIMEOUT_S = 90.0


def new_run_id(arch: str) -> str:
    """``<date>-<time>-<arch>-<4 hex>``: sortable, readable, unique enough per second."""
    return f"{datetime.now():%Y%m%d-%H%M%S}-{arch}-{uuid.uuid4().hex[:4]}"


def _pid_alive(pid: int) -> bool:
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


def _process_start_time(pid: int) -> float | None:
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
        return self.path / "model.safetensors"

    @property
    def evaluations_dir(self) -> Path:
        """Evaluation sets added after training (``evaluate --save``); for a bundled run
        they go to the writable store, so checkpoints/ is never touched."""
        return (self.overlay or self.path) / "evaluations"

    def _json(self, name: str, default: Any = None) -> Any:
        file = self.path / name
        try:
            return read_json(file)
        except FileNotFoundError:
            return default
        except json.JSONDecodeError:
            raise UserError(f"run {self.id}: {name} is corrupt") from None

    def config(self) -> dict:
        return self._json("config.json", {})

    def split(self) -> dict | None:
        return self._json("split.json")

    def environment(self) -> dict:
        return self._json("env.json", {})

    def evaluation(self) -> dict | None:
        return self._json("evaluation.json")

    def status(self) -> dict:
        """Status with liveness applied: an active run whose process is gone is interrupted."""
        status = self._json("status.json", {"status": "queued"})
        if status.get("status") in ACTIVE and not self.bundled and self._is_dead(status):
            status = {**status, "status": "interrupted", "message": "training process stopped"}
            atomic_write_json(self.path / "status.json", status)
        return status

    @staticmethod
    def _is_dead(status: dict) -> bool:
        """On this host the process table decides (a busy CPU can delay a heartbeat by
        minutes, and a slow step must not be taken for a dead run); from another host
        only a stale heartbeat tells."""
        pid, host = status.get("pid"), status.get("host")
        if pid and host == socket.gethostname():
            started = _process_start_time(pid)
            reused = started is not None and started > status.get("heartbeat", 0) + 5
            return not _pid_alive(pid) or reused
        return time.time() - status.get("heartbeat", 0) > HEARTBEAT_TIMEOUT_S

    def set_status(self, status: str, **fields: Any) -> None:
        """Written only by the process that owns the run (its heartbeat thread included)."""
        with _STATUS_LOCK:
            self._write_status(status, fields)

    def heartbeat(self) -> None:
        """Refresh the heartbeat of an active run, leaving everything else as it is."""
        with _STATUS_LOCK:
            current = self._json("status.json", {})
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
        current = self._json("status.json", {})
        now = time.time()
        update = {**current, **fields, "status": status, "heartbeat": now}
        update.setdefault("created", now)
        update["pid"], update["host"] = os.getpid(), socket.gethostname()
        if status == "running":
            update.setdefault("started", now)
        if status not in ACTIVE:
            update["ended"] = now
        atomic_write_json(self.path / "status.json", update)

    def history(self) -> list[dict]:
        file = self.path / "history.jsonl"
        if not file.exists():
            return []
        records = []
        for line in file.read_text().splitlines():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                continue  # a line cut by a kill mid-write
        return records

    def append_history(self, record: dict) -> None:
        with open(self.path / "history.jsonl", "a") as f:
            f.write(json.dumps(record) + "\n")

    def truncate_history(self, last_epoch: int) -> None:
        """On resume: drop what the interrupted epoch had logged past the checkpoint."""
        kept = [r for r in self.history() if r.get("epoch", 0) <= last_epoch]
        text = "".join(json.dumps(r) + "\n" for r in kept)
        (self.path / "history.jsonl").write_text(text)

    def request_cancel(self) -> None:
        (self.path / "cancel").touch()

    def cancel_requested(self) -> bool:
        return (self.path / "cancel").exists()

    def summary(self) -> dict:
        """One flat row for tables and the index."""
        config, status, evaluation = self.config(), self.status(), self.evaluation() or {}
        splits = evaluation.get("splits", {})
        test_name = evaluation.get("test_split")
        row = {
            "id": self.id,
            "arch": config.get("arch"),
            "status": status.get("status"),
            "bundled": self.bundled,
            "created": status.get("created"),
            "pretrained": config.get("pretrained"),
            "img_size": config.get("img_size"),
            "epochs": config.get("epochs"),
            "epoch": status.get("epoch"),
            "data": config.get("data"),
            "val_auc": splits.get("val", {}).get("roc_auc"),
            "test_split": test_name,
            "test_auc": splits.get(test_name, {}).get("roc_auc") if test_name else None,
            "test_accuracy": splits.get(test_name, {}).get("accuracy") if test_name else None,
            "message": status.get("message"),
        }
        return row


class RunStore:
    """Runs under ``root`` (writable) and the bundled ones (read-only)."""

    def __init__(self, root: Path | str | None = None, include_bundled: bool = True) -> None:
        self.root = Path(root) if root else default_runs_dir()
        self.bundled = bundled_runs_dir() if include_bundled else None

    def create(self, config: dict, run_id: str | None = None) -> Run:
        run_id = run_id or new_run_id(config["arch"])
        if not run_id.replace("-", "").replace("_", "").isalnum():
            raise UserError(f"run id {run_id!r} may only hold letters, digits, - and _")
        path = self.root / run_id
        try:
            path.mkdir(parents=True)
        except FileExistsError:
            raise UserError(f"run {run_id} already exists in {self.root}") from None
        atomic_write_json(path / "config.json", config)
        run = Run(path)
        run.set_status("queued")
        return run

    def _folders(self) -> Iterator[Run]:
        for base, bundled in ((self.root, False), (self.bundled, True)):
            if base is None or not base.is_dir():
                continue
            for child in sorted(base.iterdir()):
                if (child / "config.json").is_file():
                    yield Run(
                        child, bundled, self.root / ".bundled" / child.name if bundled else None
                    )

    def get(self, run_id: str) -> Run:
        for run in self._folders():
            if run.id == run_id:
                return run
        raise UserError(f"no run {run_id!r} in {self.root} or the bundled runs")

    def list(self, status: str | None = None, arch: str | None = None) -> list[Run]:
        """Runs, newest first, optionally filtered; re-syncs the SQLite index."""
        runs = {run.id: run for run in self._folders()}
        with self._index() as db:
            db.execute("DELETE FROM runs")
            db.executemany(
                "INSERT OR REPLACE INTO runs VALUES "
                "(:id, :arch, :status, :bundled, :created, :val_auc, :test_auc)",
                [run.summary() for run in runs.values()],
            )
            query, args = "SELECT id FROM runs WHERE 1=1", []
            if status:
                query, args = query + " AND status = ?", [*args, status]
            if arch:
                query, args = query + " AND arch = ?", [*args, arch]
            rows = db.execute(query + " ORDER BY bundled, created DESC", args).fetchall()
        return [runs[r[0]] for r in rows]

    @contextmanager
    def _index(self) -> Iterator[sqlite3.Connection]:
        self.root.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(self.root / "index.sqlite", timeout=30)
        try:
            db.execute(
                "CREATE TABLE IF NOT EXISTS runs (id TEXT PRIMARY KEY, arch TEXT, status TEXT,"
                " bundled INTEGER, created REAL, val_auc REAL, test_auc REAL)"
            )
            with db:
                yield db
        finally:
            db.close()

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
