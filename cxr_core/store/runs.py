"""The run store: one self-describing folder per training run.

A run folder holds everything needed to audit, compare, resume or reuse a run::

    config.json  env.json  split.json  status.json  history.jsonl
    model.safetensors (best weights)  last.safetensors + last.json (resume state)
    evaluation.json  evaluations/ (sets scored later)  meta.json (name, tags, note)
    cancel (a flag file)

The folders are the only record: listing and filtering read them. Status is written by
the training process itself, with a heartbeat, so a process that died without a word
(kill -9, power cut) reads as "interrupted".
"""

from __future__ import annotations

import functools
import hashlib
import json
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


META_FILE = "meta.json"
DERIVED = ("evaluations", "cam_checks", "calibration.json")
"""Records computed from a run's weights after training (scores on added image sets, CAM
checks, a fitted temperature): stale once the weights change."""


def record_version(folder: Path) -> str:
    """A short digest of a bundled run's evaluation.json (its config.json for a record
    without one): what its added records were computed against. A bundle update that
    replaces a run under the same id gets a fresh overlay instead of the old model's scores."""
    record = folder / "evaluation.json"
    if not record.is_file():
        record = folder / "config.json"
    stat = record.stat()
    return _digest(record, stat.st_mtime_ns, stat.st_size)


@functools.lru_cache(maxsize=256)
def _digest(file: Path, mtime_ns: int, size: int) -> str:
    """Read once per version of the file: listings run on every page rerun."""
    return hashlib.sha1(file.read_bytes()).hexdigest()[:12]


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
        return self.path / "model.safetensors"

    @property
    def evaluations_dir(self) -> Path:
        """Evaluation sets added after training (``evaluate --save``); for a bundled run
        they go to the writable store, so checkpoints/ is never touched."""
        return (self.overlay or self.path) / "evaluations"

    def forget_derived(self) -> None:
        """Remove the :data:`DERIVED` records (after its weights changed)."""
        base = self.evaluations_dir.parent
        for name in DERIVED:
            target = base / name
            if target.is_dir():
                shutil.rmtree(target)
            else:
                target.unlink(missing_ok=True)

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
        """Status with liveness applied: an active run whose process is gone reads as
        interrupted. Only read: status.json belongs to the process that trains the run."""
        status = self._json("status.json", {"status": "queued"})
        if status.get("status") in ACTIVE and not self.bundled and self._is_dead(status):
            status = {**status, "status": "interrupted", "message": "training process stopped"}
        return status

    def meta(self) -> dict:
        """What a user says about the run: ``name``, ``tags``, ``note``, and ``owner`` (the
        app session that launched it). A bundled run's lives in the writable store."""
        try:
            return read_json((self.overlay or self.path) / META_FILE)
        except FileNotFoundError:
            return {}
        except json.JSONDecodeError:
            raise UserError(f"run {self.id}: {META_FILE} is corrupt") from None

    def set_meta(self, **fields: Any) -> dict:
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
        atomic_write_json((self.overlay or self.path) / META_FILE, meta)
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
        """One flat row for tables and the CLI."""
        config, status, evaluation = self.config(), self.status(), self.evaluation() or {}
        splits = evaluation.get("splits", {})
        test_name = evaluation.get("test_split")
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
        atomic_write_json(path / "config.json", config)
        return run

    def _folders(self) -> Iterator[Run]:
        for base, bundled in ((self.root, False), (self.bundled, True)):
            if base is None or not base.is_dir():
                continue
            for child in sorted(base.iterdir()):
                if (child / "config.json").is_file():
                    overlay = None
                    if bundled:
                        overlay = self.root / ".bundled" / f"{child.name}-{record_version(child)}"
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
        using = [r.id for r in self._folders() if run.id in (r.config().get("members") or [])]
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
